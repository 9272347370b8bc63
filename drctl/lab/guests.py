"""Test guests on the lab's hosts: create, find where they run, delete."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from drctl.model.errors import ConfigError, HostUnreachable, NoSuchDomain
from drctl.hypervisor import DomainState
from drctl.hypervisor.libvirt_adapter import LibvirtHypervisor, connect
from drctl.lab.cluster import LabConfig, LabState
from drctl.lab.guest import Tick, build_guest, domain_xml, last_tick, wait_ticking

IMAGES = Path("/var/lib/libvirt/images")  # private to each lab host (bind mount)


def host_uris(cfg: LabConfig) -> dict[str, str]:
    state = LabState.load(cfg)
    if not state.hosts:
        raise ConfigError(f"no lab at {cfg.dir}: run `drctl lab up` first")
    return {name: rec.uri for name, rec in sorted(state.hosts.items(), key=lambda kv: kv[1].n)}


def console_path(cfg: LabConfig, name: str) -> Path:
    return cfg.console_dir / f"{name}.log"


def local_disk_path(cfg: LabConfig, host: str, vm: str) -> tuple[Path, Path]:
    """(path the guest sees, path on this machine) of a VM's host-local disk."""
    return IMAGES / f"{vm}.qcow2", cfg.dir / "hosts" / host / "lib" / "images" / f"{vm}.qcow2"


def create(cfg: LabConfig, name: str, host: str, memory_mib: int = 128, dirty_mib: int = 0,
           disk_mib: int = 0, wait: bool = True, timeout_s: float = 90.0) -> Tick | None:
    uris = host_uris(cfg)
    if host not in uris:
        raise ConfigError(f"unknown lab host {host!r} (have {', '.join(uris)})")
    image = build_guest(cfg.guest_dir)
    console = console_path(cfg, name)
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_bytes(b"")
    disk = None
    if disk_mib:
        disk, real = local_disk_path(cfg, host, name)
        real.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(real), f"{disk_mib}M"], check=True)
    hv = connect(uris[host])
    try:
        hv.define(domain_xml(name, image, memory_mib, console, dirty_mib=dirty_mib, disk=disk,
                             disk_write=bool(disk_mib)))
        hv.start(name)
    finally:
        hv.close()
    return wait_ticking(console, timeout_s) if wait else None


@dataclass(frozen=True)
class GuestLocation:
    name: str
    hosts: tuple[str, ...]  # hosts where it is RUNNING (more than one = duplicated!)
    defined_on: tuple[str, ...]
    tick: Tick | None


def locate_all(cfg: LabConfig) -> list[GuestLocation]:
    running: dict[str, list[str]] = {}
    defined: dict[str, list[str]] = {}
    for host, uri in host_uris(cfg).items():
        try:
            hv = connect(uri, timeout_s=5)
        except HostUnreachable:
            continue
        try:
            for d in hv.list_domains():
                defined.setdefault(d.name, []).append(host)
                if d.state in (DomainState.RUNNING, DomainState.PAUSED):
                    running.setdefault(d.name, []).append(host)
        finally:
            hv.close()
    return [GuestLocation(n, tuple(running.get(n, ())), tuple(defined[n]), last_tick(console_path(cfg, n)))
            for n in sorted(defined)]


def delete(cfg: LabConfig, name: str) -> list[str]:
    removed = []
    for host, uri in host_uris(cfg).items():
        hv: LibvirtHypervisor = connect(uri, timeout_s=5)
        try:
            hv.destroy(name)
            hv.undefine(name)
            removed.append(host)
        except NoSuchDomain:
            pass
        finally:
            hv.close()
    return removed


__all__ = ["create", "delete", "locate_all", "host_uris", "console_path", "wait_ticking", "GuestLocation"]
