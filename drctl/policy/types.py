"""The compiled policy: frozen, typed, and queried by the controller on every tick.

Compilation (drctl/policy/compiler.py) does all validation once; nothing here parses or
fails. The controller asks `Policy.rule_for(...)` which rule (if any) acts on a host, then
`Rule.action_for(vm)` what to do with each of its VMs, in `Rule.order_vms(...)` order.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable

from drctl.model.cluster import (
    DEFAULT_ESCALATION,
    EscalationStep,
    Host,
    HostSelector,
    HostState,
    IntentKind,
    Limits,
    PlacementRules,
    Snapshot,
    VM,
    VMSelector,
)
from drctl.policy.units import Window


class Action(str, Enum):
    LIVE_MIGRATE = "live-migrate"
    LIVE_MIGRATE_WITH_STORAGE = "live-migrate-with-storage"  # VMs on host-local disks
    RESTART = "restart"  # define + start elsewhere; the only way off a dead host
    LEAVE_ALONE = "leave-alone"  # pinned VMs: never moved by this rule

    @property
    def intent_kind(self) -> IntentKind | None:
        """The intent this action becomes; None for leave-alone."""
        if self is Action.LEAVE_ALONE:
            return None
        return IntentKind.RESTART if self is Action.RESTART else IntentKind.MIGRATE

    @property
    def live(self) -> bool:
        return self in (Action.LIVE_MIGRATE, Action.LIVE_MIGRATE_WITH_STORAGE)


class TriggerKind(str, Enum):
    STATE = "state"  # a host held in one of `states` for at least `hold_s`
    MAINTENANCE = "maintenance"  # an operator asked to drain the host
    IMBALANCE = "imbalance"  # cluster memory spread above `threshold_pct` (rebalance)


class Order(str, Enum):
    PRIORITY = "priority"  # higher VM.priority first
    SIZE_ASC = "size-asc"  # small VMs first: most VMs safe soonest
    SIZE_DESC = "size-desc"  # large VMs first: longest moves start earliest


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    states: frozenset[HostState] = frozenset()
    hold_s: float = 0.0
    threshold_pct: float = 0.0
    windows: tuple[Window, ...] = ()  # empty = any time

    def in_window(self, now: float) -> bool:
        return not self.windows or any(w.contains(now) for w in self.windows)

    def holds_for(self, host: Host, state: HostState, held_s: float) -> bool:
        if self.kind is TriggerKind.STATE:
            return state in self.states and held_s >= self.hold_s
        if self.kind is TriggerKind.MAINTENANCE:
            return host.maintenance
        return False  # imbalance is a cluster condition, see Policy.rebalance_rule

    def describe(self) -> str:
        if self.kind is TriggerKind.STATE:
            from drctl.policy.units import format_duration

            states = "|".join(sorted(s.value for s in self.states))
            text = f"host {states} for {format_duration(self.hold_s)}"
        elif self.kind is TriggerKind.MAINTENANCE:
            text = "maintenance requested"
        else:
            text = f"imbalance above {self.threshold_pct:g}%"
        if self.windows:
            text += " during " + ", ".join(w.text for w in self.windows)
        return text


@dataclass(frozen=True)
class ActionSpec:
    """What happens to one VM: the action, and what to do if it fails."""

    action: Action
    fallback: Action | None = None


@dataclass(frozen=True)
class Override:
    """Inside a rule, VMs matching `vms` get `spec` instead of the rule's action."""

    vms: VMSelector
    spec: ActionSpec


_LEAVE = ActionSpec(Action.LEAVE_ALONE)


@dataclass(frozen=True)
class Rule:
    name: str
    trigger: Trigger
    hosts: HostSelector
    vms: VMSelector
    spec: ActionSpec
    order: tuple[Order, ...] = (Order.PRIORITY,)
    overrides: tuple[Override, ...] = ()
    index: int = 0  # position in the file: rules[index]

    @property
    def action(self) -> Action:
        return self.spec.action

    @property
    def fallback(self) -> Action | None:
        return self.spec.fallback

    def action_for(self, vm: VM) -> ActionSpec:
        """First matching override, else the rule's own action; VMs outside `vms` stay."""
        for o in self.overrides:
            if o.vms.matches(vm):
                return o.spec
        return self.spec if self.vms.matches(vm) else _LEAVE

    def order_vms(self, vms: Iterable[VM]) -> list[VM]:
        """VMs in the order this rule moves them; name breaks ties so plans are stable."""
        return sorted(vms, key=lambda v: (*(_order_key(o, v) for o in self.order), v.name))


def _order_key(order: Order, vm: VM) -> float:
    if order is Order.PRIORITY:
        return -vm.priority
    return vm.memory_mib if order is Order.SIZE_ASC else -vm.memory_mib


@dataclass(frozen=True)
class Group:
    """VMs matching `vms` belong to group `name` (affinity or anti-affinity)."""

    name: str
    vms: VMSelector


@dataclass(frozen=True)
class Escalation:
    """What the runner tries, in order, when a live migration does not converge."""

    steps: tuple[EscalationStep, ...] = DEFAULT_ESCALATION
    stall_s: float = 30.0  # no progress in remaining bytes for this long = stalled
    min_progress_pct: float = 1.0  # less progress than this per stall_s counts as none
    max_downtime_ms: int = 2000  # ceiling for raise-downtime


