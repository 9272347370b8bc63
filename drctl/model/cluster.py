"""Domain data: frozen dataclasses shared by every layer.

Nothing here does I/O. The cluster snapshot (hosts + VMs), the rules that placement and
the planner obey, and the intent state-transition table live here so that the pure core
(placement, planner, controller tick) and the adapters agree on one vocabulary.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping


class HostState(str, Enum):
    """Graded host state, as the controller sees it (docs/health.md, "Host state")."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"
    UNREACHABLE = "unreachable"  # lease gone, but witnesses still reach it (or too few witnesses)
    DEAD = "dead"  # lease gone and a quorum of witnesses confirms

    @property
    def alive(self) -> bool:
        return self in (HostState.HEALTHY, HostState.DEGRADED, HostState.FAILING)


class StorageKind(str, Enum):
    SHARED = "shared"
    LOCAL = "local"


@dataclass(frozen=True)
class Disk:
    name: str  # target device, e.g. "vda"
    size_gib: float
    storage: StorageKind = StorageKind.SHARED
    pool: str = ""  # storage pool the disk lives in; a destination must have it (shared) or can create it (local)


@dataclass(frozen=True)
class Host:
    """One hypervisor host in a cluster snapshot."""

    name: str
    memory_mib: int  # total physical memory
    cpus: int
    memory_used_mib: int = 0  # used by VMs and the host itself, as measured
    reserved_mib: int = 0  # kept back for the host OS
    cpu_used: float = 0.0  # vCPUs allocated (or cores busy), same unit as cpus
    cpu_model: str = "qemu64"
    cpu_features: frozenset[str] = frozenset()
    hypervisor_version: str = ""
    machine_types: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()
    storage_pools: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    state: HostState = HostState.HEALTHY
    maintenance: bool = False
    incoming_limit: int = 2  # concurrent incoming migrations this host accepts

    @property
    def free_mib(self) -> int:
        return self.memory_mib - self.reserved_mib - self.memory_used_mib


@dataclass(frozen=True)
class VM:
    """One virtual machine in a cluster snapshot."""

    name: str
    host: str
    memory_mib: int
    vcpus: int = 1
    cpu_model: str = ""  # required CPU model; "" = any
    cpu_features: frozenset[str] = frozenset()  # required CPU features
    machine_type: str = ""  # "" = any
    networks: frozenset[str] = frozenset()
    disks: tuple[Disk, ...] = ()
    priority: int = 0  # higher goes first
    tags: frozenset[str] = frozenset()
    affinity_group: str = ""  # VMs of one group want the same host
    anti_affinity_group: str = ""  # VMs of one group must not share a host (nor a failure domain, per rules)
    migratable: bool = True
    dirty_rate_mibs: float | None = None  # observed dirty rate, MiB/s, when known

    @property
    def local_disk_gib(self) -> float:
        return sum(d.size_gib for d in self.disks if d.storage is StorageKind.LOCAL)


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the cluster: what the controller decides on."""

    hosts: Mapping[str, Host]
    vms: Mapping[str, VM]
    taken_at: float = 0.0  # seconds since the epoch (or SimClock time)

    def vms_on(self, host: str) -> list[VM]:
        return sorted((v for v in self.vms.values() if v.host == host), key=lambda v: v.name)


# ---------------------------------------------------------------- selectors


@dataclass(frozen=True)
class HostSelector:
    """Matches hosts by name glob and/or labels. An empty selector matches every host."""

    names: tuple[str, ...] = ()  # globs; any may match
    labels: Mapping[str, str] = field(default_factory=dict)  # all must match
    # hosts matching `exclude` never match: lets a policy say "must not run on X"
    # (HostAffinity(vms, HostSelector(exclude=X))) and "every host but the spares".
    exclude: HostSelector | None = None

    def matches(self, host: Host) -> bool:
        if self.names and not any(fnmatch.fnmatchcase(host.name, g) for g in self.names):
            return False
        if self.exclude is not None and self.exclude.matches(host):
            return False
        return all(host.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class VMSelector:
    """Matches VMs by name glob, tags and minimum priority. Empty matches every VM."""

    names: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()  # all must be present
    min_priority: int | None = None

    def matches(self, vm: VM) -> bool:
        if self.names and not any(fnmatch.fnmatchcase(vm.name, g) for g in self.names):
            return False
        if not self.tags <= vm.tags:
            return False
        return self.min_priority is None or vm.priority >= self.min_priority


# ---------------------------------------------------------------- rules for placement and planning


@dataclass(frozen=True)
class HostAffinity:
    """VMs matching `vms` must (or prefer to) run on hosts matching `hosts`."""

    vms: VMSelector
    hosts: HostSelector
    required: bool = True  # must; False = prefer


class SpareMode(str, Enum):
    AVOID = "avoid"  # use spare hosts only when nothing else fits
    PREFER = "prefer"  # fill spare hosts first (classic N+1 failover capacity)
    ONLY = "only"  # place only on spare hosts


@dataclass(frozen=True)
class PlacementRules:
    """What placement must respect. Compiled from a policy; defaults are safe."""

    memory_headroom_pct: float = 10.0  # of a host's memory kept free after every placement
    failure_domain_label: str = "rack"
    # anti-affinity groups must also be spread across failure domains, not only hosts
    spread_anti_affinity_across_domains: bool = False
    host_affinity: tuple[HostAffinity, ...] = ()
    spare_hosts: HostSelector | None = None
    spare_mode: SpareMode = SpareMode.AVOID


class EscalationStep(str, Enum):
    """What the runner tries, in the policy's order, when a live migration does not converge."""

    RAISE_DOWNTIME = "raise-downtime"  # allow a longer switch-over pause
    AUTO_CONVERGE = "auto-converge"  # restart the job with QEMU throttling the guest's vCPUs
    POST_COPY = "post-copy"  # switch over now, pull the rest of memory on demand
    ABORT = "abort"  # give up; the VM stays on the source


