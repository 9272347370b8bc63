"""Reading `rules:` - each a trigger (`when`), the hosts and VMs it covers, and the action.

    - name: evacuate-degraded
      when: {state: degraded, for: 30s, windows: ["Mon-Fri 01:00-05:00"]}
      hosts: {labels: {role: compute}}
      vms: {tags: [prod]}
      action: live-migrate
      fallback: restart
      order: [priority, size-desc]
      overrides:
        - vms: {tags: [pinned]}
          action: leave-alone
"""
from __future__ import annotations

import re

import yaml

from drctl.model.cluster import HostState
from drctl.policy.reader import Invalid, Reader, join
from drctl.policy.selectors import host_selector, vm_selector
from drctl.policy.types import Action, ActionSpec, Order, Override, Rule, Trigger, TriggerKind
from drctl.policy.units import Window, parse_duration, parse_percent, parse_window

RULE_KEYS = ("name", "when", "hosts", "vms", "action", "fallback", "order", "overrides")
WHEN_KEYS = ("state", "for", "maintenance", "imbalance", "windows")
OVERRIDE_KEYS = ("vms", "action", "fallback")
_STATES = tuple(s.value for s in HostState if s is not HostState.HEALTHY)
_ACTIONS = tuple(a.value for a in Action)
_ORDERS = tuple(o.value for o in Order)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_rules(r: Reader, node: yaml.Node, path: str) -> list[tuple[Rule, yaml.Node]]:
    """Every rule that reads cleanly, with its node (conflict checks report positions)."""
    items = r.sequence(node, path)
    if not items:
        raise r.fail(node, path, "a policy without rules does nothing")
    out: list[tuple[Rule, yaml.Node]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        rule = r.attempt(lambda: _rule(r, item, f"{path}[{i}]", i), None)
        if rule is None:
            continue
        if rule.name in seen:
            r.report(item, f"{path}[{i}].name", f"{rule.name!r} is already the name of {path}[{seen[rule.name]}]")
            continue
        seen[rule.name] = i
        out.append((rule, item))
    return out


def read_name(r: Reader, node: yaml.Node, path: str) -> str:
    name = r.string(node, path)
    if not _NAME.match(name):
        raise r.fail(node, path, f"{name!r} is not a valid name (letters, digits, '-', '_', '.')")
    return name


def _rule(r: Reader, node: yaml.Node, path: str, index: int) -> Rule:
    f = r.mapping(node, path, RULE_KEYS)
    for required in ("name", "when", "action"):
        if required not in f:
            r.report(node, path, f"missing required key {required!r}")
    name = r.attempt(lambda: read_name(r, f["name"], join(path, "name")), None) if "name" in f else None
    trigger = r.attempt(lambda: _trigger(r, f["when"], join(path, "when")), None) if "when" in f else None
    hosts = r.attempt(lambda: host_selector(r, f.get("hosts"), join(path, "hosts")), None)
    vms = r.attempt(lambda: vm_selector(r, f.get("vms"), join(path, "vms")), None)
    spec = r.attempt(lambda: _spec(r, f, path, trigger), None) if "action" in f else None
    order = r.attempt(lambda: _order(r, f.get("order"), join(path, "order")), None)
    overrides = r.attempt(lambda: tuple(r.each(
        f["overrides"], join(path, "overrides"),
        lambda n, p: _override(r, n, p, trigger))) if "overrides" in f else (), None)
    if (name is None or trigger is None or hosts is None or vms is None or spec is None
            or order is None or overrides is None):
        raise Invalid()
    if trigger.kind is TriggerKind.IMBALANCE and not spec.action.live:
        raise r.fail(f["action"], join(path, "action"),
                     "a rebalance moves running VMs: use live-migrate or live-migrate-with-storage")
    return Rule(name=name, trigger=trigger, hosts=hosts, vms=vms, spec=spec, order=order,
                overrides=overrides, index=index)


def _trigger(r: Reader, node: yaml.Node, path: str) -> Trigger:
    f = r.mapping(node, path, WHEN_KEYS)
    kinds = [k for k in TriggerKind if k.value in f]
    if len(kinds) != 1:
        got = f" (got {', '.join(k.value for k in kinds)})" if kinds else ""
        raise r.fail(node, path, f"needs exactly one of state, maintenance, imbalance{got}")
    if "for" in f and kinds[0] is not TriggerKind.STATE:
        raise r.fail(f["for"], join(path, "for"), "'for' applies only to a host state")
    windows: tuple[Window, ...] = ()
    if "windows" in f:
        windows = tuple(r.each(f["windows"], join(path, "windows"),
                               lambda n, p: r.parsed(n, p, parse_window), scalar_ok=True))
    kind = kinds[0]
    value, value_path = f[kind.value], join(path, kind.value)
    if kind is TriggerKind.STATE:
        states = r.each(value, value_path, lambda n, p: HostState(r.choice(n, p, _STATES)), scalar_ok=True)
        if isinstance(value, yaml.SequenceNode) and not value.value:
            raise r.fail(value, value_path, f"name at least one state ({', '.join(_STATES)})")
        hold = r.parsed(f["for"], join(path, "for"), parse_duration) if "for" in f else 0.0
        return Trigger(TriggerKind.STATE, states=frozenset(states), hold_s=hold, windows=windows)
    if kind is TriggerKind.MAINTENANCE:
        r.choice(value, value_path, ("requested",))
        return Trigger(TriggerKind.MAINTENANCE, windows=windows)
    return Trigger(TriggerKind.IMBALANCE, threshold_pct=r.parsed(value, value_path, _above), windows=windows)


def _above(text: str) -> float:
    word, _, pct = text.strip().partition(" ")
    if word != "above":
        raise ValueError(f"expected 'above N%', got {text!r}")
    return parse_percent(pct)


def _spec(r: Reader, f: dict[str, yaml.Node], path: str, trigger: Trigger | None) -> ActionSpec:
    action = Action(r.choice(f["action"], join(path, "action"), _ACTIONS))
    fallback = None
    if "fallback" in f:
        fallback = Action(r.choice(f["fallback"], join(path, "fallback"), _ACTIONS))
        if action is Action.LEAVE_ALONE:
            raise r.fail(f["fallback"], join(path, "fallback"), "leave-alone cannot fail: drop the fallback")
        if fallback is action:
            raise r.fail(f["fallback"], join(path, "fallback"), f"fallback is the same as the action ({action.value})")
    dead = trigger is not None and HostState.DEAD in trigger.states
    for key, act in (("action", action), ("fallback", fallback)):
        if dead and act is not None and act.live:
            raise r.fail(f[key], join(path, key),
                         f"{act.value}: a dead host cannot be live-migrated from (use restart)")
    return ActionSpec(action, fallback)


def _override(r: Reader, node: yaml.Node, path: str, trigger: Trigger | None) -> Override:
    f = r.mapping(node, path, OVERRIDE_KEYS)
    if "action" not in f:
        raise r.fail(node, path, "missing required key 'action'")
    if "vms" not in f:
        raise r.fail(node, path, "missing required key 'vms' (which VMs this override is for)")
    vms = vm_selector(r, f["vms"], join(path, "vms"))
    return Override(vms=vms, spec=_spec(r, f, path, trigger))


def _order(r: Reader, node: yaml.Node | None, path: str) -> tuple[Order, ...]:
    if node is None:
        return (Order.PRIORITY,)
    orders = r.each(node, path, lambda n, p: Order(r.choice(n, p, _ORDERS)), scalar_ok=True)
    if len({o for o in orders if o is not Order.PRIORITY}) > 1:
        raise r.fail(node, path, "size-asc and size-desc contradict each other: pick one")
    return tuple(orders) or (Order.PRIORITY,)
