"""An independent checker of plans, used by tests and the planning benchmark.

Written from the rules in docs/planning.md ("Placement rules"), not from drctl.planning.placement: it replays the plan
move by move on plain dictionaries and lists every rule a move breaks. If placement and
this checker disagree, one of them misreads the rules, and a test says which.
"""
from __future__ import annotations

from typing import Iterable

from drctl.model.cluster import HostState, IntentKind, Limits, PlacementRules, Snapshot, SpareMode, StorageKind


def _spare(host, rules: PlacementRules) -> bool:
    return rules.spare_hosts is not None and rules.spare_hosts.matches(host)


def check_plan(
    snap: Snapshot,
    plan,
    rules: PlacementRules,
    limits: Limits | None = None,
    evacuated: Iterable[str] = (),
    reasons_checked: int | None = None,
) -> list[str]:
    """Every violation in `plan` as one line; an empty list is a clean plan.

    `reasons_checked` limits the unplaced VMs whose per-host reasons are read (each read
    explains every host): the benchmark's capacity-short runs leave thousands unplaced."""
    evacuated = set(evacuated)
    bad: list[str] = []
    where = {name: vm.host for name, vm in snap.vms.items()}
    taken = {name: 0 for name in snap.hosts}  # memory moved onto each host by the plan
    seen: set[str] = set()
    for m in plan.moves:
        vm, dst = snap.vms.get(m.vm), snap.hosts.get(m.dst)
        if vm is None or dst is None:
            bad.append(f"{m.vm}: unknown vm or destination {m.dst}")
            continue
        if m.vm in seen:
            bad.append(f"{m.vm}: moved twice")
        seen.add(m.vm)
        if m.src != vm.host or m.dst == vm.host:
            bad.append(f"{m.vm}: src {m.src}/dst {m.dst} do not fit current host {vm.host}")
        if m.dst in evacuated:
            bad.append(f"{m.vm}: sent to evacuated host {m.dst}")
        if dst.state != HostState.HEALTHY or dst.maintenance or dst.incoming_limit < 1:
            bad.append(f"{m.vm}: {m.dst} is not accepting VMs")
        src_alive = snap.hosts[vm.host].state in (HostState.HEALTHY, HostState.DEGRADED, HostState.FAILING)
        if src_alive and not vm.migratable:
            bad.append(f"{m.vm}: not migratable, but moved")
        if not src_alive and m.kind != IntentKind.RESTART:
            bad.append(f"{m.vm}: live migration from a host that is down")
        src_version = snap.hosts[vm.host].hypervisor_version
        bad += [f"{m.vm} -> {m.dst}: {p}" for p in _compat_problems(vm, dst, rules, src_version)]
        taken[m.dst] += vm.memory_mib
        where[m.vm] = m.dst
    for name, extra in taken.items():
        h = snap.hosts[name]
        if extra and h.memory_mib - h.reserved_mib - h.memory_used_mib - extra < h.memory_mib * rules.memory_headroom_pct / 100:
            bad.append(f"{name}: over capacity with headroom (+{extra} MiB)")
    bad += _group_problems(snap, plan, rules, where)
    bad += _unplaced_problems(snap, plan, evacuated, seen, reasons_checked)
    if limits is not None:
        bad += _wave_problems(snap, plan, limits)
    return bad


def _version(text: str) -> list[int] | None:
    parts = text.split(".") if text else []
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else None


def _compat_problems(vm, host, rules: PlacementRules, src_version: str = "") -> list[str]:
    out = []
    mine, theirs = _version(src_version), _version(host.hypervisor_version)
    if mine is not None and theirs is not None and theirs < mine:
        out.append("older hypervisor")
    if vm.cpu_model not in ("", "qemu64", host.cpu_model):
        out.append("cpu model")
    if not vm.cpu_features <= host.cpu_features:
        out.append("cpu features")
    if vm.machine_type and vm.machine_type not in host.machine_types:
        out.append("machine type")
    if not vm.networks <= host.networks:
        out.append("networks")
    for d in vm.disks:
        if d.pool and d.pool not in host.storage_pools:
            out.append(f"pool for {d.name} ({d.storage.value})" if d.storage == StorageKind.LOCAL else "shared pool")
    for rule in rules.host_affinity:
        if rule.required and rule.vms.matches(vm) and not rule.hosts.matches(host):
            out.append("required host affinity")
    if rules.spare_mode == SpareMode.ONLY and not _spare(host, rules):
        out.append("not a spare host")
    return out


def _group_problems(snap: Snapshot, plan, rules: PlacementRules, where: dict[str, str]) -> list[str]:
    """A moved VM must not end beside another of its anti-affinity group (host, or domain)."""
    out = []
    label = rules.failure_domain_label
    members: dict[str, list] = {}
    for other in snap.vms.values():
        if other.anti_affinity_group:
            members.setdefault(other.anti_affinity_group, []).append(other)
    for m in plan.moves:
        vm = snap.vms.get(m.vm)
        if vm is None or not vm.anti_affinity_group:
            continue
        my_domain = snap.hosts[m.dst].labels.get(label)
        for other in members[vm.anti_affinity_group]:
            if other.name == vm.name:
                continue
            if where[other.name] == m.dst:
                out.append(f"{m.vm}: anti-affinity with {other.name} on {m.dst}")
            elif (
                rules.spread_anti_affinity_across_domains
                and my_domain is not None
                and snap.hosts[where[other.name]].labels.get(label) == my_domain
            ):
                out.append(f"{m.vm}: failure domain {my_domain} shared with {other.name}")
    return out


def _unplaced_problems(snap: Snapshot, plan, evacuated: set[str], moved: set[str], reasons_checked: int | None) -> list[str]:
    out = []
    unplaced = {u.vm for u in plan.unplaced}
    for i, u in enumerate(plan.unplaced):
        missing = [h for h in snap.hosts if not u.reasons.get(h)] if reasons_checked is None or i < reasons_checked else []
        if missing:
            out.append(f"{u.vm}: unplaced without a reason for {', '.join(sorted(missing)[:3])}")
        if u.vm in moved:
            out.append(f"{u.vm}: both moved and unplaced")
    for vm in snap.vms.values():
        if vm.host in evacuated and vm.name not in moved and vm.name not in unplaced:
            out.append(f"{vm.name}: left on evacuated host {vm.host}")
    return out


def _wave_problems(snap: Snapshot, plan, limits: Limits) -> list[str]:
    out = []
    waves: dict[int, list] = {}
    for m in plan.moves:
        waves.setdefault(m.wave, []).append(m)
    per_move_bw = min(limits.bandwidth_mibs, limits.bandwidth_total_mibs)
    cap = max(1, min(limits.max_concurrent, int(limits.bandwidth_total_mibs // per_move_bw)))
    for w, moves in waves.items():
        if w < 1:
            out.append(f"wave {w}: not numbered from 1")
        if len(moves) > cap:
            out.append(f"wave {w}: {len(moves)} moves > {cap} concurrent")
        for attr, limit in (("src", limits.max_per_source), ("dst", limits.max_per_destination)):
            counts: dict[str, int] = {}
            for m in moves:
                if attr == "src" and m.kind == IntentKind.RESTART:
                    continue
                counts[getattr(m, attr)] = counts.get(getattr(m, attr), 0) + 1
            for host, n in counts.items():
                host_cap = min(limit, snap.hosts[host].incoming_limit) if attr == "dst" else limit
                if n > host_cap:
                    out.append(f"wave {w}: {n} moves per {attr} {host} > {host_cap}")
    if plan.waves != len(waves):
        out.append(f"plan says {plan.waves} waves, moves use {len(waves)}")
    return out
