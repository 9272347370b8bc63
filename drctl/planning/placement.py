"""Pure placement: where may one VM go, and why not elsewhere.

`evaluate` explains: every host except the VM's own is either eligible with a score or
rejected with short, specific reasons. `choose` decides, and must be fast on clusters of
10,000 hosts, so it never scans every host: hosts are grouped into *classes* of equal
static attributes (CPU, networks, pools, state, labels the rules look at), each class keeps
its hosts sorted by load, and a VM only walks the classes its static needs allow, from the
best-scoring host down, until one passes the dynamic checks (memory, anti-affinity).
Both paths share the same check and score functions, so `choose` is always the first
eligible candidate of `evaluate`.

Rules (see docs/planning.md, "Placement rules"):
- memory: free memory minus what this plan already reserved must cover the VM and leave
  `memory_headroom_pct` of the host's memory free. The memory a VM leaves behind on its
  source is not credited until the move is done (conservative during a plan).
- CPU capacity is not a hard limit (hosts overcommit vCPUs); it only lowers the score.
- required CPU model must equal the host's (`qemu64`, the baseline, runs anywhere); required
  features and machine type must be offered; every network must be present; the host's
  hypervisor version must not be older than the source's (when both are known).
- disks: a shared disk needs its pool on the destination; a local disk needs a pool of that
  name to create the image in (libvirt's storage copy fails with "Storage pool not found"
  otherwise); a local disk with no pool named gets a `dir` pool from the runner (docs/runner.md).
- anti-affinity: no other VM of the group on the host; with
  `spread_anti_affinity_across_domains`, none in the host's failure domain either (a host
  without the failure-domain label is a domain of its own).
- affinity groups and preferred host affinity are preferences (score), required host
  affinity and `SpareMode.ONLY` are rules.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Iterable, Mapping

from drctl.model.cluster import VM, Host, HostState, PlacementRules, Snapshot, SpareMode, StorageKind

# Score bands: a tier always beats anything a lower tier can add, so the load term (which
# lies in [-1.5, 1.5]) only orders hosts within one band.
_SPARE_BONUS = 100.0
_PREFERRED_HOST_BONUS = 10.0
_AFFINITY_GROUP_BONUS = 5.0
_CPU_WEIGHT = 0.5
_MAX_LOAD_SCORE = 1.0 + _CPU_WEIGHT


@dataclass(frozen=True)
class Candidate:
    host: str
    eligible: bool
    score: float  # higher is better; 0.0 when rejected
    reasons: tuple[str, ...]  # why rejected; empty when eligible


# ------------------------------------------------------------------ ledger


class Ledger:
    """Capacity and group membership already claimed by moves planned so far.

    One ledger per plan, bound to one snapshot. It is the only mutable object in placement:
    every `reserve` is seen by later `choose` calls, so two moves never fill the same gap.
    `limit_incoming=True` makes `host.incoming_limit` a placement rule (the controller
    placing moves for immediate execution, with `in_flight` migrations already running);
    the planner leaves it off and spreads incoming moves over waves instead.
    """

    def __init__(
        self,
        snap: Snapshot,
        limit_incoming: bool = False,
        in_flight: Mapping[str, int] | None = None,
    ) -> None:
        self.snap = snap
        self.limit_incoming = limit_incoming
        self.reserved_mib: dict[str, int] = {}
        self.released_mib: dict[str, int] = {}
        self.reserved_vcpus: dict[str, int] = {}
        self.incoming: dict[str, int] = dict(in_flight or {})
        self.location: dict[str, str] = {}  # vm -> destination planned for it
        self._anti: dict[str, dict[str, int]] | None = None  # group -> host -> members
        self._affinity: dict[str, dict[str, int]] | None = None
        self._indexes: dict[tuple[int, frozenset[str]], tuple[PlacementRules, _Index]] = {}

    def host_of(self, vm: VM) -> str:
        return self.location.get(vm.name, vm.host)

    def free_mib(self, host: Host) -> int:
        """Free memory for placement: reservations count, releases do not (yet)."""
        return host.free_mib - self.reserved_mib.get(host.name, 0)

    def _groups(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
        if self._anti is None or self._affinity is None:
            self._anti, self._affinity = {}, {}
            # one pass over every VM: keep the loop body minimal, it runs 200,000 times
            for vm in self.snap.vms.values():
                if vm.anti_affinity_group:
                    hosts = self._anti.setdefault(vm.anti_affinity_group, {})
                    hosts[vm.host] = hosts.get(vm.host, 0) + 1
                if vm.affinity_group:
                    hosts = self._affinity.setdefault(vm.affinity_group, {})
                    hosts[vm.host] = hosts.get(vm.host, 0) + 1
        return self._anti, self._affinity

    def anti_affinity_hosts(self, group: str) -> Mapping[str, int]:
        return self._groups()[0].get(group, {})

    def affinity_hosts(self, group: str) -> Mapping[str, int]:
        return self._groups()[1].get(group, {})

    def reserve(self, vm: VM, dst: str) -> None:
        """Claim `dst` for `vm`: its memory, vCPUs, group membership and an incoming slot."""
        src = self.host_of(vm)
        self.reserved_mib[dst] = self.reserved_mib.get(dst, 0) + vm.memory_mib
        self.released_mib[src] = self.released_mib.get(src, 0) + vm.memory_mib
        self.reserved_vcpus[dst] = self.reserved_vcpus.get(dst, 0) + vm.vcpus
        self.incoming[dst] = self.incoming.get(dst, 0) + 1
        self.location[vm.name] = dst
        anti, affinity = self._groups()
        for group, table in ((vm.anti_affinity_group, anti), (vm.affinity_group, affinity)):
            if group:
                hosts = table.setdefault(group, {})
                hosts[src] = hosts.get(src, 0) - 1
                if hosts[src] <= 0:
                    del hosts[src]
                hosts[dst] = hosts.get(dst, 0) + 1
        for _, index in self._indexes.values():
            index.refresh(dst)

    def index(self, snap: Snapshot, rules: PlacementRules, exclude: frozenset[str]) -> _Index:
        if snap is not self.snap:
            raise ValueError("this ledger belongs to another snapshot")
        # keyed by identity: rules hold dicts (labels) and are not hashable
        key = (id(rules), exclude)
        entry = self._indexes.get(key)
        if entry is None or entry[0] is not rules:
            entry = (rules, _Index(snap, rules, exclude, self))
            self._indexes[key] = entry
        return entry[1]


# ------------------------------------------------------------------ static needs and checks


@dataclass(frozen=True)
class _Needs:
    """What a VM requires of a host that does not change while a plan is made."""

    cpu_model: str
    cpu_features: frozenset[str]
    machine_type: str
    networks: frozenset[str]
    shared_pools: frozenset[str]
    local_pools: frozenset[str]
    host_rules: tuple[bool, ...]  # which host-affinity rules apply to this VM
    min_hypervisor: tuple[int, ...]  # QEMU/libvirt cannot migrate a guest to an older version

    @classmethod
    def of(cls, vm: VM, rules: PlacementRules, snap: Snapshot) -> _Needs:
        return cls(
            cpu_model="" if vm.cpu_model == "qemu64" else vm.cpu_model,
            cpu_features=vm.cpu_features,
            machine_type=vm.machine_type,
            networks=vm.networks,
            shared_pools=frozenset(d.pool for d in vm.disks if d.pool and d.storage is StorageKind.SHARED),
            local_pools=frozenset(d.pool for d in vm.disks if d.pool and d.storage is StorageKind.LOCAL),
            host_rules=tuple(r.vms.matches(vm) for r in rules.host_affinity),
            min_hypervisor=version_tuple(snap.hosts[vm.host].hypervisor_version),
        )


def version_tuple(version: str) -> tuple[int, ...]:
    """"9.0.0" -> (9, 0, 0); anything unparsable -> () (unknown: not compared)."""
    try:
        return tuple(int(part) for part in version.split(".")) if version else ()
    except ValueError:
        return ()


def _is_spare(host: Host, rules: PlacementRules) -> bool:
    return rules.spare_hosts is not None and rules.spare_hosts.matches(host)


def _class_key(host: Host, rules: PlacementRules, exclude: frozenset[str]) -> tuple[object, ...]:
    return (
        host.name in exclude,
        host.state,
        host.maintenance,
        host.incoming_limit <= 0,
        host.cpu_model,
        host.cpu_features,
        host.hypervisor_version,
        host.machine_types,
        host.networks,
        host.storage_pools,
        _is_spare(host, rules),
        tuple(r.hosts.matches(host) for r in rules.host_affinity),
    )


def _describe(selector_names: Iterable[str], labels: Mapping[str, str]) -> str:
    parts = list(selector_names) + [f"{k}={v}" for k, v in sorted(labels.items())]
    return " ".join(parts) or "any"


def _static_reasons(needs: _Needs, host: Host, rules: PlacementRules, exclude: frozenset[str]) -> tuple[str, ...]:
    reasons = []
    if host.name in exclude:
        reasons.append("evacuating")
    if host.state is not HostState.HEALTHY:
        reasons.append(f"state: host is {host.state.value}")
    if host.maintenance:
        reasons.append("maintenance")
    if host.incoming_limit <= 0:
        reasons.append("incoming limit 0 reached")
    if needs.cpu_model and needs.cpu_model != host.cpu_model:
        reasons.append(f"cpu: model {needs.cpu_model} required, host has {host.cpu_model}")
    if missing := needs.cpu_features - host.cpu_features:
        reasons.append(f"cpu: missing features {','.join(sorted(missing))}")
    host_version = version_tuple(host.hypervisor_version)
    if needs.min_hypervisor and host_version and host_version < needs.min_hypervisor:
        wanted = ".".join(map(str, needs.min_hypervisor))
        reasons.append(f"hypervisor: {host.hypervisor_version} older than source {wanted}")
    if needs.machine_type and needs.machine_type not in host.machine_types:
        reasons.append(f"machine-type: {needs.machine_type} not offered")
    if missing := needs.networks - host.networks:
        reasons.append(f"network: missing {','.join(sorted(missing))}")
    if missing := needs.shared_pools - host.storage_pools:
        reasons.append(f"storage: missing pool {','.join(sorted(missing))}")
    if missing := needs.local_pools - host.storage_pools:
        reasons.append(f"storage: no pool {','.join(sorted(missing))} for local disk")
    for applies, rule in zip(needs.host_rules, rules.host_affinity):
        if applies and rule.required and not rule.hosts.matches(host):
            reasons.append(f"host-affinity: requires {_describe(rule.hosts.names, rule.hosts.labels)}")
    if rules.spare_mode is SpareMode.ONLY and not _is_spare(host, rules):
        reasons.append("spare: only spare hosts allowed")
    return tuple(reasons)


def _class_bonus(needs: _Needs, host: Host, rules: PlacementRules) -> float:
    bonus = 0.0
    if _is_spare(host, rules):
        bonus += _SPARE_BONUS if rules.spare_mode is SpareMode.PREFER else -_SPARE_BONUS
        if rules.spare_mode is SpareMode.ONLY:
            bonus = 0.0
    for applies, rule in zip(needs.host_rules, rules.host_affinity):
        if applies and not rule.required and rule.hosts.matches(host):
            bonus += _PREFERRED_HOST_BONUS
    return bonus


# ------------------------------------------------------------------ dynamic checks


def _load_score(host: Host, ledger: Ledger) -> float:
    """Higher = more room. Rounded so equal-looking hosts tie exactly (name breaks ties)."""
    mem = ledger.free_mib(host) / host.memory_mib
    cpu = (host.cpus - host.cpu_used - ledger.reserved_vcpus.get(host.name, 0)) / host.cpus
    return round(max(-1.0, min(1.0, mem)) + _CPU_WEIGHT * max(-1.0, min(1.0, cpu)), 9)


def _available_mib(host: Host, ledger: Ledger, rules: PlacementRules) -> float:
    return ledger.free_mib(host) - host.memory_mib * rules.memory_headroom_pct / 100.0


@dataclass(frozen=True)
class GroupView:
    """Where a VM's groups already are, computed once per VM (not once per host).

    Unlike memory and incoming slots, which a growing plan only uses up, group positions
    move: a reservation takes the member off its (evacuated) source. Whoever explains a
    decision later keeps the view of when it was made and passes it to `evaluate`.
    """

    anti_hosts: frozenset[str]  # hosts holding another member of its anti-affinity group
    anti_domains: frozenset[str]
    affinity_hosts: frozenset[str]

    @classmethod
    def of(cls, vm: VM, snap: Snapshot, rules: PlacementRules, ledger: Ledger) -> GroupView:
        if not vm.anti_affinity_group and not vm.affinity_group:
            return _NO_GROUPS  # most VMs: skip the work below
        here = ledger.host_of(vm)

        def others(table: Mapping[str, int]) -> frozenset[str]:
            return frozenset(h for h, n in table.items() if n - (h == here) > 0)

        anti = others(ledger.anti_affinity_hosts(vm.anti_affinity_group)) if vm.anti_affinity_group else frozenset()
        domains: frozenset[str] = frozenset()
        if rules.spread_anti_affinity_across_domains:
            label = rules.failure_domain_label
            domains = frozenset(d for h in anti if (d := snap.hosts[h].labels.get(label)) is not None)
        affinity = others(ledger.affinity_hosts(vm.affinity_group)) if vm.affinity_group else frozenset()
        return cls(anti, domains, affinity)


_NO_GROUPS = GroupView(frozenset(), frozenset(), frozenset())


def _dynamic_checks(vm: VM, host: Host, rules: PlacementRules, ledger: Ledger, groups: GroupView) -> list[bool]:
    """One flag per dynamic rule, True = violated; cheap enough for `choose`'s inner loop."""
    domain = host.labels.get(rules.failure_domain_label)
    return [
        _available_mib(host, ledger, rules) < vm.memory_mib,
        host.name in groups.anti_hosts,
        domain is not None and domain in groups.anti_domains,
        ledger.limit_incoming and ledger.incoming.get(host.name, 0) >= host.incoming_limit,
    ]


