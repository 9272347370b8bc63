"""`drctl lab inject HOST FAULT`: break one lab host on purpose, and `clear` it again.

    memory-errors  raise the host's (fake) EDAC corrected-error counter
    libvirt-hang   SIGSTOP its libvirtd (it accepts connections but never answers)
    agent-kill     SIGKILL its agent; libvirtd and guests keep running
    host-kill      SIGKILL its libvirtd, its QEMU guests, its agent and its relay
    partition      SIGSTOP its relay: the agent is cut off from etcd, libvirtd reachable
    clear          undo all of it: SIGCONT, restart what was killed, reset counters

Only processes the lab recorded (lab.json) are signalled, each checked by its command line.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from drctl.model.errors import ConfigError
from drctl.lab import agents, cluster
from drctl.lab.cluster import HostRecord, LabConfig, LabState, pid_alive

FAULTS = ("memory-errors", "libvirt-hang", "agent-kill", "host-kill", "partition", "clear")
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


def inject(cfg: LabConfig, host: str, fault: str, echo=print) -> None:  # type: ignore[no-untyped-def]
    if fault not in FAULTS:
        raise ConfigError(f"unknown fault {fault!r} (one of: {', '.join(FAULTS)})")
    state = LabState.load(cfg)
    rec = state.hosts.get(host)
    if rec is None:
        raise ConfigError(f"unknown lab host {host!r} (have {', '.join(sorted(state.hosts)) or 'none'})")
    procs = _pids(cfg, state, rec)
    if fault == "memory-errors":
        counter = agents.agent_dir(cfg, host) / "root" / "sys/edac/mc/mc0/ce_count"
        echo(f"{host}: EDAC ce_count now {_bump(counter, MEMORY_ERRORS)}")
    elif fault == "libvirt-hang":
        _require(_signal(*procs["libvirtd"], signal.SIGSTOP), host, "libvirtd")
        echo(f"{host}: libvirtd (pid {procs['libvirtd'][0]}) stopped")
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
        echo(f"{host}: killed {', '.join(killed) or 'nothing (already down)'}")
    else:
        clear(cfg, state, rec, echo)


def _require(done: bool, host: str, what: str) -> None:
    if not done:
        raise ConfigError(f"{host}: its {what} is not running (try `drctl lab inject {host} clear`)")


def clear(cfg: LabConfig, state: LabState, rec: HostRecord, echo=print) -> None:  # type: ignore[no-untyped-def]
    for name, (pid, marker) in _pids(cfg, state, rec).items():
        if _signal(pid, marker, signal.SIGCONT) and name == "relay":
            _signal(pid, marker, signal.SIGUSR2)  # end a reset mode too
    agents.reset_probe_files(cfg, rec.name)
    # `up` restarts whatever is dead (libvirtd, agent, relay) and keeps what runs
    cluster.up(cfg, len(state.hosts), install=False, echo=echo)
    echo(f"{rec.name}: cleared")
