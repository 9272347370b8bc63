"""One `drctl agent` per lab host, each reaching etcd through its own relay.

    <lab>/agents/<host>/agent.yaml   the agent's configuration
    <lab>/agents/<host>/audit.jsonl  its audit stream
    <lab>/agents/<host>/agent.log    its stderr
    <lab>/agents/<host>/root/...     the files its probes read (fake /proc and /sys)

The probes read files under root/ rather than the real /proc and /sys: all lab hosts
share this one machine, whose load and memory belong to whatever else runs here (tests,
other labs), not to the host; and `drctl lab inject` must be able to raise a host's EDAC
counters. The relay (drctl/lab/relay.py) listens on the host's own address at etcd's port
and forwards to the lab's etcd, so `partition` can cut one agent off by pausing it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from drctl.model.errors import ConfigError, StoreError
from drctl.lab.cluster import HostRecord, LabConfig, LabState, _spawn, pid_alive

# Files the probes read, relative to the host's root/, with their healthy content.
HEALTHY_FILES = {
    "sys/edac/mc/mc0/ce_count": "0\n",
    "sys/edac/mc/mc0/ue_count": "0\n",
    "proc/meminfo": "MemTotal: 16384000 kB\nMemFree: 8192000 kB\nMemAvailable: 12288000 kB\n",
    "proc/loadavg": "0.20 0.15 0.10 1/200 1000\n",
    "proc/interrupts": "           CPU0       CPU1\nMCE:          0          0   Machine check exceptions\n",
    "sys/class/net/eth0/operstate": "up\n",
    "sys/class/net/eth0/carrier": "1\n",
    "sys/block/vda/device/state": "running\n",
    "sys/block/vda/device/ioerr_cnt": "0x0\n",
}


def agent_dir(cfg: LabConfig, host: str) -> Path:
    return cfg.dir / "agents" / host


def agent_key(host: str) -> str:
    return f"agent:{host}"


def relay_key(host: str) -> str:
    return f"relay:{host}"


def agent_marker(host: str) -> str:
    """What an agent's command line contains (pid_alive tells ours from a reused PID)."""
    return f"agent --host {host} "


def relay_marker(cfg: LabConfig, rec: HostRecord) -> str:
    return f"drctl.lab.relay {rec.addr}:{cfg.etcd_port}"


def reset_probe_files(cfg: LabConfig, host: str) -> None:
    root = agent_dir(cfg, host) / "root"
    for rel, content in HEALTHY_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def agent_config(cfg: LabConfig, rec: HostRecord) -> dict:
    root = agent_dir(cfg, rec.name) / "root"
    return {
        "etcd": {"endpoints": [f"{rec.addr}:{cfg.etcd_port}"], "prefix": "/drctl/", "timeout": "2s"},
        "agent": {
            "host": rec.name,
            "libvirt_uri": rec.uri,
            "lease_ttl": "2s",
            "peers": "auto",
            "witnesses": 2,
            "hysteresis": 3,
            "inventory_interval": "5s",
            "labels": {"rack": f"rack{(rec.n + 1) // 2}"},
            "audit_file": str(agent_dir(cfg, rec.name) / "audit.jsonl"),
            "probes": [
                {"kind": "libvirt", "interval": "1s", "timeout": "1s"},
                {"kind": "edac", "root": str(root / "sys/edac"), "interval": "1s"},
                {"kind": "mce", "path": str(root / "proc/interrupts"), "interval": "2s"},
                {"kind": "memory", "path": str(root / "proc/meminfo"), "interval": "2s"},
                {"kind": "load", "path": str(root / "proc/loadavg"), "interval": "2s", "cpus": 2},
                {"kind": "nic", "root": str(root / "sys/class/net"), "interval": "2s"},
                {"kind": "disk", "root": str(root / "sys/block"), "interval": "5s"},
            ],
        },
    }


def _start_relay(cfg: LabConfig, state: LabState, rec: HostRecord) -> bool:
    pid = state.extra_pids.get(relay_key(rec.name), 0)
    if pid_alive(pid, relay_marker(cfg, rec)):
        return False
    argv = [sys.executable, "-m", "drctl.lab.relay", f"{rec.addr}:{cfg.etcd_port}", cfg.etcd_endpoint]
    state.extra_pids[relay_key(rec.name)] = _spawn(argv, agent_dir(cfg, rec.name) / "relay.log")
    return True


def _start_agent(cfg: LabConfig, state: LabState, rec: HostRecord) -> bool:
    pid = state.extra_pids.get(agent_key(rec.name), 0)
    if pid_alive(pid, agent_marker(rec.name)):
        return False
    conf = agent_dir(cfg, rec.name) / "agent.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(yaml.safe_dump(agent_config(cfg, rec), sort_keys=False))
    reset_probe_files(cfg, rec.name)
    # the trailing space in the marker: "--host labhost1 " must not match labhost10
    argv = [sys.executable, "-m", "drctl.cli.main", "agent", "--host", rec.name, "--config", str(conf)]
    state.extra_pids[agent_key(rec.name)] = _spawn(argv, agent_dir(cfg, rec.name) / "agent.log")
    return True


def start_agents(cfg: LabConfig, state: LabState, echo=print, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Start (or keep) each lab host's relay and agent; wait until every agent reports
    its health and has published its inventory."""
    started = []
    for rec in sorted(state.hosts.values(), key=lambda r: r.n):
        if _start_relay(cfg, state, rec):
            echo(f"started relay of {rec.name} at {rec.addr}:{cfg.etcd_port}")
        if _start_agent(cfg, state, rec):
            started.append(rec.name)
            echo(f"started agent of {rec.name}")
        state.save(cfg)
    if started:
        wait_reporting(cfg, started, timeout_s)


def wait_reporting(cfg: LabConfig, hosts: list[str], timeout_s: float) -> None:
    from drctl.store.etcd import EtcdStore
    from drctl.store.keys import Keys

    store = EtcdStore([cfg.etcd_endpoint], timeout=2)
    keys = Keys()
    try:
        deadline = time.monotonic() + timeout_s
        missing = list(hosts)
        while missing and time.monotonic() < deadline:
            try:
                # inventory too: peers find each other through it ("peers: auto")
                missing = [h for h in missing
                           if store.get(keys.health(h)) is None or store.get(keys.inventory(h)) is None]
            except StoreError:
                pass  # etcd just started: ask again
            time.sleep(0.1)
    finally:
        store.close()
    if missing:
        logs = ", ".join(str(agent_dir(cfg, h) / "agent.log") for h in missing)
        raise ConfigError(f"agents of {', '.join(missing)} did not report within {timeout_s:.0f}s (logs: {logs})")


def start_host_processes(cfg: LabConfig, state: LabState, rec: HostRecord) -> list[str]:
    """Power one lab host on: its libvirtd, relay and agent, whichever is not running
    (the lab fence agent's `on`). Returns what was started; the state is saved."""
    from drctl.lab.cluster import start_host

    started = []
    if start_host(cfg, state, rec):
        started.append("libvirtd")
    state.save(cfg)
    if _start_relay(cfg, state, rec):
        started.append("relay")
    if _start_agent(cfg, state, rec):
        started.append("agent")
    state.save(cfg)
    return started