@dataclass(frozen=True)
class BlastRadius:
    """Beyond this many hosts (or % of VMs) acted on per window, freeze and ask a human."""

    max_hosts: int | None = 1
    max_vm_pct: float | None = None
    window_s: float = 600.0

    def exceeded(self, hosts_acted: int, vms_acted: int, vms_total: int) -> bool:
        if self.max_hosts is not None and hosts_acted > self.max_hosts:
            return True
        if self.max_vm_pct is None or vms_total <= 0:
            return False
        return 100.0 * vms_acted / vms_total > self.max_vm_pct


class EvidenceKind(str, Enum):
    LEASE_EXPIRED = "lease-expired"
    WITNESSES = "witnesses"
    FENCE = "fence"


@dataclass(frozen=True)
class Evidence:
    """What must be proven before a dead host's VMs are restarted elsewhere."""

    # Fencing is required unless a policy waives it in so many words (`fence: waived`): lease
    # and witnesses alone cannot tell a dead host from one cut off from etcd and its peers that
    # still runs its VMs (docs/controller.md, "The restart gate").
    required: frozenset[EvidenceKind] = frozenset(
        {EvidenceKind.LEASE_EXPIRED, EvidenceKind.WITNESSES, EvidenceKind.FENCE})
    witness_quorum: int | None = None  # None = a majority of each host's witnesses (health.grading.quorum_for)
    # name of an agent in the controller's configuration; None = the controller's only one
    fence_agent: str | None = None
    fence_waived: bool = False  # the policy says `fence: waived`: restarts on lease + witnesses alone

    def warnings(self) -> list[str]:
        """What `drctl policy check` warns about (the policy is valid)."""
        if self.fence_waived:
            return ["waives fencing (evidence.fence: waived): a dead host's VMs are restarted on "
                    f"{' + '.join(sorted(k.value for k in self.required))} alone; a host cut off from etcd "
                    "and its witnesses that still runs them would run them twice"]
        if EvidenceKind.FENCE in self.required and self.fence_agent is None:
            return ["requires a fence but names no fence_agent: the controller fences with its only "
                    "configured agent, and with none (or several) restarts nothing: a human must decide"]
        return []


@dataclass(frozen=True)
class Rebalance:
    target_spread_pct: float = 10.0  # stop once memory use spread is within this
    max_moves: int = 10  # per run
    windows: tuple[Window, ...] = ()  # from the imbalance rule; empty = any time


@dataclass(frozen=True)
class DroppedRule:
    """A rule the compiler dropped because it conflicts with another; kept for `check`."""

    path: str  # e.g. "placement.groups.affinity[1]"
    line: int
    column: int
    why: str


@dataclass(frozen=True)
class Policy:
    name: str
    version: int
    source: str
    description: str = ""
    rules: PlacementRules = field(default_factory=PlacementRules)
    limits: Limits = field(default_factory=Limits)
    actions: tuple[Rule, ...] = ()  # in file order; the first whose trigger holds wins
    affinity_groups: tuple[Group, ...] = ()
    anti_affinity_groups: tuple[Group, ...] = ()
    escalation: Escalation = field(default_factory=Escalation)
    blast_radius: BlastRadius = field(default_factory=BlastRadius)
    evidence: Evidence = field(default_factory=Evidence)
    rebalance: Rebalance = field(default_factory=Rebalance)
    dry_run: bool = False
    dropped: tuple[DroppedRule, ...] = ()

    @property
    def restarts(self) -> bool:
        """Whether any rule (or override) may restart a VM: only then does evidence matter."""
        specs = [s for r in self.actions for s in (r.spec, *(o.spec for o in r.overrides))]
        return any(Action.RESTART in (s.action, s.fallback) for s in specs)

    def warnings(self) -> list[str]:
        """What `drctl policy check` warns about in a valid policy."""
        return self.evidence.warnings() if self.restarts else []

    @property
    def triggers(self) -> tuple[Rule, ...]:
        """Same rules as `actions`: a rule is a trigger with its action."""
        return self.actions

    def rule_for(self, host: Host, state: HostState, held_s: float, now: float) -> Rule | None:
        """The first rule selecting `host` whose trigger holds now (within its windows)."""
        for rule in self.actions:
            if (
                rule.hosts.matches(host)
                and rule.trigger.holds_for(host, state, held_s)
                and rule.trigger.in_window(now)
            ):
                return rule
        return None

    def rebalance_rule(self, spread_pct: float, now: float) -> Rule | None:
        """The first imbalance rule whose threshold is exceeded, within its windows."""
        for rule in self.actions:
            t = rule.trigger
            if t.kind is TriggerKind.IMBALANCE and spread_pct > t.threshold_pct and t.in_window(now):
                return rule
        return None

    # Groups come from VM selectors in the policy, so they are applied to a snapshot
    # rather than baked into the VMs: the planner and placement keep reading
    # VM.affinity_group / VM.anti_affinity_group and need not know about policies.
    def affinity_group(self, vm: VM) -> str:
        return vm.affinity_group or _first_group(self.affinity_groups, vm)

    def anti_affinity_group(self, vm: VM) -> str:
        return vm.anti_affinity_group or _first_group(self.anti_affinity_groups, vm)

    def apply_groups(self, snap: Snapshot) -> Snapshot:
        """The snapshot with policy groups filled in where a VM has none of its own."""
        vms = {
            name: replace(vm, affinity_group=self.affinity_group(vm),
                          anti_affinity_group=self.anti_affinity_group(vm))
            for name, vm in snap.vms.items()
        }
        return replace(snap, vms=vms)


def _first_group(groups: tuple[Group, ...], vm: VM) -> str:
    return next((g.name for g in groups if g.vms.matches(vm)), "")
