"""`drctl lab inject HOST FAULT`: break one lab host on purpose, and `clear` it again.

    memory-errors    raise the host's (fake) EDAC corrected-error counter
    libvirt-stop     SIGSTOP its libvirtd (it accepts connections but never answers);
                     `libvirt-hang` is the older name
    libvirt-cont     SIGCONT its libvirtd: it answers again
    libvirt-restart  restart its libvirtd alone (SIGTERM, start a new one); its guests keep
                     running and the new libvirtd takes them over, as on a real host
    agent-kill       SIGKILL its agent; libvirtd and guests keep running
    host-kill        SIGKILL its libvirtd, its QEMU guests, its agent and its relay
    partition        SIGSTOP its relay: the agent is cut off from etcd, libvirtd reachable
    fence-slow [S]   the lab fence agent waits S seconds (default 10) before it powers this
                     host off or on (a slow BMC); `status` still answers at once
    fence-fail       the lab fence agent fails every action on this host (BMC unreachable)
    etcd-kill        SIGKILL the lab's etcd (HOST may be `etcd`); `etcd-start`, `clear` or
                     `drctl lab up` start it again on the same data
    etcd-start       start the lab's etcd if it is not running
    clear            undo all of it: SIGCONT, restart what was killed (etcd too), reset
                     counters, remove the fence agent's faults for this host

Only processes the lab recorded (lab.json) are signalled, each checked by its command line.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from drctl.model.errors import ConfigError
from drctl.lab import agents, cluster
from drctl.lab.fence_agent import fault_path
from drctl.lab.cluster import HostRecord, LabConfig, LabState, pid_alive

FAULTS = ("memory-errors", "libvirt-stop", "libvirt-hang", "libvirt-cont", "libvirt-restart", "agent-kill",
          "host-kill", "partition", "fence-slow", "fence-fail", "etcd-kill", "etcd-start", "clear")
LAB_WIDE = ("etcd-kill", "etcd-start")  # HOST is `etcd` or any lab host
DEFAULT_FENCE_DELAY_S = 10.0
MEMORY_ERRORS = 25  # corrected errors added per injection


def _signal(pid: int, expect: str, sig: signal.Signals) -> bool:
    if not pid_alive(pid, expect):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _pids(cfg: LabConfig, state: LabState, rec: HostRecord) -> dict[str, tuple[int, str]]:
    """What runs for one host: name -> (pid, command-line marker)."""
    return {
        "libvirtd": (rec.pid, "libvirtd"),
        "agent": (state.extra_pids.get(agents.agent_key(rec.name), 0), agents.agent_marker(rec.name)),
        "relay": (state.extra_pids.get(agents.relay_key(rec.name), 0), agents.relay_marker(cfg, rec)),
    }


def _bump(path: Path, by: int) -> int:
    value = int(path.read_text().strip() or 0) + by
    path.write_text(f"{value}\n")
    return value


def inject(cfg: LabConfig, host: str, fault: str, echo=print,  # type: ignore[no-untyped-def]
           seconds: float | None = None) -> None:
    if fault not in FAULTS:
        raise ConfigError(f"unknown fault {fault!r} (one of: {', '.join(FAULTS)})")
    if seconds is not None and fault != "fence-slow":
        raise ConfigError(f"{fault} takes no SECONDS (only fence-slow does)")
    state = LabState.load(cfg)
    if fault in LAB_WIDE and (host == "etcd" or host in state.hosts):
        _etcd(cfg, state, fault, echo)
        return
    rec = state.hosts.get(host)
    if rec is None:
        raise ConfigError(f"unknown lab host {host!r} (have {', '.join(sorted(state.hosts)) or 'none'})")
    procs = _pids(cfg, state, rec)
    if fault == "memory-errors":
        counter = agents.agent_dir(cfg, host) / "root" / "sys/edac/mc/mc0/ce_count"
        echo(f"{host}: EDAC ce_count now {_bump(counter, MEMORY_ERRORS)}")
    elif fault in ("libvirt-stop", "libvirt-hang"):
        _require(_signal(*procs["libvirtd"], signal.SIGSTOP), host, "libvirtd")
        echo(f"{host}: libvirtd (pid {procs['libvirtd'][0]}) stopped")
    elif fault == "libvirt-cont":
        _require(_signal(*procs["libvirtd"], signal.SIGCONT), host, "libvirtd")
        echo(f"{host}: libvirtd (pid {procs['libvirtd'][0]}) continued")
    elif fault == "libvirt-restart":
        guests = sorted(cluster.qemu_pids(cfg, host))
        old = rec.pid
        with cluster.locked(cfg):  # lab.json is rewritten: not during `up`/`down`
            state = LabState.load(cfg)
            rec = state.hosts[host]
            new = cluster.restart_libvirtd(cfg, state, rec)
            state.save(cfg)
        kept = sorted(cluster.qemu_pids(cfg, host))
        echo(f"{host}: libvirtd restarted (pid {old} -> {new}); guests running: {', '.join(kept) or 'none'}"
             + (f" (before: {', '.join(guests)})" if kept != guests else ""))
    elif fault == "agent-kill":
        _require(_signal(*procs["agent"], signal.SIGKILL), host, "agent")
        echo(f"{host}: agent (pid {procs['agent'][0]}) killed")
    elif fault == "partition":
        _require(_signal(*procs["relay"], signal.SIGSTOP), host, "relay")
        echo(f"{host}: relay to etcd (pid {procs['relay'][0]}) paused")
    elif fault == "host-kill":
        # guests first: a host that loses power loses its VMs at the same instant
        killed = [f"qemu {g}" for g, pid in cluster.qemu_pids(cfg, host).items() if _signal(pid, "qemu", signal.SIGKILL)]
        killed += [name for name, (pid, marker) in procs.items() if _signal(pid, marker, signal.SIGKILL)]
        cluster.power_lost(cfg, host)
        echo(f"{host}: killed {', '.join(killed) or 'nothing (already down)'}")
    elif fault in ("fence-slow", "fence-fail"):
        delay = DEFAULT_FENCE_DELAY_S if seconds is None else seconds
        if delay < 0:
            raise ConfigError(f"fence-slow: SECONDS must be 0 or more, got {delay:g}")
        spec = {"fault": "slow", "seconds": delay} if fault == "fence-slow" else {"fault": "fail"}
        path = fault_path(cfg.dir, host)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec) + "\n")
        echo(f"{host}: the lab fence agent now " + (f"waits {delay:g}s before off/on" if fault == "fence-slow"
                                                    else "fails every action") + f" ({path})")
    else:
        clear(cfg, state, rec, echo)


def _etcd(cfg: LabConfig, state: LabState, fault: str, echo) -> None:  # type: ignore[no-untyped-def]
    if fault == "etcd-kill":
        if not _signal(state.etcd_pid, "etcd", signal.SIGKILL):
            raise ConfigError("the lab's etcd is not running (start it: `drctl lab inject etcd etcd-start`)")
        echo(f"etcd (pid {state.etcd_pid}) killed")
        return
    with cluster.locked(cfg):
        state = LabState.load(cfg)
        started = cluster.start_etcd(cfg, state)
        state.save(cfg)
    echo(("started" if started else "kept") + f" etcd at {cfg.etcd_endpoint} (pid {state.etcd_pid})")


def _require(done: bool, host: str, what: str) -> None:
    if not done:
        raise ConfigError(f"{host}: its {what} is not running (try `drctl lab inject {host} clear`)")


def clear(cfg: LabConfig, state: LabState, rec: HostRecord, echo=print) -> None:  # type: ignore[no-untyped-def]
    for name, (pid, marker) in _pids(cfg, state, rec).items():
        if _signal(pid, marker, signal.SIGCONT) and name == "relay":
            _signal(pid, marker, signal.SIGUSR2)  # end a reset mode too
    agents.reset_probe_files(cfg, rec.name)
    fault_path(cfg.dir, rec.name).unlink(missing_ok=True)
    # `up` restarts whatever is dead (libvirtd, agent, relay) and keeps what runs
    cluster.up(cfg, len(state.hosts), install=False, echo=echo)
    echo(f"{rec.name}: cleared")
