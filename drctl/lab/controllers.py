"""Controller replicas for the lab: `drctl lab up --controllers N`.

    <lab>/controllers/ctl-N/controller.yaml  its configuration
    <lab>/controllers/ctl-N/audit.jsonl      its audit stream
    <lab>/controllers/ctl-N/controller.log   what it printed

Each replica talks to the lab's etcd directly (controllers are not hypervisor hosts, so
they are not behind a host's relay). It is configured as production replicas are: it
fences through the command fence agent (here the lab's, `python -m drctl.lab.fence_agent`,
in the fence-agents convention, one `plug=` per host) and judges guest health through
the guest-health plugin seam (here console ticks, drctl/lab/console_health.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from drctl.lab.cluster import LabConfig, LabState, _spawn, pid_alive, stop_pid

LAB_POLICY = Path(__file__).resolve().parents[2] / "deploy" / "lab" / "lab-policy.yaml"


def controller_dir(cfg: LabConfig, name: str) -> Path:
    return cfg.dir / "controllers" / name


def controller_key(name: str) -> str:
    return f"controller:{name}"


def fence_agent_config(cfg: LabConfig, hosts: list[str]) -> dict:
    """The lab's fence agent as a `type: command` agent, like fence_ipmilan with one
    plug per host (the lab policy fences with the agent named `lab`)."""
    return {
        "type": "command",
        "command": [sys.executable, "-m", "drctl.lab.fence_agent"],
        "timeout": "30s",
        "options": {"lab_dir": str(cfg.dir)},
        "hosts": {h: {"plug": h} for h in hosts},
    }


def guest_health_config(cfg: LabConfig) -> dict:
    return {"plugin": "drctl.lab.console_health:console_ticks", "options": {"lab_dir": str(cfg.dir)}}


def controller_config(cfg: LabConfig, name: str, policy: Path = LAB_POLICY) -> dict:
    d = controller_dir(cfg, name)
    # plugs for the hosts the lab has now: replicas started before `up --hosts` grew the lab
    # cannot fence the new hosts until they are restarted (`drctl lab up` keeps them)
    state = LabState.load(cfg)
    hosts = sorted(state.hosts, key=lambda h: state.hosts[h].n)
    return {
        "etcd": {"endpoints": [cfg.etcd_endpoint], "prefix": "/drctl/", "timeout": "2s"},
        "controller": {
            "name": name,
            "policy": str(policy),
            "lease_ttl": "2s",
            "tick_interval": "500ms",
            "audit_file": str(d / "audit.jsonl"),
            "guest_health": guest_health_config(cfg),
            "runner": {"enabled": True, "lease_ttl": "2s"},
            "fence_agents": {"lab": fence_agent_config(cfg, hosts)},
        },
    }


def start_controllers(cfg: LabConfig, state: LabState, replicas: int, echo=print,  # type: ignore[no-untyped-def]
                      policy: Path = LAB_POLICY) -> list[str]:
    """Start (or keep) `replicas` controllers ctl-1..N; returns the names started."""
    started = []
    for n in range(1, replicas + 1):
        name = f"ctl-{n}"
        if pid_alive(state.extra_pids.get(controller_key(name), 0), f"--name {name}"):
            continue
        d = controller_dir(cfg, name)
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "controller.yaml"
        conf.write_text(yaml.safe_dump(controller_config(cfg, name, policy), sort_keys=False))
        argv = [sys.executable, "-m", "drctl.cli.main", "controller", "--config", str(conf), "--name", name]
        state.extra_pids[controller_key(name)] = _spawn(argv, d / "controller.log")
        state.save(cfg)
        started.append(name)
        echo(f"started controller {name}")
    return started


def stop_controller(cfg: LabConfig, name: str, hard: bool = False) -> int:
    """Stop one replica (SIGKILL with `hard`); returns its pid (0 if it was not running)."""
    import os
    import signal

    state = LabState.load(cfg)
    pid = state.extra_pids.get(controller_key(name), 0)
    if not pid_alive(pid, f"--name {name}"):
        return 0
    if hard:
        os.kill(pid, signal.SIGKILL)
    else:
        stop_pid(pid)
    return pid


def stop_controllers(cfg: LabConfig) -> list[str]:
    """Stop every controller replica the lab started; returns their names."""
    state = LabState.load(cfg)
    names = [k.removeprefix("controller:") for k in state.extra_pids if k.startswith("controller:")]
    for name in names:
        stop_pid(state.extra_pids.pop(controller_key(name)), "drctl.cli.main controller")
    state.save(cfg)
    return names


def forget_decisions(cfg: LabConfig, election_keys: bool = True) -> None:
    """Forget every decision in etcd: incidents, intents, claims, placements, drain
    requests and (with `election_keys`, only when no replica runs) the election. The
    agents' records (health, inventory, definitions) stay: they describe the hosts."""
    from drctl.store.etcd import EtcdStore
    from drctl.store.keys import Keys

    keys = Keys()
    prefixes = [keys.intents_prefix(), keys.intent_claims_prefix(), keys.incidents_prefix(), keys.vms_prefix()]
    store = EtcdStore([cfg.etcd_endpoint], timeout=3)
    try:
        for prefix in prefixes + ([keys.leader_prefix()] if election_keys else []):
            store.delete_prefix(prefix)
        for host in LabState.load(cfg).hosts:
            store.delete(keys.maintenance(host))
    finally:
        store.close()


def reset_controller_state(cfg: LabConfig) -> None:
    """A clean slate for a demo or a test: replicas stopped, decisions forgotten, their
    audit files removed (only now: a running replica would keep writing to a removed file)."""
    stop_controllers(cfg)
    forget_decisions(cfg)
    for f in (cfg.dir / "controllers").glob("ctl-*/audit.jsonl"):
        f.unlink()
