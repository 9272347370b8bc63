"""`drctl agent`: the health watcher daemon of one hypervisor host (drctl/agent.py)."""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from pathlib import Path

import click


@click.command()
@click.option("--host", help="this host's name (default: agent.host in the configuration)")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="drctl configuration file (YAML)")
def agent(host: str | None, config_path: Path) -> None:
    """Probe this host and its peers; heartbeat graded health into etcd."""
    from drctl.audit import events
    from drctl.audit import writer as audit
    from drctl.health.agent import Agent
    from drctl.clock import SystemClock
    from drctl.config.settings import AgentConfig, load_config
    from drctl.hypervisor.libvirt_adapter import connect
    from drctl.store.etcd import connect_store_waiting
    from drctl.store.keys import Keys

    cfg = load_config(config_path)  # a bad probe stops us here, naming file, line, field
    agent_cfg = cfg.agent or AgentConfig()
    if host:
        agent_cfg = dataclasses.replace(agent_cfg, host=host)
    audit.configure(f"agent:{agent_cfg.host}", path=agent_cfg.audit_file or None, echo=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    waited: list[Exception] = []

    def waiting(e: Exception) -> None:  # etcd down at start-up: wait for it, as through any outage
        waited.append(e)
        audit.warn(events.AGENT_STORE_UNAVAILABLE, host=agent_cfg.host, error=f"{e}; waiting for it")

    store = connect_store_waiting(list(cfg.etcd.endpoints), cfg.etcd.timeout_s, stop, waiting)
    if store is None:
        return  # stopped before etcd answered
    if waited:
        audit.emit(events.AGENT_STORE_RECOVERED, host=agent_cfg.host)
    try:
        Agent(agent_cfg, store, Keys(cfg.etcd.prefix), connect, SystemClock()).run(stop)
    finally:
        store.close()
