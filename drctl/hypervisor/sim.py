"""Simulated adapter of the Hypervisor seam, for scale and scenario tests.

A `SimCluster` holds every simulated host; `SimHypervisor` is one connection to one of
them, with the same behaviour the contract tests demand of the libvirt adapter. Faults
(a host down, hung, or out of memory; a migration that fails) are switched on the cluster.
Migrations complete instantly but are timed with the pre-copy model on the injected clock.
"""
from __future__ import annotations

import re
import threading
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Any

from drctl.clock import Clock, SystemClock
from drctl.model.errors import (
    HostUnreachable,
    HypervisorTimeout,
    IncompatibleHost,
    InsufficientResources,
    MigrationAborted,
    MigrationFailed,
    NoSuchDomain,
)
from drctl.hypervisor import (DomainInfo, DomainState, GuestSupport, HostCapacity, JobStats, MigrationParams,
                              StateReason)


@dataclass
class SimDomain:
    name: str
    xml: str
    memory_mib: int
    vcpus: int
    uuid: str
    state: DomainState = DomainState.SHUTOFF
    last_job: JobStats | None = None
    migrating: bool = False  # the source side of a migration job in progress
    incoming: bool = False  # the destination side of a hand-over that has not finished
    reason: StateReason = StateReason.UNKNOWN  # why it is in `state` (libvirt's state reason)
    autostart: bool = False


@dataclass
class SimHost:
    name: str
    memory_mib: int = 16384
    cpus: int = 8
    cpu_features: frozenset[str] = frozenset()
    up: bool = True  # False: connection refused (libvirtd dead)
    hung: bool = False  # True: calls time out (libvirtd SIGSTOPped)
    domains: dict[str, SimDomain] = field(default_factory=dict)
    networks: set[str] = field(default_factory=set)
    pools: dict[str, str] = field(default_factory=dict)  # pool name -> target path
    machines: frozenset[str] = frozenset({"pc", "q35"})
    emulators: frozenset[str] = frozenset({"/usr/bin/qemu-system-x86_64"})

    def used_mib(self) -> int:
        return sum(d.memory_mib for d in self.domains.values() if d.state is DomainState.RUNNING)


class SimCluster:
    """Every simulated host, keyed by URI (`sim://<host>`)."""

    def __init__(self, clock: Clock | None = None, bandwidth_mibs: float = 1024.0) -> None:
        self.clock = clock or SystemClock()
        self.bandwidth_mibs = bandwidth_mibs
        self.hosts: dict[str, SimHost] = {}
        self.fail_next_migrations: dict[str, type[Exception]] = {}  # vm -> error to raise once
        self.stalls: dict[str, float] = {}  # destination host -> seconds until the source gives up
        self.duplicates_seen: list[tuple[str, tuple[str, ...]]] = []  # every moment a VM ran twice
        self.lock = threading.RLock()

    def add_host(self, name: str, **kw: Any) -> SimHost:  # kw: SimHost's fields
        host = SimHost(name, **kw)
        self.hosts[name] = host
        return host

    @staticmethod
    def uri(host: str) -> str:
        return f"sim://{host}"

    def connect(self, uri: str) -> "SimHypervisor":
        return SimHypervisor(self, uri)

    def stall_handover(self, host: str, source_gives_up_s: float = 30.0) -> None:
        """The next migration to `host` stalls at the hand-over, as a destination libvirtd
        SIGSTOPped mid-migration does: the memory is copied, the source paused, the incoming
        copy defined (paused) on `host`, and `host` stops answering. The migrate call blocks
        (abort is ignored) until `source_gives_up_s` later, when the source's libvirt gives up
        (keepalive), resumes the source and fails the call. See `resume_host`."""
        self.stalls[host] = source_gives_up_s

    def resume_host(self, host: str) -> None:
        """The stalled libvirtd answers again (SIGCONT). Like libvirt on the lab, it then
        runs the incoming copy of the abandoned hand-over, whatever the source did."""
        with self.lock:
            h = self.hosts[host]
            h.hung = False
            for d in h.domains.values():
                if d.incoming:
                    d.incoming = False
                    d.state = DomainState.RUNNING
                    self.note_running(d.name)

    def note_running(self, vm: str) -> None:
        """Record a moment at which `vm` runs on more than one host (the invariant's breach)."""
        hosts = self.where(vm)
        if len(hosts) > 1:
            self.duplicates_seen.append((vm, tuple(hosts)))

    def crash(self, host: str, vm: str) -> None:
        """QEMU of `vm` on `host` dies (SIGKILL, OOM): shut off, reason crashed."""
        with self.lock:
            d = self.hosts[host].domains[vm]
            d.state, d.reason = DomainState.SHUTOFF, StateReason.CRASHED

    def boot(self, host: str) -> None:
        """`host` powers on again after a fence: every domain was off (reason unknown,
        as after a reboot); libvirtd starts those with autostart set."""
        with self.lock:
            h = self.hosts[host]
            h.up, h.hung = True, False
            for d in h.domains.values():
                d.state, d.reason = DomainState.SHUTOFF, StateReason.UNKNOWN
            for d in h.domains.values():
                if d.autostart:
                    d.state, d.reason = DomainState.RUNNING, StateReason.NONE

    def where(self, vm: str) -> list[str]:
        """Hosts on which `vm` runs (the invariant: exactly one)."""
        return sorted(h.name for h in self.hosts.values()
                      if vm in h.domains and h.domains[vm].state is DomainState.RUNNING)


