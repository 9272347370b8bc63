"""`python -m drctl.lab.fence_agent` (also `drctl-lab-fence`): a fence agent for lab hosts.

It follows the fence-agents convention (fence_ipmilan, fence_redfish, ...), so the
controller fences lab hosts through its production command-agent path
(drctl/fencing/agents.py `CommandFenceAgent`), configured like any `fence_ipmilan`:

    stdin     one `name=value` option per line; blank lines and `#` comments are skipped
    action=   off | on | reboot | status | monitor | list   (`option=` is the old spelling)
    plug=     the lab host, e.g. labhost2 (`port=` and `nodename=` are accepted too)
    lab_dir=  the lab's directory (default: $DRCTL_LAB_DIR, else /var/lib/drctl-lab)
    others    (ipaddr, login, password, ...) are accepted and ignored, as fence-agents
              ignore options they do not know
    exit      0 success, 1 failure; `status`: 0 = on, 2 = off, 1 = cannot tell

A lab host's "power" is every process that runs for it: its QEMU guests, its libvirtd,
its health agent and its etcd relay (its network). `off` SIGKILLs them all, like
`drctl lab inject HOST host-kill`, and succeeds only when none is left; the host is on
while its libvirtd, a guest or its agent runs. `on` starts libvirtd, relay and agent
again (the guests stay off, as after a power cycle).

Every call is logged to <lab>/fence/calls.jsonl (what arrived on stdin, secrets masked,
and how it ended), so a test or an operator can see the agent was asked. The lab's fault
injection can make this agent slow or failing for one host (<lab>/fence/<host>.fault,
written by `drctl lab inject HOST fence-slow|fence-fail`, removed by `clear`).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TextIO

ON, OFF, UNKNOWN = 0, 2, 1  # status exit codes (fence-agents)
SUCCESS, FAILURE = 0, 1
ACTIONS = ("off", "on", "reboot", "status", "monitor", "list")
_PLUG_KEYS = ("plug", "port", "nodename")
_SECRET_KEYS = ("password", "passwd")
OFF_SETTLE_S = 5.0


class Usage(Exception):
    """Bad options: exit 1 with one line on stderr (fence-agents report these as errors)."""


def parse_options(text: str) -> dict[str, str]:
    """`name=value` lines -> options. Later lines win; a line without `=` is an error."""
    opts: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise Usage(f"stdin line {n}: expected name=value, got {line!r}")
        opts[name.strip()] = value.strip()
    return opts


@dataclass(frozen=True)
class Request:
    action: str
    plug: str
    lab_dir: Path


def request(opts: Mapping[str, str], env: Mapping[str, str]) -> Request:
    action = opts.get("action") or opts.get("option") or ""
    if action not in ACTIONS:
        raise Usage(f"action={action!r}: expected one of {', '.join(ACTIONS)}")
    plug = next((opts[k] for k in _PLUG_KEYS if opts.get(k)), "")
    if not plug and action not in ("monitor", "list"):
        raise Usage(f"action={action} needs plug= (the lab host, e.g. labhost1)")
    lab_dir = Path(opts.get("lab_dir") or env.get("DRCTL_LAB_DIR") or "/var/lib/drctl-lab")
    return Request(action, plug, lab_dir)


def masked(opts: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if k in _SECRET_KEYS else v) for k, v in opts.items()}


# ------------------------------------------------------------------ injected agent faults


def fault_path(lab_dir: Path, host: str) -> Path:
    return lab_dir / "fence" / f"{host}.fault"


def read_fault(lab_dir: Path, host: str) -> dict[str, object]:
    """{"fault": "slow", "seconds": 10} or {"fault": "fail"}; {} when none is set."""
    try:
        got = json.loads(fault_path(lab_dir, host).read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


# ------------------------------------------------------------------ the lab host's power


class Lab:
    """What the agent does to a lab host (drctl/lab/cluster.py and agents.py do the work)."""

    def __init__(self, lab_dir: Path) -> None:
        from drctl.lab.cluster import LabState, lab_config_of

        self.cfg = lab_config_of(lab_dir)  # its etcd port and addresses, not the defaults
        self.state = LabState.load(self.cfg)

    def hosts(self) -> list[str]:
        return sorted(self.state.hosts, key=lambda h: self.state.hosts[h].n)

    def _processes(self, host: str) -> dict[str, tuple[int, str]]:
        """name -> (pid, command-line marker) of what runs for `host`."""
        from drctl.lab import agents
        from drctl.lab.cluster import qemu_pids

        rec = self.state.hosts[host]
        procs = {f"qemu {vm}": (pid, "qemu") for vm, pid in qemu_pids(self.cfg, host).items()}
        procs["libvirtd"] = (rec.pid, "libvirtd")
        procs["agent"] = (self.state.extra_pids.get(agents.agent_key(host), 0), agents.agent_marker(host))
        procs["relay"] = (self.state.extra_pids.get(agents.relay_key(host), 0), agents.relay_marker(self.cfg, rec))
        return procs

    def is_on(self, host: str) -> bool:
        from drctl.lab.cluster import pid_alive

        return any(pid_alive(pid, marker) for name, (pid, marker) in self._processes(host).items()
                   if name != "relay")  # the relay is the host's network, not its power

    def off(self, host: str) -> str:
        from drctl.lab.cluster import pid_alive

        killed = []
        # guests first: a host that loses power loses its VMs at the same instant
        for name, (pid, marker) in self._processes(host).items():
            if pid_alive(pid, marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(name)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + OFF_SETTLE_S
        while self.is_on(host) and time.monotonic() < deadline:
            time.sleep(0.05)
        from drctl.lab.cluster import power_lost

        power_lost(self.cfg, host)  # its next power-on is a boot: libvirtd autostarts
        return f"killed {', '.join(killed) or 'nothing (already off)'}"

    def on(self, host: str) -> str:
        from drctl.lab.agents import start_host_processes
        from drctl.lab.cluster import locked

        with locked(self.cfg):  # not while `drctl lab up/down` rewrites lab.json
            from drctl.lab.cluster import LabState

            state = LabState.load(self.cfg)
            started = start_host_processes(self.cfg, state, state.hosts[host])
        self.state = state  # the new pids: `is_on` must look at these
        return f"started {', '.join(started) or 'nothing (already on)'}"


# ------------------------------------------------------------------ the command


def run(stdin: TextIO, out: TextIO, err: TextIO, env: Mapping[str, str]) -> int:
    try:
        opts = parse_options(stdin.read())
        req = request(opts, env)
    except Usage as e:
        print(f"drctl-lab-fence: {e}", file=err)
        return FAILURE
    log = _CallLog(req.lab_dir, os.getpid())
    log.write(phase="received", action=req.action, plug=req.plug, options=masked(opts))
    rc, detail = _act(req)
    log.write(phase="done", action=req.action, plug=req.plug, exit=rc, detail=detail)
    if req.action == "list" and rc == SUCCESS:
        print(detail, file=out)  # "plug,alias" lines, as fence-agents list
    else:
        print(f"drctl-lab-fence: {req.action} {req.plug}: {detail}", file=err if rc == FAILURE else out)
    return rc


def _act(req: Request) -> tuple[int, str]:
    if not (req.lab_dir / "lab.json").exists():
        return FAILURE, f"no lab at {req.lab_dir} (no lab.json)"
    lab = Lab(req.lab_dir)
    if req.action == "monitor":
        return SUCCESS, f"lab at {req.lab_dir} with {len(lab.hosts())} host(s)"
    if req.action == "list":
        return SUCCESS, "\n".join(f"{h}," for h in lab.hosts())
    if req.plug not in lab.state.hosts:
        return FAILURE, f"{req.plug} is not a host of the lab at {req.lab_dir}"
    fault = read_fault(req.lab_dir, req.plug)
    if fault.get("fault") == "fail":
        return FAILURE, "injected fault: fence device unreachable (drctl lab inject ... fence-fail)"
    if req.action == "status":
        on = lab.is_on(req.plug)
        return (ON if on else OFF), ("on" if on else "off")
    if fault.get("fault") == "slow":  # a slow BMC: the power change waits, the host still runs
        time.sleep(float(fault.get("seconds", 10)))  # type: ignore[arg-type]
    try:
        if req.action == "off":
            detail = lab.off(req.plug)
        elif req.action == "on":
            detail = lab.on(req.plug)
        else:  # reboot
            detail = lab.off(req.plug) + "; " + lab.on(req.plug)
    except Exception as e:  # noqa: BLE001 - any failure is the agent's exit 1, with its reason
        return FAILURE, f"{type(e).__name__}: {e}"
    on = lab.is_on(req.plug)
    if req.action == "off" and on:
        return FAILURE, f"{detail}; still on after {OFF_SETTLE_S:g}s"
    if req.action in ("on", "reboot") and not on:
        return FAILURE, f"{detail}; still off"
    return SUCCESS, detail


class _CallLog:
    def __init__(self, lab_dir: Path, pid: int) -> None:
        self.path, self.pid = lab_dir / "fence" / "calls.jsonl", pid

    def write(self, **fields: object) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"ts": round(time.time(), 3), "pid": self.pid, **fields}) + "\n")
        except OSError:
            pass  # the log is for watching; fencing must not fail because of it


def main() -> None:
    sys.exit(run(sys.stdin, sys.stdout, sys.stderr, os.environ))


if __name__ == "__main__":
    main()
