"""Replay an incident's placement decisions from the snapshot recorded in its audit trail.

The controller records the cluster snapshot it decided on (`snapshot.recorded`) and every
decision (`placement.decided` / `placement.failed`). Placement and the planner are pure,
so running the planner again on that snapshot with the same rules must give the same
destinations; with another policy it shows what that policy would have done instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

from drctl.audit import events as ev
from drctl.planning import planner
from drctl.audit.reader import Event
from drctl.model.errors import ConfigError
from drctl.model.cluster import Limits, PlacementRules, Snapshot, SpareMode, escalation_steps
from drctl.audit.postmortem import IncidentNotFound, incident_events
from drctl.model.snapshot import parse_snapshot


class ReplayError(Exception):
    pass


@dataclass(frozen=True)
class ReplayedDecision:
    vm: str
    src: str
    recorded_dst: str | None  # None: recorded as not placeable
    replayed_dst: str | None
    note: str = ""

    @property
    def match(self) -> bool:
        return self.recorded_dst == self.replayed_dst


@dataclass(frozen=True)
class ReplayResult:
    incident: str
    host: str
    rules_from: str  # "recorded rules", "defaults" or the policy file
    decisions: tuple[ReplayedDecision, ...]
    extra: tuple[ReplayedDecision, ...] = ()  # moves the replay makes that were never recorded
    warnings: tuple[str, ...] = ()

    @property
    def reproduced(self) -> bool:
        return all(d.match for d in self.decisions) and not self.extra


def replay_incident(events: Sequence[Event], incident: str, policy_path: Path | None = None) -> ReplayResult:
    """Re-plan `incident` on its recorded snapshots and compare with what was recorded.

    Each `snapshot.recorded` starts a decision round: the decisions after it (up to the
    next snapshot) were made on it. VMs decided in an earlier round were already being
    moved, so the controller left them out of later rounds; so does the replay."""
    evs = incident_events(events, incident)  # raises IncidentNotFound
    rounds: list[tuple[Event, list[Event]]] = []
    for e in evs:
        if e.name == ev.SNAPSHOT_RECORDED:
            rounds.append((e, []))
        elif e.name in (ev.PLACEMENT_DECIDED, ev.PLACEMENT_FAILED) and rounds:
            rounds[-1][1].append(e)
    if not rounds:
        raise ReplayError(f"{incident}: no {ev.SNAPSHOT_RECORDED} event: nothing to replay on")
    opened = next(e for e in evs if e.name == ev.INCIDENT_OPENED)
    host = str(opened.get("host"))
    policy = None
    if policy_path is not None:
        from drctl.policy import (
            load_policy,  # only a replay with another policy needs it
        )

        policy = load_policy(policy_path)
    warnings: list[str] = []
    decisions: list[ReplayedDecision] = []
    extra: list[ReplayedDecision] = []
    decided_anywhere = {str(e.get("vm")) for _, ds in rounds for e in ds}
    decided_before: set[str] = set()
    source = ""
    for recorded, round_decisions in rounds:
        if not round_decisions and len(rounds) > 1:
            continue  # a round that decided nothing (e.g. every VM was already moving)
        try:
            snap = parse_snapshot(recorded.get("snapshot"), f"{recorded.where} snapshot")
        except ConfigError as e:
            raise ReplayError(str(e)) from e
        if policy is not None:
            snap, rules, limits, src_name = policy.apply_groups(snap), policy.rules, policy.limits, str(policy_path)
        else:
            rules = _rebuild(PlacementRules, recorded.get("rules"), warnings)
            limits = _rebuild(Limits, recorded.get("limits"), warnings)
            src_name = "recorded rules" if recorded.get("rules") else "default rules (none recorded)"
        source = source or src_name
        planned = replace(snap, vms={n: v for n, v in snap.vms.items() if n not in decided_before})
        plan = planner.plan_evacuation(planned, [host], rules, limits)
        replayed: dict[str, str | None] = {m.vm: m.dst for m in plan.moves}
        replayed.update({u.vm: None for u in plan.unplaced})
        for e in round_decisions:
            vm = str(e.get("vm"))
            got = replayed.pop(vm, None)
            decisions.append(ReplayedDecision(vm, str(e.get("src", "")),
                                              e.get("dst") if e.name == ev.PLACEMENT_DECIDED else None,
                                              got, _why_not(plan, vm, got)))
            decided_before.add(vm)
        extra += [ReplayedDecision(vm, snap.vms[vm].host if vm in snap.vms else "", None, dst, "not in the trail")
                  for vm, dst in replayed.items() if vm not in decided_anywhere]
        decided_anywhere |= set(replayed)  # report an extra once, not once per round
    return ReplayResult(incident, host, source, tuple(decisions), tuple(extra), tuple(dict.fromkeys(warnings)))


def _why_not(plan: planner.Plan, vm: str, dst: str | None) -> str:
    if dst is not None:
        move = next((m for m in plan.moves if m.vm == vm), None)
        return move.reason if move else ""
    unplaced = next((u for u in plan.unplaced if u.vm == vm), None)
    if unplaced is None:
        return "not planned"
    return "; ".join(f"{h}: {', '.join(r)}" for h, r in sorted(unplaced.reasons.items()) if r)


def _rebuild(cls: type, data: Any, warnings: list[str]) -> Any:
    """A rules/limits dataclass from its recorded scalar fields; the rest keep defaults."""
    if not isinstance(data, Mapping):
        return cls()
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        f = known.get(k)
        default = f.default if f is not None and f.default is not MISSING else None
        if f is not None and (v is None or v == []) and default in (None, ()):
            continue  # recorded as the default: nothing to rebuild
        if k not in known:
            warnings.append(f"recorded {cls.__name__}.{k} is unknown here; ignored")
        elif isinstance(v, (int, float, str, bool)):
            kwargs[k] = SpareMode(v) if k == "spare_mode" else v
        elif k == "escalation" and isinstance(v, list):
            kwargs[k] = escalation_steps(v)
        else:
            warnings.append(f"recorded {cls.__name__}.{k} is not a plain value; replayed with the default "
                            f"(pass --policy to replay it exactly)")
    return cls(**kwargs)


def format_result(r: ReplayResult) -> list[str]:
    """Lines for the terminal: one per decision, then the verdict."""
    out = [f"replay {r.incident} (evacuate {r.host}) with {r.rules_from}"]
    out += [f"warning: {w}" for w in r.warnings]
    for d in (*r.decisions, *r.extra):
        mark = "=" if d.match else "≠"
        rec = d.recorded_dst or "unplaced"
        rep = d.replayed_dst or "unplaced"
        note = f"  ({d.note})" if d.note and not d.match else ""
        out.append(f"  {mark} {d.vm:<16} {d.src} → recorded {rec:<10} replayed {rep}{note}")
    same = sum(d.match for d in r.decisions)
    verdict = "reproduced" if r.reproduced else "DIFFERENT"
    out.append(f"{verdict}: {same} of {len(r.decisions)} decisions match" +
               (f", {len(r.extra)} extra moves in the replay" if r.extra else ""))
    return out


def snapshot_of(events: Sequence[Event], incident: str) -> Snapshot:
    """The snapshot recorded for `incident` (for tools that want to re-plan by hand)."""
    for e in incident_events(events, incident):
        if e.name == ev.SNAPSHOT_RECORDED:
            return parse_snapshot(e.get("snapshot"), e.where)
    raise IncidentNotFound(f"{incident}: no {ev.SNAPSHOT_RECORDED}")