def _dynamic_reasons(vm: VM, host: Host, rules: PlacementRules, ledger: Ledger, groups: GroupView) -> list[str]:
    memory, anti, domain, incoming = _dynamic_checks(vm, host, rules, ledger, groups)
    reasons = []
    if memory:
        reasons.append(
            f"memory: needs {vm.memory_mib} MiB + {rules.memory_headroom_pct:g}% headroom, "
            f"{ledger.free_mib(host)} MiB free"
        )
    if anti:
        reasons.append(f"anti-affinity: group {vm.anti_affinity_group} already on {host.name}")
    if domain:
        label = rules.failure_domain_label
        reasons.append(f"failure-domain: group {vm.anti_affinity_group} already in {label} {host.labels[label]}")
    if incoming:
        reasons.append(f"incoming limit {host.incoming_limit} reached")
    return reasons


# ------------------------------------------------------------------ index


class _HostClass:
    """Hosts with equal static attributes, sorted best-first by load score."""

    def __init__(self, representative: Host) -> None:
        self.representative = representative
        self.by_score: list[tuple[float, str]] = []  # (-load score, name)
        self.by_room: list[tuple[float, str]] = []  # (available MiB, name); last = most room


class _Index:
    """Static classes of hosts for one (snapshot, rules, exclude), kept current by the ledger."""

    def __init__(self, snap: Snapshot, rules: PlacementRules, exclude: frozenset[str], ledger: Ledger) -> None:
        self.snap, self.rules, self.exclude, self.ledger = snap, rules, exclude, ledger
        self.classes: dict[tuple[object, ...], _HostClass] = {}
        self.class_of: dict[str, _HostClass] = {}
        self._keys: dict[str, tuple[tuple[float, str], tuple[float, str]]] = {}
        self._usable: dict[_Needs, list[tuple[float, _HostClass]]] = {}
        self._static: dict[tuple[_Needs, int], tuple[str, ...]] = {}
        for name in sorted(snap.hosts):
            host = snap.hosts[name]
            cls = self.classes.setdefault(_class_key(host, rules, exclude), _HostClass(host))
            self.class_of[name] = cls
            self._keys[name] = self._entries(host)
            cls.by_score.append(self._keys[name][0])
            cls.by_room.append(self._keys[name][1])
        for cls in self.classes.values():
            cls.by_score.sort()
            cls.by_room.sort()

    def _entries(self, host: Host) -> tuple[tuple[float, str], tuple[float, str]]:
        return (-_load_score(host, self.ledger), host.name), (
            _available_mib(host, self.ledger, self.rules),
            host.name,
        )

    def refresh(self, name: str) -> None:
        cls = self.class_of[name]
        old_score, old_room = self._keys[name]
        del cls.by_score[bisect_left(cls.by_score, old_score)]
        del cls.by_room[bisect_left(cls.by_room, old_room)]
        self._keys[name] = new_score, new_room = self._entries(self.snap.hosts[name])
        insort(cls.by_score, new_score)
        insort(cls.by_room, new_room)

    def static_reasons(self, needs: _Needs, cls: _HostClass) -> tuple[str, ...]:
        key = (needs, id(cls))
        if key not in self._static:
            self._static[key] = _static_reasons(needs, cls.representative, self.rules, self.exclude)
        return self._static[key]

    def usable_classes(self, needs: _Needs) -> list[tuple[float, _HostClass]]:
        """Classes this VM may use, best bonus first."""
        if needs not in self._usable:
            usable = [
                (_class_bonus(needs, cls.representative, self.rules), cls)
                for cls in self.classes.values()
                if not self.static_reasons(needs, cls)
            ]
            usable.sort(key=lambda bc: -bc[0])
            self._usable[needs] = usable
        return self._usable[needs]

    def score(self, needs: _Needs, host: Host, groups: GroupView) -> float:
        bonus = _class_bonus(needs, host, self.rules)
        if host.name in groups.affinity_hosts:
            bonus += _AFFINITY_GROUP_BONUS
        return bonus - self._keys[host.name][0][0]