DEFAULT_ESCALATION: tuple[EscalationStep, ...] = (
    EscalationStep.RAISE_DOWNTIME, EscalationStep.AUTO_CONVERGE, EscalationStep.POST_COPY, EscalationStep.ABORT)


def escalation_steps(names: Iterable[str]) -> tuple[EscalationStep, ...]:
    """Steps named in a stored record, in order. Unknown names are skipped: the runner has
    always ignored steps it does not know, and a record must not fail to load over one."""
    known = {s.value: s for s in EscalationStep}
    # members count as their value: str() of a str-mixin member is "EscalationStep.ABORT"
    values = (n.value if isinstance(n, EscalationStep) else str(n) for n in names)
    return tuple(known[v] for v in values if v in known)


@dataclass(frozen=True)
class Limits:
    """Concurrency, bandwidth and timing limits for moves. Compiled from a policy."""

    max_concurrent: int = 4  # migrations in flight across the cluster
    max_per_source: int = 2
    max_per_destination: int = 2
    bandwidth_mibs: float = 64.0  # per migration
    bandwidth_total_mibs: float = 256.0  # shared budget across concurrent migrations
    max_downtime_ms: int = 300  # QEMU's default
    timeout_s_per_gib: float = 120.0
    escalation: tuple[EscalationStep, ...] = DEFAULT_ESCALATION


# ---------------------------------------------------------------- intents


class IntentKind(str, Enum):
    MIGRATE = "migrate"  # live migration off a host that is still alive
    RESTART = "restart"  # define + start elsewhere; only for a fenced, dead host
    START = "start"  # start a VM found stopped without a request, where it is defined (a live host)


class IntentState(str, Enum):
    PENDING = "pending"
    CHECKING = "checking"
    MIGRATING = "migrating"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in (IntentState.DONE, IntentState.FAILED, IntentState.ABORTED)


_S = IntentState
# The only legal transitions. Every change goes through `check_transition` so an illegal
# move (e.g. done -> migrating after a leader change) is a bug caught at once.
INTENT_TRANSITIONS: Mapping[IntentState, frozenset[IntentState]] = {
    _S.PENDING: frozenset({_S.CHECKING, _S.ABORTED, _S.FAILED}),
    # checking -> pending: this destination was rejected, retry with the next one
    _S.CHECKING: frozenset({_S.MIGRATING, _S.PENDING, _S.FAILED, _S.ABORTED}),
    # migrating -> checking: transient failure, try again (maybe another destination)
    _S.MIGRATING: frozenset({_S.VERIFYING, _S.CHECKING, _S.FAILED, _S.ABORTED}),
    # verifying -> checking: VM found on the source after all, move it again
    _S.VERIFYING: frozenset({_S.DONE, _S.CHECKING, _S.FAILED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.ABORTED: frozenset(),
}


def check_transition(src: IntentState, dst: IntentState) -> None:
    """Raise ValueError when `src -> dst` is not in the state table."""
    if dst not in INTENT_TRANSITIONS[src]:
        raise ValueError(f"illegal intent transition {src.value} -> {dst.value}")


@dataclass(frozen=True)
class Move:
    """One planned VM move: the planner's output, the controller's intent input."""

    vm: str
    src: str
    dst: str
    wave: int = 0
    predicted_s: float = 0.0
    predicted_downtime_ms: float = 0.0
    kind: IntentKind = IntentKind.MIGRATE
    reason: str = ""
    proof: str = ""  # restarts: the id of the source's fence proof that allows it (model/proof.py)
