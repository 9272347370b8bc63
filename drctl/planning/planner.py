"""Pure planning: an incident (evacuate hosts, or rebalance) -> an ordered plan of moves.

Placement picks each destination; the planner decides the order (priority first, then
larger VMs, which pack worse when left for last), reserves capacity in one Ledger as it
goes, predicts each move's duration with the pre-copy model of docs/planning.md, and groups the
moves into waves that respect the concurrency limits and the shared bandwidth budget.
Waves run one after another, so the predicted makespan is the sum of the longest move of
each wave: a barrier schedule, pessimistic but easy to execute and to explain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Iterator, Mapping

from drctl.planning import placement
from drctl.model.errors import ConfigError
from drctl.model.cluster import VM, HostState, IntentKind, Limits, Move, PlacementRules, Snapshot

# Used when a VM's dirty rate has not been observed: a mostly idle server guest.
ASSUMED_DIRTY_RATE_MIBS = 4.0
# A restart (dead source) is define + boot; 128 MiB TCG guests boot in 4-7 s (docs/planning.md).
RESTART_S = 10.0

VM_ORDERS = ("priority", "size", "name")


@dataclass(frozen=True)
class Unplaced:
    vm: str
    src: str
    reasons: Mapping[str, tuple[str, ...]]  # every host in the snapshot -> why not there


@dataclass(frozen=True)
class Plan:
    moves: tuple[Move, ...]
    unplaced: tuple[Unplaced, ...]
    waves: int
    predicted_makespan_s: float
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "moves": [
                {
                    "vm": m.vm,
                    "src": m.src,
                    "dst": m.dst,
                    "wave": m.wave,
                    "kind": m.kind.value,
                    "predicted_s": round(m.predicted_s, 2),
                    "predicted_downtime_ms": round(m.predicted_downtime_ms, 1),
                    "reason": m.reason,
                }
                for m in self.moves
            ],
            "unplaced": [
                {"vm": u.vm, "src": u.src, "reasons": {h: list(r) for h, r in sorted(u.reasons.items())}}
                for u in self.unplaced
            ],
            "summary": self.summary,
        }


# ------------------------------------------------------------------ pre-copy model


def predict_precopy(
    memory_mib: float, bandwidth_mibs: float, dirty_rate_mibs: float, max_downtime_ms: float
) -> tuple[float, float, int]:
    """(seconds, downtime_ms, iterations) of a pre-copy live migration (docs/planning.md).

    Round i sends M·λⁱ with λ = R/B; the migration stops after round n, the first whose
    remainder fits in the downtime limit: downtime = (M/B)·λⁿ, total = (M/B)(1−λⁿ⁺¹)/(1−λ).
    When λ ≥ 1 it never converges: returns (inf, inf, 0) and the runner must escalate.
    """
    if bandwidth_mibs <= 0:
        raise ValueError("bandwidth must be > 0")
    first_pass = memory_mib / bandwidth_mibs
    limit_s = max_downtime_ms / 1000.0
    lam = dirty_rate_mibs / bandwidth_mibs
    if first_pass <= limit_s:
        return first_pass, first_pass * 1000.0, 1  # everything fits in one stop-and-copy
    if lam >= 1.0:
        return math.inf, math.inf, 0
    if lam <= 0.0:
        return first_pass, 0.0, 2  # nothing is dirtied: the final round is empty
    n = max(1, math.ceil(math.log(limit_s / first_pass) / math.log(lam)))
    total = first_pass * (1.0 - lam ** (n + 1)) / (1.0 - lam)
    return total, first_pass * lam**n * 1000.0, n + 1


def _predict_move(vm: VM, kind: IntentKind, limits: Limits) -> tuple[float, float, str]:
    """(seconds, downtime_ms, note) for one move at the per-migration bandwidth."""
    if kind is IntentKind.RESTART:
        return RESTART_S, RESTART_S * 1000.0, "restart: source host is down"
    bandwidth = min(limits.bandwidth_mibs, limits.bandwidth_total_mibs)
    disk_s = vm.local_disk_gib * 1024.0 / bandwidth  # storage copy: whole virtual size
    dirty = ASSUMED_DIRTY_RATE_MIBS if vm.dirty_rate_mibs is None else vm.dirty_rate_mibs
    seconds, downtime, _ = predict_precopy(vm.memory_mib, bandwidth, dirty, limits.max_downtime_ms)
    if math.isinf(seconds):
        # Estimate one pre-copy pass, then post-copy sending each page once more.
        note = f"escalate: dirty {dirty:g} >= bandwidth {bandwidth:g} MiB/s"
        return disk_s + 2.0 * vm.memory_mib / bandwidth, float(limits.max_downtime_ms), note
    return disk_s + seconds, downtime, ""


# ------------------------------------------------------------------ waves


def _schedule_waves(
    moves: list[tuple[str, str, IntentKind, float]], snap: Snapshot, limits: Limits
) -> tuple[list[int], int, float]:
    """Assign waves greedily in plan order to (src, dst, kind, seconds) moves;
    returns (wave of each move, number of waves, makespan)."""
    bandwidth = min(limits.bandwidth_mibs, limits.bandwidth_total_mibs)
    slots = max(1, min(limits.max_concurrent, int(limits.bandwidth_total_mibs // bandwidth)))
    pending = list(range(len(moves)))
    wave_of = [0] * len(moves)
    waves, makespan = 0, 0.0
    while pending:
        waves += 1
        per_src: dict[str, int] = {}
        per_dst: dict[str, int] = {}
        taken, skipped, longest = 0, [], 0.0
        i = 0
        while i < len(pending) and taken < slots:
            src, dst, kind, seconds = moves[pending[i]]
            dst_cap = min(limits.max_per_destination, snap.hosts[dst].incoming_limit)
            # a restart reads nothing from its (dead) source, so the source limit does not apply
            src_ok = kind is IntentKind.RESTART or per_src.get(src, 0) < limits.max_per_source
            if src_ok and per_dst.get(dst, 0) < dst_cap:
                per_src[src] = per_src.get(src, 0) + 1
                per_dst[dst] = per_dst.get(dst, 0) + 1
                wave_of[pending[i]] = waves
                longest = max(longest, seconds)
                taken += 1
            else:
                skipped.append(pending[i])
            i += 1
        pending = skipped + pending[i:]  # slice copies run in C: cheap even for 10k moves
        makespan += longest
    return wave_of, waves, makespan


# ------------------------------------------------------------------ evacuation


def _order(vms: Iterable[VM], vm_order: str) -> list[VM]:
    keys = {
        "priority": lambda v: (-v.priority, -v.memory_mib, v.name),
        "size": lambda v: (-v.memory_mib, -v.priority, v.name),
        "name": lambda v: v.name,
    }
    if vm_order not in keys:
        raise ConfigError(f"vm_order: must be one of {', '.join(VM_ORDERS)}, got {vm_order!r}")
    return sorted(vms, key=keys[vm_order])


def _free_spread_pct(snap: Snapshot, ledger: placement.Ledger, hosts: Iterable[str]) -> float:
    """max - min of free memory (% of each host's memory) after the plan, over `hosts`."""
    reserved, released = ledger.reserved_mib, ledger.released_mib
    free = []
    for name in hosts:
        h = snap.hosts[name]
        free.append(100.0 * (h.free_mib - reserved.get(name, 0) + released.get(name, 0)) / h.memory_mib)
    return round(max(free) - min(free), 2) if free else 0.0


def _receivers(snap: Snapshot, exclude: frozenset[str]) -> list[str]:
    return [n for n, h in snap.hosts.items() if n not in exclude and h.state is HostState.HEALTHY and not h.maintenance]


def _every_host(snap: Snapshot, reason: str) -> dict[str, tuple[str, ...]]:
    return {h: (reason,) for h in snap.hosts}


class _LazyReasons(Mapping[str, tuple[str, ...]]):
    """Why one unplaced VM fits no host, per host, worked out on first use.

    Explaining costs a check of every host, so it is only paid when someone reads it (the
    JSON output, an operator, a test), not by a controller that only counts what failed.
    It reads the plan's final ledger, which nothing changes once the plan is made: memory
    and incoming slots only shrink as a plan grows, so a host short of them when the VM was
    decided still is. Group positions do not shrink (a later move can take the last member
    of an anti-affinity group out of a host or rack), so `groups` is the view of when the
    VM was decided: every host refused then keeps a reason.
    """

    def __init__(
        self,
        vm: VM,
        snap: Snapshot,
        rules: PlacementRules,
        ledger: placement.Ledger,
        exclude: frozenset[str],
        groups: placement.GroupView,
    ) -> None:
        self._args: (
            tuple[VM, Snapshot, PlacementRules, placement.Ledger, frozenset[str], placement.GroupView] | None
        ) = (vm, snap, rules, ledger, exclude, groups)
        self._reasons: dict[str, tuple[str, ...]] = {}

    def _get(self) -> dict[str, tuple[str, ...]]:
        if self._args is not None:
            vm = self._args[0]
            self._reasons = {c.host: c.reasons for c in placement.evaluate(*self._args)}
            self._reasons[vm.host] = ("current host", "evacuating")
            self._args = None  # let the ledger go
        return self._reasons

    def __getitem__(self, host: str) -> tuple[str, ...]:
        return self._get()[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


def plan_evacuation(
    snap: Snapshot,
    hosts: Iterable[str],
    rules: PlacementRules,
    limits: Limits,
    vm_order: str = "priority",
    restart_from: Collection[str] | None = None,
) -> Plan:
    """Move every VM off `hosts`: live migration from live hosts, restart from dead ones.

    `restart_from` names the hosts whose VMs may be restarted (the controller passes the
    fenced host of a recovery, or none); None plans a restart from every host that is not
    alive, for what-if plans (`drctl plan`, replay). A VM on a dead host outside it is
    unplaced: it waits for the recovery path. One on an unreachable host is live-migrated
    (its libvirtd may still answer; if not, the migration fails and nothing runs twice)."""
    _check_limits(limits)
    evacuating = frozenset(hosts)
    if unknown := sorted(evacuating - snap.hosts.keys()):
        raise ConfigError(f"evacuate: unknown host {unknown[0]!r}")
    ledger = placement.Ledger(snap)
    placed: list[tuple[VM, str, IntentKind]] = []
    unplaced: dict[str, Mapping[str, tuple[str, ...]]] = {}
    failed: list[tuple[VM, placement.GroupView]] = []  # with where its groups were when it failed
    vms = _order((v for v in snap.vms.values() if v.host in evacuating), vm_order)
    for vm in vms:
        state = snap.hosts[vm.host].state
        restart = not state.alive and (vm.host in restart_from if restart_from is not None else True)
        kind = IntentKind.RESTART if restart else IntentKind.MIGRATE
        if kind is IntentKind.MIGRATE and state is HostState.DEAD:
            unplaced[vm.name] = _every_host(snap, f"cannot live-migrate from {vm.host}, which is dead, and it is "
                                                  "not fenced: waits for the recovery path")
        elif kind is IntentKind.MIGRATE and not vm.migratable:
            unplaced[vm.name] = _every_host(snap, "vm is not migratable")
        elif kind is IntentKind.RESTART and vm.local_disk_gib > 0:
            unplaced[vm.name] = _every_host(snap, f"local disks are on {vm.host}, which is down")
        elif (best := placement.choose(vm, snap, rules, ledger, evacuating)) is None:
            failed.append((vm, placement.GroupView.of(vm, snap, rules, ledger)))
        else:
            ledger.reserve(vm, best.host)
            placed.append((vm, best.host, kind))
    for vm, groups in failed:
        unplaced[vm.name] = _LazyReasons(vm, snap, rules, ledger, evacuating, groups)
    before = _free_spread_pct(snap, placement.Ledger(snap), _receivers(snap, evacuating))
    plan = _finish(snap, limits, placed, [(v, unplaced[v.name]) for v in vms if v.name in unplaced])
    plan.summary.update(
        kind="evacuate",
        hosts=sorted(evacuating),
        vms=len(vms),
        free_memory_spread_pct={"before": before, "after": _free_spread_pct(snap, ledger, _receivers(snap, evacuating))},
    )
    return plan


def _check_limits(limits: Limits) -> None:
    for name in ("max_concurrent", "max_per_source", "max_per_destination", "bandwidth_mibs", "bandwidth_total_mibs"):
        if getattr(limits, name) <= 0:
            raise ConfigError(f"limits.{name}: must be > 0, got {getattr(limits, name)}")


def _finish(
    snap: Snapshot,
    limits: Limits,
    placed: list[tuple[VM, str, IntentKind]],
    unplaced: list[tuple[VM, Mapping[str, tuple[str, ...]]]],
) -> Plan:
    predicted = [(vm, dst, kind, *_predict_move(vm, kind, limits)) for vm, dst, kind in placed]
    wave_of, waves, makespan = _schedule_waves(
        [(vm.host, dst, kind, seconds) for vm, dst, kind, seconds, _, _ in predicted], snap, limits
    )
    moves = [
        Move(vm.name, vm.host, dst, wave, seconds, downtime, kind, note)
        for (vm, dst, kind, seconds, downtime, note), wave in zip(predicted, wave_of)
    ]
    migrated_mib = sum(vm.memory_mib for vm, _, kind in placed if kind is IntentKind.MIGRATE)
    summary = {
        "placed": len(moves),
        "unplaced": len(unplaced),
        "waves": waves,
        "predicted_makespan_s": round(makespan, 2),
        # no schedule can beat moving all the memory through the shared budget
        "bandwidth_floor_s": round(migrated_mib / limits.bandwidth_total_mibs, 2),
        "restarts": sum(1 for m in moves if m.kind is IntentKind.RESTART),
        "non_converging": sum(1 for m in moves if m.reason.startswith("escalate:")),
    }
    return Plan(
        moves=tuple(moves),
        unplaced=tuple(Unplaced(vm.name, vm.host, reasons) for vm, reasons in unplaced),
        waves=waves,
        predicted_makespan_s=makespan,
        summary=summary,
    )


# ------------------------------------------------------------------ rebalance

# Hot hosts tried per move: bounds the work when the hottest hosts hold nothing movable.
_HOT_HOSTS_TRIED = 20


def _used_pct(snap: Snapshot, ledger: placement.Ledger, name: str) -> float:
    host = snap.hosts[name]
    free = ledger.free_mib(host) + ledger.released_mib.get(name, 0)
    return 100.0 * (host.memory_mib - free) / host.memory_mib


def plan_rebalance(
    snap: Snapshot,
    rules: PlacementRules,
    limits: Limits,
    target_spread_pct: float = 10.0,
    max_moves: int = 10,
) -> Plan:
    """Move VMs from the most used hosts to cooler ones until the spread of memory use
    (max - min, in % of each host's memory) is within target, at most `max_moves` moves.
    A move is taken only if the pair ends cooler than the hot host was, and every move
    goes through `placement.choose`, so no rule is broken to balance. Spare hosts are
    neither balanced nor filled: they are capacity kept back for failures."""
    _check_limits(limits)
    pool = sorted(
        n
        for n in _receivers(snap, frozenset())
        if not (rules.spare_hosts is not None and rules.spare_hosts.matches(snap.hosts[n]))
    )
    pool_set = set(pool)
    ledger = placement.Ledger(snap)
    by_host: dict[str, list[VM]] = {}
    for vm in sorted(snap.vms.values(), key=lambda v: (-v.memory_mib, v.name)):
        if vm.migratable and vm.host in pool_set:
            by_host.setdefault(vm.host, []).append(vm)
    placed: list[tuple[VM, str, IntentKind]] = []
    moved: set[str] = set()

    def spread() -> float:
        used = [_used_pct(snap, ledger, n) for n in pool]
        return max(used) - min(used) if used else 0.0

    before = spread()
    while len(placed) < max_moves and spread() > target_spread_pct:
        if not _one_rebalance_move(snap, rules, ledger, pool, pool_set, by_host, moved, placed):
            break
    plan = _finish(snap, limits, placed, [])
    plan.summary.update(
        kind="rebalance",
        target_spread_pct=target_spread_pct,
        used_memory_spread_pct={"before": round(before, 2), "after": round(spread(), 2)},
    )
    return plan


def _one_rebalance_move(
    snap: Snapshot,
    rules: PlacementRules,
    ledger: placement.Ledger,
    pool: list[str],
    pool_set: set[str],
    by_host: Mapping[str, list[VM]],
    moved: set[str],
    placed: list[tuple[VM, str, IntentKind]],
) -> bool:
    used = {n: _used_pct(snap, ledger, n) for n in pool}
    coolest = min(used.values())
    for hot in sorted(pool, key=lambda n: (-used[n], n))[:_HOT_HOSTS_TRIED]:
        hot_used = used[hot]
        for vm in by_host.get(hot, ()):
            if vm.name in moved:
                continue
            best = placement.choose(vm, snap, rules, ledger)
            if best is None or best.host not in pool_set:
                continue
            dst = snap.hosts[best.host]
            dst_after = used[dst.name] + 100.0 * vm.memory_mib / dst.memory_mib
            hot_after = hot_used - 100.0 * vm.memory_mib / snap.hosts[hot].memory_mib
            if dst_after >= hot_used or hot_after < coolest:
                continue  # would only move the hot spot, or open a new cold one
            ledger.reserve(vm, dst.name)
            placed.append((vm, dst.name, IntentKind.MIGRATE))
            moved.add(vm.name)
            return True
    return False