# ------------------------------------------------------------------ public API


def _prepare(
    vm: VM,
    snap: Snapshot,
    rules: PlacementRules,
    ledger: Ledger | None,
    exclude: frozenset[str],
    groups: GroupView | None = None,
) -> tuple[Ledger, _Index, _Needs, GroupView, str]:
    ledger = Ledger(snap) if ledger is None else ledger
    return (
        ledger,
        ledger.index(snap, rules, exclude),
        _Needs.of(vm, rules, snap),
        GroupView.of(vm, snap, rules, ledger) if groups is None else groups,
        ledger.host_of(vm),
    )


def evaluate(
    vm: VM,
    snap: Snapshot,
    rules: PlacementRules,
    ledger: Ledger | None = None,
    exclude: frozenset[str] = frozenset(),
    groups: GroupView | None = None,
) -> list[Candidate]:
    """Every host but the VM's current one, eligible (best first) then rejected (by name).

    `groups`: where the VM's groups were when it was decided (`GroupView.of` then), for an
    explanation worked out after more moves were reserved; by default, where they are now."""
    ledger, index, needs, groups, here = _prepare(vm, snap, rules, ledger, exclude, groups)
    out = []
    static: dict[int, tuple[str, ...]] = {}  # per class: hashing `needs` once per host adds up
    for name in sorted(snap.hosts):
        if name == here:
            continue
        host = snap.hosts[name]
        cls = index.class_of[name]
        if id(cls) not in static:
            static[id(cls)] = index.static_reasons(needs, cls)
        reasons = [*static[id(cls)], *_dynamic_reasons(vm, host, rules, ledger, groups)]
        if reasons:
            out.append(Candidate(name, False, 0.0, tuple(reasons)))
        else:
            out.append(Candidate(name, True, index.score(needs, host, groups), ()))
    out.sort(key=lambda c: (not c.eligible, -c.score if c.eligible else 0.0, c.host))
    return out


