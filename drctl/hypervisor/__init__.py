"""Hypervisor seam: what drctl needs from one host's hypervisor (libvirt in production,
simulated hosts in the simulator). Both adapters pass
`tests/contract/test_hypervisor_contract.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class DomainState(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


class StateReason(str, Enum):
    """Why a domain is in its state, as libvirt says (virDomainShutoffReason and friends).

    It tells a stop somebody asked for (a guest shutdown, `virsh shutdown`/`destroy`, a
    migration, a save) from one nobody asked for (QEMU crashed or was killed, a start
    failed, libvirtd dropped the domain): only the latter are drctl's to undo
    (`UNREQUESTED`, docs/controller.md "VM-level recovery")."""

    NONE = ""  # running, paused, or the adapter cannot say
    UNKNOWN = "unknown"
    SHUTDOWN = "shutdown"  # the guest shut down (by itself or asked by `virsh shutdown`)
    DESTROYED = "destroyed"  # `virsh destroy`: an operator's (or drctl's) hard stop
    CRASHED = "crashed"  # QEMU died (SIGKILL, OOM killer, guest panic with on_crash=destroy)
    MIGRATED = "migrated"
    SAVED = "saved"
    FAILED = "failed"  # the start failed
    SNAPSHOT = "from-snapshot"
    DAEMON = "daemon"  # libvirtd dropped it while reconnecting after a restart


UNREQUESTED = frozenset({StateReason.CRASHED, StateReason.FAILED, StateReason.DAEMON})


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: DomainState
    memory_mib: int
    vcpus: int
    persistent: bool = True
    reason: StateReason = StateReason.NONE


@dataclass(frozen=True)
class HostCapacity:
    memory_total_mib: int
    memory_free_mib: int  # over all NUMA cells
    cpus: int
    cpu_model: str
    hostname: str


@dataclass(frozen=True)
class GuestSupport:
    """What guests a host can run: machine types (aliases and canonical names) and emulators."""

    machines: frozenset[str]
    emulators: frozenset[str]


@dataclass(frozen=True)
class MigrationParams:
    """What one migration may use. Zero/None means the hypervisor default."""

    bandwidth_mibs: int = 0
    max_downtime_ms: int = 0
    copy_storage: bool = False  # VM on host-local disks: copy them too
    disks: tuple[str, ...] = ()  # with copy_storage: only these targets (default all)
    auto_converge: bool = False
    postcopy: bool = False  # allow switching to post-copy
    postcopy_bandwidth_mibs: int = 0
    auto_converge_initial_pct: int = 30
    auto_converge_step_pct: int = 20


@dataclass(frozen=True)
class JobStats:
    """Migration job statistics, normalised from libvirt's typed parameters."""

    active: bool
    elapsed_ms: int = 0
    downtime_ms: int | None = None
    data_total: int = 0  # bytes
    data_processed: int = 0
    data_remaining: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    memory_dirty_rate: int = 0  # pages/s
    memory_iteration: int = 0
    memory_bps: int = 0  # bytes/s throughput
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    raw: dict[str, object] = field(default_factory=dict)


class Hypervisor(Protocol):
    """One connection to one host."""

    uri: str

    def hostname(self) -> str: ...

    def capacity(self) -> HostCapacity: ...

    def list_domains(self) -> list[DomainInfo]: ...

    def domain(self, name: str) -> DomainInfo:
        """Raises NoSuchDomain."""

    def domain_xml(self, name: str) -> str: ...

    def define(self, xml: str) -> DomainInfo: ...

    def start(self, name: str) -> None: ...

    def destroy(self, name: str) -> None:
        """Hard stop; no error if already stopped."""

    def undefine(self, name: str) -> None: ...

    def suspend(self, name: str) -> None:
        """Pause a running domain (no error if already paused): the runner holds a migration's
        source this way while a hung destination may still run its incoming copy."""

    def resume(self, name: str) -> None:
        """Let a paused domain run again (no error if it runs)."""

    def autostart(self, name: str) -> bool:
        """Whether libvirtd starts the domain when it starts (a host's boot)."""

    def set_autostart(self, name: str, on: bool) -> None:
        """Switch libvirt autostart; drctl switches it off on copies it leaves behind, so
        a fenced host that boots again does not start a VM that now runs elsewhere."""

    def migrate(self, name: str, dest_uri: str, params: MigrationParams) -> None:
        """Live, peer-to-peer, persisted on the destination, undefined on the source.

        Blocks until done. Raises MigrationFailed / MigrationAborted / HostUnreachable /
        InsufficientResources ...; the VM keeps running on the source when it raises.
        """

    def job_stats(self, name: str) -> JobStats:
        """In-flight statistics of the domain's current job (on the source)."""

    def completed_job_stats(self, name: str) -> JobStats:
        """Statistics of the last completed migration (read on the destination)."""

    def abort_job(self, name: str) -> None: ...

    def start_postcopy(self, name: str) -> None: ...

    def set_max_downtime(self, name: str, ms: int) -> None: ...

    def compare_cpu(self, cpu_xml: str) -> bool:
        """True if a VM with this <cpu> element can run here."""

    def guest_support(self) -> GuestSupport:
        """Machine types and emulators this host offers (x86_64 guests)."""

    def list_networks(self) -> list[str]:
        """Names of the active virtual networks."""

    def list_storage_pools(self) -> list[str]:
        """Names of the active storage pools."""

    def ensure_dir_pool(self, name: str, path: str) -> None:
        """Make sure an active `dir` storage pool `name` targets `path` (idempotent).

        Storage migration needs it on the destination: libvirt then creates the VM's
        local images there before copying them (docs/runner.md).
        """

    def close(self) -> None: ...