_NAME = re.compile(r"<name>([^<]+)</name>")
_MEM = re.compile(r"<memory unit='MiB'>(\d+)</memory>")
_VCPU = re.compile(r"<vcpu>(\d+)</vcpu>")
_FEATURE = re.compile(r"<feature policy='require' name='([^']+)'/>")


class SimHypervisor:
    def __init__(self, cluster: SimCluster, uri: str) -> None:
        self.cluster = cluster
        self.uri = uri
        self.name = uri.removeprefix("sim://")
        if self.name not in cluster.hosts:
            raise HostUnreachable(f"simulated host at {uri} unknown")
        self._check()

    def _host(self) -> SimHost:
        return self.cluster.hosts[self.name]

    def _check(self) -> SimHost:
        h = self._host()
        if h.hung:
            raise HypervisorTimeout(f"{self.uri}: no answer (simulated hung libvirtd)")
        if not h.up:
            raise HostUnreachable(f"libvirt at {self.uri} unreachable (simulated)")
        return h

    def _dom(self, name: str) -> SimDomain:
        h = self._check()
        if name not in h.domains:
            raise NoSuchDomain(f"{self.uri}: no domain {name!r}")
        return h.domains[name]

    def hostname(self) -> str:
        return self._check().name

    def capacity(self) -> HostCapacity:
        h = self._check()
        return HostCapacity(h.memory_mib, h.memory_mib - h.used_mib(), h.cpus, "qemu64", h.name)

    def compare_cpu(self, cpu_xml: str) -> bool:
        return set(_FEATURE.findall(cpu_xml)) <= self._check().cpu_features

    def guest_support(self) -> GuestSupport:
        h = self._check()
        return GuestSupport(h.machines, h.emulators)

    def list_networks(self) -> list[str]:
        return sorted(self._check().networks)

    def list_storage_pools(self) -> list[str]:
        return sorted(self._check().pools)

    def ensure_dir_pool(self, name: str, path: str) -> None:
        self._check().pools.setdefault(name, path)

    def list_domains(self) -> list[DomainInfo]:
        return [self._info(d) for d in sorted(self._check().domains.values(), key=lambda d: d.name)]

    @staticmethod
    def _info(d: SimDomain) -> DomainInfo:
        reason = d.reason if d.state in (DomainState.SHUTOFF, DomainState.CRASHED) else StateReason.NONE
        return DomainInfo(d.name, d.uuid, d.state, d.memory_mib, d.vcpus, True, reason)

    def domain(self, name: str) -> DomainInfo:
        return self._info(self._dom(name))

    def domain_xml(self, name: str) -> str:
        return self._dom(name).xml

    def define(self, xml: str) -> DomainInfo:
        h = self._check()
        name = _NAME.search(xml)
        mem = _MEM.search(xml)
        if not name or not mem:
            raise IncompatibleHost(f"{self.uri}: domain XML lacks <name> or <memory unit='MiB'>")
        vcpu = _VCPU.search(xml)
        with self.cluster.lock:
            old = h.domains.get(name.group(1))
            d = SimDomain(name.group(1), xml, int(mem.group(1)), int(vcpu.group(1)) if vcpu else 1,
                          old.uuid if old else str(uuidlib.uuid4()), old.state if old else DomainState.SHUTOFF)
            h.domains[d.name] = d
        return self._info(d)

    def start(self, name: str) -> None:
        with self.cluster.lock:
            d = self._dom(name)
            h = self._host()
            if h.used_mib() + d.memory_mib > h.memory_mib:
                raise InsufficientResources(f"{self.uri}: start {name}: cannot set up guest memory")
            d.state = DomainState.RUNNING
            self.cluster.note_running(name)

    def suspend(self, name: str) -> None:
        with self.cluster.lock:
            d = self._dom(name)
            if d.state is DomainState.RUNNING:
                d.state = DomainState.PAUSED

    def resume(self, name: str) -> None:
        with self.cluster.lock:
            d = self._dom(name)
            if d.state is DomainState.PAUSED:
                d.state = DomainState.RUNNING
                self.cluster.note_running(name)

    def destroy(self, name: str) -> None:
        d = self._dom(name)
        if d.state is not DomainState.SHUTOFF:
            d.state, d.reason = DomainState.SHUTOFF, StateReason.DESTROYED

    def autostart(self, name: str) -> bool:
        return self._dom(name).autostart

    def set_autostart(self, name: str, on: bool) -> None:
        self._dom(name).autostart = on

    def undefine(self, name: str) -> None:
        with self.cluster.lock:
            self._dom(name)
            del self._host().domains[name]

    def migrate(self, name: str, dest_uri: str, params: MigrationParams) -> None:
        with self.cluster.lock:
            d = self._dom(name)
            dest_name = dest_uri.removeprefix("sim://")
            dest = self.cluster.hosts.get(dest_name)
            what = f"migrate {name} {self.uri} -> {dest_uri}"
            if dest is None or not dest.up:
                raise HostUnreachable(f"{what}: unable to connect to destination (simulated)")
            if dest.hung:
                raise HypervisorTimeout(f"{what}: destination does not answer (simulated)")
            if dest.used_mib() + d.memory_mib > dest.memory_mib:
                raise InsufficientResources(f"{what}: cannot set up guest memory (simulated)")
            err = self.cluster.fail_next_migrations.pop(name, None)
            if err is not None:
                raise err(f"{what}: injected failure (simulated)")
            gives_up = self.cluster.stalls.pop(dest_name, None)
        bw = params.bandwidth_mibs or self.cluster.bandwidth_mibs
        seconds = d.memory_mib / bw
        self.cluster.clock.sleep(seconds)
        if gives_up is not None:
            self._stall(d, dest, gives_up, what)
        with self.cluster.lock:
            if self._host().domains.get(name) is not d:
                raise MigrationAborted(f"{what}: domain changed during migration")
            del self._host().domains[name]
            stats = JobStats(active=False, elapsed_ms=int(seconds * 1000), downtime_ms=20,
                             data_total=d.memory_mib << 20, data_processed=d.memory_mib << 20,
                             memory_total=d.memory_mib << 20, memory_processed=d.memory_mib << 20,
                             memory_iteration=2)
            # like libvirt's PERSIST_DEST: the destination's definition starts without autostart
            dest.domains[name] = replace(d, state=DomainState.RUNNING, last_job=stats, autostart=False)
            self.cluster.note_running(name)

    def _stall(self, d: SimDomain, dest: SimHost, gives_up_s: float, what: str) -> None:
        with self.cluster.lock:
            d.state, d.migrating = DomainState.PAUSED, True
            dest.domains[d.name] = replace(d, state=DomainState.PAUSED, migrating=False, incoming=True)
            dest.hung = True
        # the blocked call spends simulated time (slowly in real time, so the runner's
        # watchdog, polling in real time, sees it pass) until the source gives up
        until = self.cluster.clock.monotonic() + gives_up_s
        pace = threading.Event()
        while self.cluster.clock.monotonic() < until:
            self.cluster.clock.sleep(0.25)
            pace.wait(0.002)
        with self.cluster.lock:
            d.migrating = False
            if d.state is DomainState.PAUSED:
                d.state = DomainState.RUNNING  # libvirt resumes a source whose migration failed
                self.cluster.note_running(d.name)
        raise MigrationFailed(f"{what}: connection to the destination timed out (simulated keepalive)")

    def job_stats(self, name: str) -> JobStats:
        d = self._dom(name)
        # simulated migrations complete at once, except a stalled one: active, no progress
        return JobStats(active=True, data_processed=d.memory_mib << 20) if d.migrating else JobStats(active=False)

    def completed_job_stats(self, name: str) -> JobStats:
        return self._dom(name).last_job or JobStats(active=False)

    def abort_job(self, name: str) -> None:
        self._dom(name)

    def start_postcopy(self, name: str) -> None:
        self._dom(name)

    def set_max_downtime(self, name: str, ms: int) -> None:
        self._dom(name)

    def close(self) -> None:
        pass


__all__ = ["SimCluster", "SimHost", "SimHypervisor", "MigrationFailed"]
