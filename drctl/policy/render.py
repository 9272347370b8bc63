"""A compiled Policy as plain data (for --json and golden files) and as readable text."""
from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, Mapping

import yaml

from drctl.model.cluster import HostSelector, VMSelector
from drctl.policy.types import ActionSpec, Policy, Rule
from drctl.policy.units import Window


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """Everything the compiler decided, in plain JSON-able data, stable in order."""
    return {
        "name": policy.name,
        "version": policy.version,
        "source": policy.source,
        "description": policy.description,
        "dry_run": policy.dry_run,
        "rules": [_rule(r) for r in policy.actions],
        "placement": _plain(policy.rules),
        "groups": {
            "affinity": [_plain(g) for g in policy.affinity_groups],
            "anti_affinity": [_plain(g) for g in policy.anti_affinity_groups],
        },
        "limits": _plain(policy.limits),
        "escalation": _plain(policy.escalation),
        "blast_radius": _plain(policy.blast_radius),
        "evidence": _plain(policy.evidence),
        "rebalance": _plain(policy.rebalance),
        "dropped": [_plain(d) for d in policy.dropped],
    }


def policy_to_text(policy: Policy) -> str:
    """A reviewer's view: rules in one line each, then the rest, then what was dropped."""
    lines = [f"policy {policy.name} (version {policy.version}) from {policy.source}"]
    if policy.dry_run:
        lines.append("DRY RUN: decides and records, acts on nothing")
    lines.append("rules (first match wins):")
    lines += [f"  {i + 1}. {_rule_line(r)}" for i, r in enumerate(policy.actions)]
    data = policy_to_dict(policy)
    rest = {k: data[k] for k in ("placement", "groups", "limits", "escalation", "blast_radius",
                                 "evidence", "rebalance")}
    lines.append(yaml.safe_dump(rest, sort_keys=False, default_flow_style=None, width=100).rstrip())
    if policy.dropped:
        lines.append(f"dropped ({len(policy.dropped)}):")
        lines += [f"  {policy.source}:{d.line}:{d.column}: {d.path}: {d.why}" for d in policy.dropped]
    else:
        lines.append("dropped: none")
    return "\n".join(lines) + "\n"


def _rule_line(rule: Rule) -> str:
    text = f"{rule.name}: when {rule.trigger.describe()} -> {_spec(rule.spec)}"
    text += f"; hosts {_selector_text(rule.hosts)}; vms {_selector_text(rule.vms)}"
    text += f"; order {', '.join(o.value for o in rule.order)}"
    for o in rule.overrides:
        text += f"\n       except vms {_selector_text(o.vms)} -> {_spec(o.spec)}"
    return text


def _spec(spec: ActionSpec) -> str:
    return spec.action.value + (f" (fallback {spec.fallback.value})" if spec.fallback else "")


def _selector_text(sel: HostSelector | VMSelector) -> str:
    plain = _plain(sel)
    return "all" if not plain else yaml.safe_dump(plain, default_flow_style=True, width=1000).strip()


def _rule(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "index": rule.index,
        "when": rule.trigger.describe(),
        "trigger": _plain(rule.trigger),
        "hosts": _plain(rule.hosts),
        "vms": _plain(rule.vms),
        "action": rule.action.value,
        "fallback": rule.fallback.value if rule.fallback else None,
        "order": [o.value for o in rule.order],
        "overrides": [_plain(o) for o in rule.overrides],
    }


def _plain(obj: Any) -> Any:
    """Dataclasses, enums and sets as JSON-able data; selectors list only what they set."""
    if isinstance(obj, (HostSelector, VMSelector)):
        return {k: v for k, v in _fields(obj).items() if v not in ((), [], {}, None)}
    if isinstance(obj, Window):
        return obj.text
    if dataclasses.is_dataclass(obj):
        return _fields(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(_plain(x) for x in obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}

