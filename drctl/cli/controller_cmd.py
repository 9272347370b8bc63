"""`drctl controller --config FILE`: one controller replica."""
from __future__ import annotations

import signal
import sys
import threading

import click


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), envvar="DRCTL_CONFIG")
@click.option("--name", default=None, help="replica name (overrides controller.name)")
def controller(config_path: str, name: str | None) -> None:
    """Run one controller replica: leader election, incidents, intents, runner."""
    from dataclasses import replace

    from drctl.audit import events
    from drctl.audit import writer as audit
    from drctl.config.settings import load_config
    from drctl.control.service import run
    from drctl.model.errors import ConfigError
    from drctl.store.etcd import connect_store_waiting

    cfg = load_config(config_path)
    if cfg.controller is None:
        raise ConfigError(f"{config_path}: no `controller:` section")
    if name:
        cfg = replace(cfg, controller=replace(cfg.controller, name=name))
    assert cfg.controller is not None
    audit.configure(f"controller:{cfg.controller.name}", path=cfg.controller.audit_file or None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    replica = cfg.controller.name
    waited: list[Exception] = []

    def waiting(e: Exception) -> None:  # etcd down at start-up: wait for it, as through any outage
        waited.append(e)
        audit.warn(events.CONTROLLER_STORE_UNAVAILABLE, name=replica, error=str(e))
        print(f"{replica}: {e}; waiting for it", flush=True)

    store = connect_store_waiting(list(cfg.etcd.endpoints), cfg.etcd.timeout_s, stop, waiting)
    if store is None:
        return  # stopped before etcd answered
    if waited:
        audit.emit(events.CONTROLLER_STORE_RECOVERED, name=replica)
    try:
        run(cfg, store, stop, lambda line: (print(line, flush=True), None)[1])
    finally:
        store.close()
        sys.stdout.flush()
