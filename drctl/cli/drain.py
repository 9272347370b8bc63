"""`drctl drain HOST` / `drctl undrain HOST`: planned maintenance.

`drain` writes a maintenance request to etcd; the leading controller turns it into an
incident and intents like any other evacuation (and placement stops choosing the host).
Unless `--no-wait`, it shows a progress bar until the host runs no VM. `undrain` removes
the request: the host becomes eligible as a destination again.
"""
from __future__ import annotations

import getpass
import time

import click

from drctl.model.errors import ConfigError
from drctl.model.records import MaintenanceRecord


def store_options(fn):
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DRCTL_CONFIG",
                      help="drctl configuration (its etcd section); or use --etcd")(fn)
    fn = click.option("--etcd", "etcd", metavar="HOST:PORT", multiple=True, help="etcd endpoint(s)")(fn)
    fn = click.option("--prefix", default=None, help="key prefix (default from config, else /drctl/)")(fn)
    return fn


def open_store(config_path: str | None, etcd: tuple[str, ...], prefix: str | None):
    """A connected store and its key layout, from --config or --etcd."""
    from drctl.store.etcd import connect_store
    from drctl.store.keys import Keys

    endpoints: tuple[str, ...] = etcd
    pfx = prefix
    timeout = 5.0
    if config_path:
        from drctl.config.settings import load_config

        cfg = load_config(config_path)
        endpoints = endpoints or cfg.etcd.endpoints
        pfx = pfx or cfg.etcd.prefix
        timeout = cfg.etcd.timeout_s
    if not endpoints:
        raise ConfigError("no etcd endpoint: give --config FILE or --etcd HOST:PORT")
    return connect_store(list(endpoints), timeout=timeout), Keys(pfx or "/drctl/")


def vms_on(store, keys, host: str) -> list[str]:
    from drctl.control.view import read_records, running_on, vm_locations

    records = read_records(store, keys)
    placed = {vm for vm, h in vm_locations(records).items() if h == host}
    running = {vm for vm, hosts in running_on(records).items() if host in hosts}
    return sorted(placed | running)


@click.command()
@click.argument("host")
@click.option("--reason", default="planned maintenance", show_default=True)
@click.option("--no-wait", is_flag=True, help="write the request and return")
@click.option("--timeout", type=float, default=1800, show_default=True, help="seconds to wait for the host to empty")
@store_options
def drain(host: str, reason: str, no_wait: bool, timeout: float, config_path: str | None,
          etcd: tuple[str, ...], prefix: str | None) -> int:
    """Evacuate HOST for maintenance (live migrations through the controller)."""
    store, keys = open_store(config_path, etcd, prefix)
    try:
        if store.get(keys.inventory(host)) is None:
            raise ConfigError(f"unknown host {host!r}: no inventory under {keys.inventory(host)}")
        request = MaintenanceRecord(host, reason, getpass.getuser(), time.time())
        store.put(keys.maintenance(host), request.to_json())
        start = vms_on(store, keys, host)
        click.echo(f"drain of {host} requested ({len(start)} VM(s) on it)")
        if no_wait:
            return 0
        return _wait_empty(store, keys, host, len(start), timeout)
    finally:
        store.close()


def _wait_empty(store, keys, host: str, total: int, timeout: float) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout
    with Progress(TextColumn("draining {task.fields[host]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[left]}"), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("drain", total=max(total, 1), host=host, left="")
        while True:
            left = vms_on(store, keys, host)
            total = max(total, len(left))
            bar.update(task, total=max(total, 1), completed=total - len(left),
                       left=("left: " + ", ".join(left)) if left else "empty")
            if not left:
                break
            if time.monotonic() > deadline:
                click.echo(f"{host} still runs {', '.join(left)} after {timeout:.0f}s", err=True)
                return 1
            time.sleep(0.5)
    click.echo(f"{host} is empty; `drctl undrain {host}` makes it eligible again")
    return 0


@click.command()
@click.argument("host")
@store_options
def undrain(host: str, config_path: str | None, etcd: tuple[str, ...], prefix: str | None) -> None:
    """End maintenance of HOST: it becomes eligible as a destination again."""
    store, keys = open_store(config_path, etcd, prefix)
    try:
        existed = store.delete(keys.maintenance(host))
        click.echo(f"{host}: maintenance ended" if existed else f"{host} was not in maintenance")
    finally:
        store.close()
