"""Reading the `placement`, `limits`, `evidence` and `rebalance` sections of a policy.

Each reader takes the section's node and returns compiled values (drctl.model.cluster types where
they exist); omitted keys keep the safe defaults of PlacementRules / Limits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Callable

import yaml

from drctl.model.cluster import EscalationStep, HostSelector, Limits, PlacementRules, SpareMode, VMSelector
from drctl.policy.reader import Reader, join
from drctl.policy.rules import read_name
from drctl.policy.selectors import host_selector, vm_selector
from drctl.policy.types import BlastRadius, Escalation, Evidence, EvidenceKind, Group, Rebalance
from drctl.policy.units import parse_duration, parse_percent, parse_rate_mibs

PLACEMENT_KEYS = ("memory_headroom", "failure_domain", "spread_groups_across_domains",
                  "spare_hosts", "host_affinity", "groups")
LIMITS_KEYS = ("concurrency", "bandwidth", "max_downtime", "timeout_per_gib", "escalation", "blast_radius")
EVIDENCE_KEYS = ("require", "witness_quorum", "fence_agent", "fence")
REBALANCE_KEYS = ("target_spread", "max_moves")


class HostRuleKind(str, Enum):
    """`rule` of a `placement.host_affinity` entry."""

    MUST = "must"  # only on these hosts
    PREFER = "prefer"  # these hosts first
    MUST_NOT = "must-not"  # never on these hosts
    AVOID = "avoid"  # these hosts last

    @property
    def positive(self) -> bool:
        """Toward the hosts (must, prefer) rather than away from them (must-not, avoid)."""
        return self in (HostRuleKind.MUST, HostRuleKind.PREFER)

    @property
    def required(self) -> bool:
        return self in (HostRuleKind.MUST, HostRuleKind.MUST_NOT)


@dataclass(frozen=True)
class HostRule:
    """One `placement.host_affinity` entry as written, before conflict checks compile it."""

    kind: HostRuleKind
    vms: VMSelector
    hosts: HostSelector
    node: yaml.Node
    path: str


@dataclass(frozen=True)
class Placement:
    rules: PlacementRules
    host_rules: tuple[HostRule, ...] = ()
    affinity: tuple[tuple[Group, yaml.Node, str], ...] = ()
    anti_affinity: tuple[tuple[Group, yaml.Node, str], ...] = ()


# ---------------------------------------------------------------- placement


def read_placement(r: Reader, node: yaml.Node | None, path: str) -> Placement:
    rules = PlacementRules()
    if node is None:
        return Placement(rules)
    f = r.mapping(node, path, PLACEMENT_KEYS)
    sub = _sub(path)
    changes: dict[str, Any] = {}  # field name -> value, for dataclasses.replace
    if "memory_headroom" in f:
        changes["memory_headroom_pct"] = r.attempt(lambda: _headroom(r, f["memory_headroom"], sub("memory_headroom")), 10.0)
    if "failure_domain" in f:
        changes["failure_domain_label"] = r.attempt(lambda: r.word(f["failure_domain"], sub("failure_domain")), "rack")
    if "spread_groups_across_domains" in f:
        changes["spread_anti_affinity_across_domains"] = r.attempt(
            lambda: r.boolean(f["spread_groups_across_domains"], sub("spread_groups_across_domains")), False)
    if "spare_hosts" in f:
        spares = r.attempt(lambda: _spares(r, f["spare_hosts"], sub("spare_hosts")), None)
        if spares:
            changes["spare_hosts"], changes["spare_mode"] = spares
    host_rules = r.attempt(lambda: tuple(r.each(f["host_affinity"], sub("host_affinity"),
                                                  lambda n, p: _host_rule(r, n, p))), ()) if "host_affinity" in f else ()
    groups = r.attempt(lambda: _groups(r, f["groups"], sub("groups")), ((), ())) if "groups" in f else ((), ())
    return Placement(replace(rules, **changes), host_rules, *groups)


def _headroom(r: Reader, node: yaml.Node, path: str) -> float:
    pct = r.parsed(node, path, parse_percent)
    if pct >= 90:
        raise r.fail(node, path, f"{pct:g}% headroom leaves no room to place anything")
    return pct


def _spares(r: Reader, node: yaml.Node, path: str) -> tuple[HostSelector, SpareMode]:
    f = r.mapping(node, path, ("hosts", "mode"))
    if "hosts" not in f:
        raise r.fail(node, path, "missing required key 'hosts' (which hosts are spares)")
    hosts = host_selector(r, f["hosts"], join(path, "hosts"))
    if hosts == HostSelector():
        raise r.fail(f["hosts"], join(path, "hosts"), "an empty selector would make every host a spare")
    mode = SpareMode.AVOID
    if "mode" in f:
        mode = SpareMode(r.choice(f["mode"], join(path, "mode"), [m.value for m in SpareMode]))
    return hosts, mode


def _host_rule(r: Reader, node: yaml.Node, path: str) -> HostRule:
    f = r.mapping(node, path, ("vms", "hosts", "rule"))
    missing = [k for k in ("vms", "hosts", "rule") if k not in f]
    if missing:
        raise r.fail(node, path, f"missing required key {missing[0]!r}")
    kind = HostRuleKind(r.choice(f["rule"], join(path, "rule"), [k.value for k in HostRuleKind]))
    vms = vm_selector(r, f["vms"], join(path, "vms"))
    hosts = host_selector(r, f["hosts"], join(path, "hosts"))
    if hosts == HostSelector():
        raise r.fail(f["hosts"], join(path, "hosts"), "an empty selector matches every host: this rule says nothing")
    return HostRule(kind, vms, hosts, node, path)


def _groups(r: Reader, node: yaml.Node, path: str) -> tuple[tuple[tuple[Group, yaml.Node, str], ...], ...]:
    f = r.mapping(node, path, ("affinity", "anti_affinity"))
    seen: set[str] = set()

    def group(n: yaml.Node, p: str) -> tuple[Group, yaml.Node, str]:
        g = r.mapping(n, p, ("name", "vms"))
        if "name" not in g or "vms" not in g:
            raise r.fail(n, p, "a group needs 'name' and 'vms'")
        name = read_name(r, g["name"], join(p, "name"))
        if name in seen:
            raise r.fail(g["name"], join(p, "name"), f"group {name!r} is defined twice in its list")
        seen.add(name)
        return Group(name, vm_selector(r, g["vms"], join(p, "vms"))), n, p

    out = []
    for key in ("affinity", "anti_affinity"):
        seen = set()
        out.append(tuple(r.each(f[key], join(path, key), group)) if key in f else ())
    return tuple(out)


# ---------------------------------------------------------------- limits


def read_limits(r: Reader, node: yaml.Node | None, path: str) -> tuple[Limits, Escalation, BlastRadius]:
    if node is None:
        return Limits(), Escalation(), BlastRadius()
    f = r.mapping(node, path, LIMITS_KEYS)
    sub = _sub(path)
    changes: dict[str, Any] = {}  # field name -> value, for dataclasses.replace
    if "concurrency" in f:
        changes.update(r.attempt(lambda: _concurrency(r, f["concurrency"], sub("concurrency")), {}))
    if "bandwidth" in f:
        changes.update(r.attempt(lambda: _bandwidth(r, f["bandwidth"], sub("bandwidth")), {}))
    if "max_downtime" in f:
        changes["max_downtime_ms"] = r.attempt(lambda: _ms(r, f["max_downtime"], sub("max_downtime")), 300)
    if "timeout_per_gib" in f:
        changes["timeout_s_per_gib"] = r.attempt(lambda: _positive_duration(r, f["timeout_per_gib"], sub("timeout_per_gib")), 120.0)
    escalation = Escalation()
    if "escalation" in f:
        escalation = r.attempt(lambda: _escalation(r, f["escalation"], sub("escalation")), escalation)
        changes["escalation"] = escalation.steps
    blast = BlastRadius()
    if "blast_radius" in f:
        blast = r.attempt(lambda: _blast_radius(r, f["blast_radius"], sub("blast_radius")), blast)
    return replace(Limits(), **changes), escalation, blast


def _concurrency(r: Reader, node: yaml.Node, path: str) -> dict[str, int]:
    keys = {"cluster": "max_concurrent", "per_source": "max_per_source", "per_destination": "max_per_destination"}
    f = r.mapping(node, path, keys)
    got = {key: r.integer(n, join(path, key), minimum=1, maximum=1000) for key, n in f.items()}
    cluster = got.get("cluster", Limits().max_concurrent)
    for key in ("per_source", "per_destination"):
        if got.get(key, 0) > cluster:
            raise r.fail(f[key], join(path, key), f"{got[key]} exceeds the cluster limit of {cluster}")
    return {keys[k]: v for k, v in got.items()}


def _bandwidth(r: Reader, node: yaml.Node, path: str) -> dict[str, float]:
    f = r.mapping(node, path, ("per_migration", "total"))
    got = {key: r.parsed(n, join(path, key), parse_rate_mibs) for key, n in f.items()}
    for key, value in got.items():
        if value <= 0:
            raise r.fail(f[key], join(path, key), "bandwidth must be above zero")
    per = got.get("per_migration", Limits().bandwidth_mibs)
    total = got.get("total", Limits().bandwidth_total_mibs)
    if per > total:
        node_at = f.get("per_migration", node)
        raise r.fail(node_at, join(path, "per_migration"), f"{per:g}MiB/s per migration exceeds the total of {total:g}MiB/s")
    return {"bandwidth_mibs": per, "bandwidth_total_mibs": total}


def _ms(r: Reader, node: yaml.Node, path: str) -> int:
    ms = round(r.parsed(node, path, parse_duration) * 1000)
    if ms < 1:
        raise r.fail(node, path, "must be at least 1ms")
    return ms


def _positive_duration(r: Reader, node: yaml.Node, path: str) -> float:
    seconds = r.parsed(node, path, parse_duration)
    if seconds <= 0:
        raise r.fail(node, path, "must be above zero")
    return seconds


def _escalation(r: Reader, node: yaml.Node, path: str) -> Escalation:
    f = r.mapping(node, path, ("steps", "stall_after", "min_progress", "max_downtime"))
    e = Escalation()
    steps = e.steps
    if "steps" in f:
        steps = tuple(r.each(f["steps"], join(path, "steps"),
                             lambda n, p: EscalationStep(r.choice(n, p, [s.value for s in EscalationStep])),
                             scalar_ok=True))
        if len(set(steps)) != len(steps):
            raise r.fail(f["steps"], join(path, "steps"), "a step is listed twice")
        if EscalationStep.ABORT in steps and steps[-1] is not EscalationStep.ABORT:
            raise r.fail(f["steps"], join(path, "steps"), "steps after 'abort' would never run: put abort last")
    stall = _positive_duration(r, f["stall_after"], join(path, "stall_after")) if "stall_after" in f else e.stall_s
    progress = r.parsed(f["min_progress"], join(path, "min_progress"), parse_percent) if "min_progress" in f else e.min_progress_pct
    ceiling = _ms(r, f["max_downtime"], join(path, "max_downtime")) if "max_downtime" in f else e.max_downtime_ms
    return Escalation(steps=steps, stall_s=stall, min_progress_pct=progress, max_downtime_ms=ceiling)


def _blast_radius(r: Reader, node: yaml.Node, path: str) -> BlastRadius:
    f = r.mapping(node, path, ("max_hosts", "max_vms", "window"))
    if "max_hosts" not in f and "max_vms" not in f:
        raise r.fail(node, path, "set max_hosts, max_vms or both")
    max_hosts = r.integer(f["max_hosts"], join(path, "max_hosts"), minimum=1) if "max_hosts" in f else None
    max_vms = r.parsed(f["max_vms"], join(path, "max_vms"), parse_percent) if "max_vms" in f else None
    window = _positive_duration(r, f["window"], join(path, "window")) if "window" in f else BlastRadius().window_s
    return BlastRadius(max_hosts=max_hosts, max_vm_pct=max_vms, window_s=window)


# ---------------------------------------------------------------- evidence, rebalance


def read_evidence(r: Reader, node: yaml.Node | None, path: str) -> Evidence:
    if node is None:
        return Evidence()
    f = r.mapping(node, path, EVIDENCE_KEYS)
    required = Evidence().required
    if "require" in f:
        kinds = [k.value for k in EvidenceKind]
        required = frozenset(r.each(f["require"], join(path, "require"),
                                    lambda n, p: EvidenceKind(r.choice(n, p, kinds)), scalar_ok=True))
        if not required:
            raise r.fail(f["require"], join(path, "require"),
                         "restarting a VM without evidence risks running it twice: require at least one")
    quorum = None
    if "witness_quorum" in f and r.string(f["witness_quorum"], join(path, "witness_quorum")) != "majority":
        quorum = r.integer(f["witness_quorum"], join(path, "witness_quorum"), minimum=1, maximum=1000)
    agent = r.word(f["fence_agent"], join(path, "fence_agent")) if "fence_agent" in f else None
    waived = "fence" in f and r.choice(f["fence"], join(path, "fence"), ["required", "waived"]) == "waived"
    if waived and EvidenceKind.FENCE in required:
        raise r.fail(f["fence"], join(path, "fence"), "'fence: waived' contradicts 'fence' in require")
    if not waived and EvidenceKind.FENCE not in required:
        raise r.fail(f["require"], join(path, "require"),
                     "restarting without a fence risks running a VM twice: add 'fence' (with a fence_agent), "
                     "or say 'fence: waived' to accept that risk")
    if EvidenceKind.FENCE in required and agent is None and "require" in f:
        raise r.fail(node, path, "'fence' evidence needs a fence_agent (a name from the controller configuration)")
    return Evidence(required=required, witness_quorum=quorum, fence_agent=agent, fence_waived=waived)


def read_rebalance(r: Reader, node: yaml.Node | None, path: str) -> tuple[Rebalance, yaml.Node | None]:
    if node is None:
        return Rebalance(), None
    f = r.mapping(node, path, REBALANCE_KEYS)
    d = Rebalance()
    spread = r.parsed(f["target_spread"], join(path, "target_spread"), parse_percent) if "target_spread" in f else d.target_spread_pct
    moves = r.integer(f["max_moves"], join(path, "max_moves"), minimum=1, maximum=10_000) if "max_moves" in f else d.max_moves
    return Rebalance(target_spread_pct=spread, max_moves=moves), f.get("target_spread")


def _sub(path: str) -> Callable[[str], str]:
    return lambda key: join(path, key)

