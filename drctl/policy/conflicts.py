"""Rules that contradict each other are dropped, with the reason, instead of failing.

Why drop rather than fail: a policy is reloaded by a running controller, and a
contradiction between two placement rules should not leave a cluster with no policy at
all. The compiler keeps the safe side of each contradiction, and `drctl policy check`
prints every dropped rule so a reviewer sees it before it ships:

- a group that is both affinity and anti-affinity (same name, or the same VM selector):
  anti-affinity wins - spreading VMs never makes a host failure worse;
- host rules for the same VMs and hosts that say opposite things (must / prefer vs
  must-not / avoid), or two `must` rules for the same VMs whose hosts cannot overlap:
  the earlier rule in the file wins, as rules do everywhere else in a policy;
- a rule that can never fire because an earlier rule with the same hosts and a trigger
  at least as wide always wins first.

Only provable contradictions count: selectors are compared as written (equal selectors,
literal names that do not overlap, one label with two values); anything subtler is left to
placement, which explains every rejection at run time.
"""
from __future__ import annotations

from typing import Iterable

import yaml

from drctl.model.cluster import HostAffinity, HostSelector
from drctl.policy.sections import HostRule, HostRuleKind
from drctl.policy.types import DroppedRule, Group, Rule, Trigger, TriggerKind


def dropped(node: yaml.Node, path: str, why: str) -> DroppedRule:
    return DroppedRule(path=path, line=node.start_mark.line + 1, column=node.start_mark.column + 1, why=why)


def resolve_groups(
    affinity: Iterable[tuple[Group, yaml.Node, str]],
    anti: Iterable[tuple[Group, yaml.Node, str]],
) -> tuple[tuple[Group, ...], list[DroppedRule]]:
    """Affinity groups that do not contradict an anti-affinity group, and the drops."""
    anti = list(anti)
    kept, drops = [], []
    for group, node, path in affinity:
        clash = next((a for a in anti if a[0].name == group.name or a[0].vms == group.vms), None)
        if clash is None:
            kept.append(group)
            continue
        same = "name" if clash[0].name == group.name else "VMs"
        drops.append(dropped(node, path, f"affinity group {group.name!r} has the same {same} as anti-affinity "
                                         f"group {clash[0].name!r} ({clash[2]}); anti-affinity wins"))
    return tuple(kept), drops


def resolve_host_rules(rules: Iterable[HostRule]) -> tuple[tuple[HostAffinity, ...], list[DroppedRule]]:
    """Compile host rules into HostAffinity, dropping the later of two that contradict."""
    kept: list[HostRule] = []
    drops = []
    for rule in rules:
        clash = next((k for k in kept if _contradict(k, rule)), None)
        if clash is None:
            kept.append(rule)
            continue
        if clash.kind is rule.kind is HostRuleKind.MUST:
            why = f"'must' hosts cannot overlap with the 'must' hosts of {clash.path} for the same VMs"
        else:
            why = f"'{rule.kind.value}' contradicts '{clash.kind.value}' of {clash.path} for the same VMs and hosts"
        drops.append(dropped(rule.node, rule.path, f"{why}; the earlier rule wins"))
    return tuple(_compile_host_rule(k) for k in kept), drops


def _contradict(a: HostRule, b: HostRule) -> bool:
    if a.vms != b.vms:
        return False
    if a.kind.positive != b.kind.positive:
        return a.hosts == b.hosts
    return a.kind is b.kind is HostRuleKind.MUST and _disjoint(a.hosts, b.hosts)


def _disjoint(a: HostSelector, b: HostSelector) -> bool:
    """True only when no host can match both (literal names apart, or a label's two values)."""
    if _literal(a.names) and _literal(b.names) and not set(a.names) & set(b.names):
        return True
    return any(k in b.labels and b.labels[k] != v for k, v in a.labels.items())


def _literal(names: tuple[str, ...]) -> bool:
    return bool(names) and not any(c in n for n in names for c in "*?[")


def _compile_host_rule(rule: HostRule) -> HostAffinity:
    hosts = rule.hosts if rule.kind.positive else HostSelector(exclude=rule.hosts)
    return HostAffinity(vms=rule.vms, hosts=hosts, required=rule.kind.required)


def resolve_shadowed(rules: Iterable[tuple[Rule, yaml.Node]]) -> tuple[tuple[Rule, ...], list[DroppedRule]]:
    """Rules that can fire, and drops for those an earlier rule always pre-empts."""
    kept: list[Rule] = []
    drops = []
    for rule, node in rules:
        first = next((k for k in kept if k.hosts == rule.hosts and _covers(k.trigger, rule.trigger)), None)
        if first is None:
            kept.append(rule)
        else:
            drops.append(dropped(node, f"rules[{rule.index}]",
                                 f"rule {rule.name!r} never fires: rules[{first.index}] ({first.name!r}) "
                                 f"covers the same hosts and trigger and comes first (use overrides for other VMs)"))
    return tuple(kept), drops


def _covers(a: Trigger, b: Trigger) -> bool:
    """Whenever `b` holds, `a` holds too."""
    if a.kind is not b.kind or (a.windows and a.windows != b.windows):
        return False
    if a.kind is TriggerKind.STATE:
        return b.states <= a.states and a.hold_s <= b.hold_s
    if a.kind is TriggerKind.IMBALANCE:
        return a.threshold_pct <= b.threshold_pct
    return True
