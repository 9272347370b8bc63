"""libvirt adapter of the Hypervisor seam. `import libvirt` happens here and nowhere else.

libvirt errors become drctl errors at this edge (docs/architecture.md). Calls that can hang on a
hung peer (open, and anything a caller marks) run with a deadline: a thread does the call
and we stop waiting for it after `timeout_s`, raising HypervisorTimeout. The thread itself
cannot be killed; it is a daemon and is abandoned (docs/runner.md: a SIGSTOPped libvirtd makes
libvirt wait with no timeout).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Callable, TypeVar

import libvirt

from drctl.model.errors import (
    HostUnreachable,
    HypervisorError,
    HypervisorPermanent,
    HypervisorTimeout,
    IncompatibleHost,
    InsufficientResources,
    MigrationAborted,
    MigrationFailed,
    NoSuchDomain,
)
from xml.sax.saxutils import escape

from drctl.hypervisor.deadline import with_deadline
from drctl.hypervisor import (DomainInfo, DomainState, GuestSupport, HostCapacity, JobStats, MigrationParams,
                              StateReason)

T = TypeVar("T")

# libvirt prints every error to stderr by default; we translate them instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}

# virDomainShutoffReason -> StateReason (a crashed-state domain is CRASHED whatever its reason)
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: StateReason.UNKNOWN,
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: StateReason.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: StateReason.DESTROYED,
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: StateReason.CRASHED,
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: StateReason.MIGRATED,
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: StateReason.SAVED,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: StateReason.FAILED,
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: StateReason.SNAPSHOT,
    8: StateReason.DAEMON,  # VIR_DOMAIN_SHUTOFF_DAEMON (libvirt >= 4.x; older bindings lack the name)
}

# error code -> drctl error, for calls other than migration
_ERRORS: dict[int, type[HypervisorError]] = {
    libvirt.VIR_ERR_NO_DOMAIN: NoSuchDomain,
    libvirt.VIR_ERR_SYSTEM_ERROR: HostUnreachable,  # 38: unable to connect
    libvirt.VIR_ERR_RPC: HostUnreachable,
    libvirt.VIR_ERR_NO_CONNECT: HostUnreachable,
    libvirt.VIR_ERR_OPERATION_TIMEOUT: HypervisorTimeout,
    libvirt.VIR_ERR_CPU_INCOMPATIBLE: IncompatibleHost,  # 91
    libvirt.VIR_ERR_NO_STORAGE_POOL: IncompatibleHost,  # 49: destination lacks the pool
    libvirt.VIR_ERR_OPERATION_ABORTED: MigrationAborted,  # 78
}
# during a migration the source keeps the VM; anything not clearly permanent may pass
_MIGRATION_ERRORS: dict[int, type[HypervisorError]] = {
    **_ERRORS,
    libvirt.VIR_ERR_OPERATION_FAILED: MigrationFailed,  # 9: unable to write to socket
    libvirt.VIR_ERR_INTERNAL_ERROR: MigrationFailed,  # 1: unless out of memory, below
    libvirt.VIR_ERR_SYSTEM_ERROR: HostUnreachable,
}


def translate(exc: libvirt.libvirtError, what: str, migration: bool = False) -> HypervisorError:
    """A drctl error for a libvirt one; the message names what we were doing."""
    code = exc.get_error_code()
    msg = exc.get_error_message() or str(exc)
    if "cannot set up guest memory" in msg or "Cannot allocate memory" in msg:
        cls: type[HypervisorError] = InsufficientResources
    elif "different sizes" in msg:
        cls = IncompatibleHost
    else:
        cls = (_MIGRATION_ERRORS if migration else _ERRORS).get(
            code, MigrationFailed if migration else HypervisorPermanent
        )
    err = cls(f"{what}: {msg} (libvirt code {code})")
    err.libvirt_code = code  # type: ignore[attr-defined]
    return err


# JobStats fields that carry libvirt's typed-parameter name unchanged
_SAME_NAME = ("data_total", "data_processed", "data_remaining", "memory_total", "memory_processed",
              "memory_remaining", "memory_dirty_rate", "memory_iteration", "memory_bps", "disk_total",
              "disk_processed", "disk_remaining")


def _stats(raw: dict[str, object], active: bool) -> JobStats:
    def i(key: str) -> int:
        v = raw.get(key, 0)
        return int(v) if isinstance(v, (int, float)) else 0

    downtime = raw.get("downtime")
    return JobStats(
        active=active,
        elapsed_ms=i("time_elapsed"),
        downtime_ms=int(downtime) if isinstance(downtime, (int, float)) else None,
        raw=dict(raw),
        **{k: i(k) for k in _SAME_NAME},
    )


class LibvirtHypervisor:
    """One connection to one host's libvirtd."""

    def __init__(self, uri: str, timeout_s: float = 10.0) -> None:
        self.uri = uri
        self.timeout_s = timeout_s
        try:
            self._conn = with_deadline(lambda: libvirt.open(uri), timeout_s, f"connect {uri}")
        except libvirt.libvirtError as e:
            raise HostUnreachable(f"libvirt at {uri} unreachable: {e.get_error_message()}") from e
        except HypervisorTimeout as e:
            raise HostUnreachable(f"libvirt at {uri} unreachable: {e}") from e

    # -- helpers
    def _call(self, what: str, fn: Callable[[], T], deadline: bool = True) -> T:
        try:
            if deadline:
                return with_deadline(fn, self.timeout_s, f"{self.uri}: {what}")
            return fn()
        except libvirt.libvirtError as e:
            raise translate(e, f"{self.uri}: {what}") from e

    def _dom(self, name: str) -> libvirt.virDomain:
        return self._call(f"lookup {name}", lambda: self._conn.lookupByName(name))

    # -- host
    def hostname(self) -> str:
        return self._call("hostname", self._conn.getHostname)

    def capacity(self) -> HostCapacity:
        # getFreeMemory()/getInfo() report one NUMA node only: use all cells (docs/runner.md)
        mem = self._call(
            "memory stats", lambda: self._conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        )
        info = self._call("node info", self._conn.getInfo)
        caps = ET.fromstring(self._call("capabilities", self._conn.getCapabilities))
        model = caps.findtext("host/cpu/model") or info[0]
        free = mem.get("free", 0) + mem.get("buffers", 0) + mem.get("cached", 0)
        return HostCapacity(
            memory_total_mib=mem.get("total", 0) // 1024,
            memory_free_mib=free // 1024,
            cpus=int(info[2]),
            cpu_model=model,
            hostname=self.hostname(),
        )

    def compare_cpu(self, cpu_xml: str) -> bool:
        # compareHypervisorCPU, not compareCPU: the latter compares with the physical CPU
        # and calls even qemu64 incompatible under TCG (docs/runner.md)
        res = self._call(
            "compare cpu",
            lambda: self._conn.compareHypervisorCPU(None, "x86_64", "pc", "qemu", cpu_xml, 0),
        )
        return res != libvirt.VIR_CPU_COMPARE_INCOMPATIBLE

    def guest_support(self) -> GuestSupport:
        caps = ET.fromstring(self._call("capabilities", self._conn.getCapabilities))
        machines: set[str] = set()
        emulators: set[str] = set()
        for arch in caps.findall("guest/arch[@name='x86_64']"):
            emulators.update(e.text or "" for e in arch.findall("emulator"))
            for m in arch.findall(".//machine"):
                machines.add(m.text or "")
                if m.get("canonical"):
                    machines.add(m.get("canonical", ""))
        return GuestSupport(frozenset(machines - {""}), frozenset(emulators - {""}))

    def list_networks(self) -> list[str]:
        return sorted(self._call("list networks", self._conn.listNetworks))

    def list_storage_pools(self) -> list[str]:
        return sorted(self._call("list storage pools", self._conn.listStoragePools))

    def ensure_dir_pool(self, name: str, path: str) -> None:
        def ensure() -> None:
            try:
                pool = self._conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                xml = (f"<pool type='dir'><name>{escape(name)}</name>"
                       f"<target><path>{escape(path)}</path></target></pool>")
                pool = self._conn.storagePoolDefineXML(xml, 0)
                pool.build(0)  # mkdir -p of the target; harmless when it exists
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)

        self._call(f"ensure dir pool {name} at {path}", ensure)

    # -- domains
    def _info(self, dom: libvirt.virDomain) -> DomainInfo:
        _state, maxmem_kib, _mem, vcpus, _cpu = dom.info()
        state, code = dom.state(0)  # with the reason, which info() lacks
        reason = StateReason.NONE
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            reason = _SHUTOFF_REASONS.get(code, StateReason.UNKNOWN)
        elif state == libvirt.VIR_DOMAIN_CRASHED:
            reason = StateReason.CRASHED
        return DomainInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=_STATES.get(state, DomainState.OTHER),
            memory_mib=maxmem_kib // 1024,
            vcpus=vcpus,
            persistent=bool(dom.isPersistent()),
            reason=reason,
        )

    def list_domains(self) -> list[DomainInfo]:
        doms = self._call("list domains", lambda: self._conn.listAllDomains(0))
        out = []
        for d in doms:
            try:
                out.append(self._call("domain info", lambda d=d: self._info(d)))
            except NoSuchDomain:
                continue  # vanished between list and info (migrated away)
        return sorted(out, key=lambda i: i.name)

    def domain(self, name: str) -> DomainInfo:
        dom = self._dom(name)
        return self._call(f"info {name}", lambda: self._info(dom))

    def domain_xml(self, name: str) -> str:
        dom = self._dom(name)
        return self._call(f"xml {name}", lambda: dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))

    def define(self, xml: str) -> DomainInfo:
        dom = self._call("define", lambda: self._conn.defineXML(xml))
        return self._call("domain info", lambda: self._info(dom))

    def start(self, name: str) -> None:
        dom = self._dom(name)
        self._call(f"start {name}", dom.create)

    def destroy(self, name: str) -> None:
        dom = self._dom(name)
        if self._call(f"is active {name}", dom.isActive):
            self._call(f"destroy {name}", dom.destroy)

    def undefine(self, name: str) -> None:
        dom = self._dom(name)
        flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        self._call(f"undefine {name}", lambda: dom.undefineFlags(flags))

    def suspend(self, name: str) -> None:
        dom = self._dom(name)
        state = self._call(f"state {name}", dom.state)[0]
        if state != libvirt.VIR_DOMAIN_PAUSED:
            self._call(f"suspend {name}", dom.suspend)

    def resume(self, name: str) -> None:
        dom = self._dom(name)
        state = self._call(f"state {name}", dom.state)[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            self._call(f"resume {name}", dom.resume)

    def autostart(self, name: str) -> bool:
        dom = self._dom(name)
        return bool(self._call(f"autostart {name}", dom.autostart))

    def set_autostart(self, name: str, on: bool) -> None:
        dom = self._dom(name)
        self._call(f"set autostart {name} {'on' if on else 'off'}", lambda: dom.setAutostart(1 if on else 0))

    # -- migration
    def migrate(self, name: str, dest_uri: str, params: MigrationParams) -> None:
        dom = self._dom(name)
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        p: dict[str, object] = {}
        if params.bandwidth_mibs:
            p[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(params.bandwidth_mibs)
        if params.copy_storage:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
            if params.disks:
                p[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(params.disks)
        if params.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
            p[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = int(params.auto_converge_initial_pct)
            p[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = int(params.auto_converge_step_pct)
        if params.postcopy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
            if params.postcopy_bandwidth_mibs:
                # uncapped otherwise (docs/runner.md)
                p[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = int(params.postcopy_bandwidth_mibs)
        if params.max_downtime_ms:
            self.set_max_downtime(name, params.max_downtime_ms)
        try:
            # no deadline here: the runner's watchdog owns the migration's time limit
            dom.migrateToURI3(dest_uri, p, flags)
        except libvirt.libvirtError as e:
            raise translate(e, f"migrate {name} {self.uri} -> {dest_uri}", migration=True) from e

    def job_stats(self, name: str) -> JobStats:
        dom = self._dom(name)
        raw = self._call(f"job stats {name}", lambda: dom.jobStats(0))
        active = raw.get("type", libvirt.VIR_DOMAIN_JOB_NONE) not in (
            libvirt.VIR_DOMAIN_JOB_NONE,
            libvirt.VIR_DOMAIN_JOB_COMPLETED,
        )
        return _stats(raw, active)

    def completed_job_stats(self, name: str) -> JobStats:
        dom = self._dom(name)
        # KEEP_COMPLETED: reading must not erase them, so whoever looks next (an operator,
        # a test comparing the audit trail with libvirt) sees the same numbers
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        raw = self._call(f"completed job stats {name}", lambda: dom.jobStats(flags))
        return _stats(raw, False)

    def abort_job(self, name: str) -> None:
        dom = self._dom(name)
        self._call(f"abort job {name}", dom.abortJob)

    def start_postcopy(self, name: str) -> None:
        dom = self._dom(name)
        self._call(f"start post-copy {name}", lambda: dom.migrateStartPostCopy(0))

    def set_max_downtime(self, name: str, ms: int) -> None:
        dom = self._dom(name)
        self._call(f"set max downtime {name}", lambda: dom.migrateSetMaxDowntime(int(ms), 0))

    def close(self) -> None:
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass


def connect(uri: str, timeout_s: float = 10.0) -> LibvirtHypervisor:
    """Open a connection; HostUnreachable (one clear line naming the URI) if we cannot."""
    return LibvirtHypervisor(uri, timeout_s)