def choose(
    vm: VM,
    snap: Snapshot,
    rules: PlacementRules,
    ledger: Ledger | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Candidate | None:
    """The best eligible host (highest score, then lowest name), or None."""
    ledger, index, needs, groups, here = _prepare(vm, snap, rules, ledger, exclude)
    best: tuple[float, str] | None = None  # (-score, name): smaller is better

    def consider(name: str) -> bool:
        nonlocal best
        host = snap.hosts[name]
        if name == here or any(_dynamic_checks(vm, host, rules, ledger, groups)):
            return False
        key = (-index.score(needs, host, groups), name)
        if best is None or key < best:
            best = key
        return True

    # Hosts holding the VM's affinity group get a bonus no class walk knows about.
    for name in sorted(groups.affinity_hosts):
        if not index.static_reasons(needs, index.class_of[name]):
            consider(name)
    for bonus, cls in index.usable_classes(needs):
        if best is not None and -best[0] > bonus + _MAX_LOAD_SCORE:
            break  # classes are sorted by bonus: none further on can win
        if not cls.by_room or cls.by_room[-1][0] < vm.memory_mib:
            continue  # no host in the class has the memory
        for neg_load, name in cls.by_score:
            if best is not None and (neg_load - bonus, name) > best:
                break
            if name not in groups.affinity_hosts and consider(name):
                break  # the first fitting host is the best of its class
    if best is None:
        return None
    return Candidate(best[1], True, -best[0], ())
