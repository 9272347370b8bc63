"""Build the postmortem of one incident from its audit events (pure: events in, model out).

The report answers what operators ask after an incident: what failed, when we knew, what
drctl did and why it chose each host, how long each step took, and what each VM felt.
Numbers come from the events as recorded (libvirt's completed job statistics for
migrations), never recomputed, so the report and libvirt agree to the millisecond.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from drctl.audit import events as ev
from drctl.audit.reader import Event, UnreadableLine, intents_of, parse_ts
from drctl.model.cluster import IntentKind, IntentState

# Events about a host or the controller carry no incident id; they belong to an incident
# when they concern its host (or any host, for the controller) within its time window.
_HOST_EVENTS = frozenset({ev.HOST_STATE_CHANGED, ev.HOST_HEARTBEAT_LOST, ev.WITNESS_REPORTED, ev.HEALTH_GRADED,
                          ev.AGENT_LEASE_LOST})
_CONTROLLER_EVENTS = frozenset({ev.CONTROLLER_FROZE, ev.CONTROLLER_RESUMED, ev.CONTROLLER_DEPOSED,
                                ev.CONTROLLER_ELECTED})
_LOOKBACK = timedelta(minutes=10)  # how far before `incident.opened` its first sign may lie


class IncidentNotFound(LookupError):
    pass


class PhaseName(str, Enum):
    """The stretches of an incident the report measures."""

    DETECTION = "detection"  # first sign -> incident opened
    EVIDENCE = "evidence"  # first -> last piece of evidence a host is dead
    FENCING = "fencing"  # fence requested -> confirmed (or failed)
    DECISION = "decision"  # opened (or fenced) -> last intent written
    EXECUTION = "execution"  # first move started -> last ended
    TOTAL = "total"  # first sign -> incident closed
    FREEZE = "freeze"  # controller frozen -> resumed


@dataclass(frozen=True)
class Phase:
    name: PhaseName
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


class SegmentKind(str, Enum):
    """What one stretch of a VM's move on the timeline was."""

    MIGRATE = "migrate"  # a live migration that reached verification
    RESTART = "restart"  # a restart elsewhere that reached verification
    FAILED = "failed"  # an attempt that did not


@dataclass(frozen=True)
class Segment:
    """One stretch of a VM's move on the timeline: a migration attempt or a restart."""

    start: datetime
    end: datetime
    kind: SegmentKind
    attempt: int
    dst: str


@dataclass(frozen=True)
class VMOutcome:
    vm: str
    intent: str
    kind: IntentKind
    src: str
    dst: str
    state: IntentState  # last intent state; DONE when it worked
    attempts: int
    started: datetime | None
    ended: datetime | None
    verified: bool | None
    total_ms: int | None = None  # libvirt completed job stats (migrations)
    downtime_ms: int | None = None
    data_bytes: int | None = None
    iterations: int | None = None
    mode: str = ""
    switched_at: datetime | None = None  # when the VM changed hosts (its downtime sits here)
    boot_ms: int | None = None  # restarts
    outage_s: float | None = None  # restarts: last sign of life of the dead host -> running again
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class RecordedCandidate:
    host: str
    eligible: bool
    score: float | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RecordedPlacement:
    ts: datetime
    vm: str
    src: str
    dst: str | None  # None: no eligible host
    score: float | None
    reason: str
    candidates: tuple[RecordedCandidate, ...]


class AnomalyKind(str, Enum):
    """What went other than planned during an incident."""

    RETRY = "retry"  # a transient failure, retried
    FAILURE = "failure"  # a migration attempt or an intent failed
    ABORT = "abort"  # a migration or an intent was aborted
    FALLBACK = "fallback"  # an intent moved on to its next destination
    ESCALATION = "escalation"  # a non-converging migration took an escalation step
    FREEZE = "freeze"  # the controller froze, resumed or lost leadership
    FENCE = "fence"  # fencing failed
    UNVERIFIED = "unverified"  # a moved VM could not be verified
    UNPLACED = "unplaced"  # no eligible host for a VM
    OUTCOME = "outcome"  # the incident closed other than resolved
    UNFINISHED = "unfinished"  # an intent still open when the trail ends


@dataclass(frozen=True)
class Anomaly:
    ts: datetime
    kind: AnomalyKind
    vm: str
    text: str


@dataclass(frozen=True)
class TimelineItem:
    ts: datetime
    event: str
    component: str
    level: str
    text: str


@dataclass(frozen=True)
class Report:
    incident: str
    host: str
    kind: str  # incident.opened's kind (control.tick.IncidentKind values), "" when not recorded
    trigger: str
    policy: str
    first_sign: datetime
    opened: datetime
    closed: datetime | None
    outcome: str
    what_failed: str
    what_done: str
    phases: tuple[Phase, ...]
    vms: tuple[VMOutcome, ...]
    decisions: tuple[RecordedPlacement, ...]
    anomalies: tuple[Anomaly, ...]
    timeline: tuple[TimelineItem, ...]
    freezes: tuple[Phase, ...] = ()
    omitted_progress: int = 0
    problems: tuple[UnreadableLine, ...] = ()

    @property
    def end(self) -> datetime:
        ends = [self.closed or self.opened] + [v.ended for v in self.vms if v.ended]
        return max(ends)


# ---------------------------------------------------------------- selecting an incident's events


def incidents(events: Sequence[Event]) -> list[str]:
    """Ids of every incident opened in `events`, in order."""
    return list(dict.fromkeys(e["incident"] for e in events if e.name == ev.INCIDENT_OPENED and e.get("incident")))


def incident_events(events: Sequence[Event], incident: str) -> list[Event]:
    opened = _first(events, ev.INCIDENT_OPENED, incident=incident)
    if opened is None:
        known = ", ".join(incidents(events)) or "none"
        raise IncidentNotFound(f"no incident.opened for {incident!r} (incidents found: {known})")
    intents = intents_of(events, incident)
    mine = [e for e in events if e.get("incident") == incident or e.get("intent") in intents]
    start = _first_sign(events, opened)
    end = max(e.ts for e in mine)
    host = opened.get("host")
    seen = {id(e) for e in mine}
    for e in events:
        related = (e.name in _HOST_EVENTS and e.get("host") == host) or e.name in _CONTROLLER_EVENTS
        if related and start <= e.ts <= end and id(e) not in seen:
            mine.append(e)
    return sorted(mine, key=lambda e: e.ts)


def _first_sign(events: Sequence[Event], opened: Event) -> datetime:
    """Earliest sign of this episode: the host leaving healthy, or its last heartbeat.

    Only the latest such sign of each writer counts: the files of a long-running agent
    also hold earlier episodes of the same host (left healthy, recovered, left again)."""
    host, signs = opened.get("host"), [opened.ts]
    latest: dict[tuple[str, str], datetime] = {}
    for e in events:
        if e.get("host") != host or not (opened.ts - _LOOKBACK <= e.ts <= opened.ts):
            continue
        if e.name in (ev.HOST_STATE_CHANGED, ev.HEALTH_GRADED) and e.get("from") == "healthy":
            latest[(e.name, str(e.get("component", "")))] = e.ts
        elif e.name == ev.HOST_HEARTBEAT_LOST:
            latest[(e.name, str(e.get("component", "")))] = _ts_or(e.get("last_seen"), e.ts)
    return min([*signs, *latest.values()])


# ---------------------------------------------------------------- building the report


def build_report(events: Sequence[Event], incident: str, problems: Sequence[UnreadableLine] = ()) -> Report:
    """The postmortem model of `incident`. Raises IncidentNotFound."""
    evs = incident_events(events, incident)
    opened = _first(evs, ev.INCIDENT_OPENED)
    closed = _first(evs, ev.INCIDENT_CLOSED)
    assert opened is not None
    first_sign = _first_sign(events, opened)
    vms = tuple(_vm_outcomes(evs, first_sign))
    freezes = tuple(_freezes(evs))
    return Report(
        incident=incident,
        host=str(opened.get("host", "")),
        kind=str(opened.get("kind", "")),
        trigger=str(opened.get("trigger", "")),
        policy=str(opened.get("policy", "")),
        first_sign=first_sign,
        opened=opened.ts,
        closed=closed.ts if closed else None,
        outcome=str(closed.get("outcome", "")) if closed else "open (no incident.closed recorded)",
        what_failed=_what_failed(evs, opened),
        what_done=_what_done(evs, vms, closed),
        phases=tuple(_phases(evs, first_sign, opened, closed, vms)),
        vms=vms,
        decisions=tuple(_decisions(evs)),
        anomalies=tuple(_anomalies(evs, vms)),
        timeline=tuple(_timeline(evs)),
        freezes=freezes,
        omitted_progress=sum(1 for e in evs if e.name == ev.MIGRATION_PROGRESSED),
        problems=tuple(problems),
    )


def _what_failed(evs: Sequence[Event], opened: Event) -> str:
    host = opened.get("host")
    changes = [f"{e.get('from')} → {e.get('to')} ({e.get('reason', '')})"
               for e in evs if e.name == ev.HOST_STATE_CHANGED and e.get("host") == host]
    lost = [e for e in evs if e.name == ev.HOST_HEARTBEAT_LOST and e.get("host") == host]
    parts = ([f"heartbeat lost (last seen {e.get('last_seen', '?')})" for e in lost[:1]] + changes)
    return f"{host}: " + "; ".join(parts) if parts else f"{host}: {opened.get('trigger', '')}"


def _what_done(evs: Sequence[Event], vms: Sequence[VMOutcome], closed: Event | None) -> str:
    parts = []
    fenced = [e for e in evs if e.name == ev.FENCE_SUCCEEDED]
    if fenced:
        parts.append(f"fenced {fenced[0].get('host')} ({fenced[0].get('agent')})")
    for kind, verb in ((IntentKind.MIGRATE, "live-migrated"), (IntentKind.RESTART, "restarted")):
        mine = [v for v in vms if v.kind is kind]
        if mine:
            done = sum(v.state is IntentState.DONE for v in mine)
            parts.append(f"{verb} {done} of {len(mine)} VMs")
    unplaced = sum(1 for e in evs if e.name == ev.PLACEMENT_FAILED)
    if unplaced:
        parts.append(f"{unplaced} VMs could not be placed")
    if closed is not None and closed.get("reason"):
        parts.append(f"closed: {closed.get('reason')}")
    return "; ".join(parts) or "nothing recorded"


def _phases(evs: Sequence[Event], first_sign: datetime, opened: Event, closed: Event | None,
            vms: Sequence[VMOutcome]) -> list[Phase]:
    phases = [Phase(PhaseName.DETECTION, first_sign, opened.ts)]
    evidence = [e.ts for e in evs if e.name == ev.EVIDENCE_RECORDED]
    if evidence:
        phases.append(Phase(PhaseName.EVIDENCE, min(evidence), max(evidence)))
    fence_start = _first(evs, ev.FENCE_REQUESTED)
    fence_end = _first(evs, ev.FENCE_SUCCEEDED) or _first(evs, ev.FENCE_FAILED)
    if fence_start:
        phases.append(Phase(PhaseName.FENCING, fence_start.ts, fence_end.ts if fence_end else fence_start.ts))
    created = [e.ts for e in evs if e.name in (ev.INTENT_CREATED, ev.PLACEMENT_FAILED)]
    if created:
        # a restart plan can only be made once fencing is confirmed: measure from there
        decide_from = fence_end.ts if fence_end and fence_end.ts < max(created) else opened.ts
        phases.append(Phase(PhaseName.DECISION, decide_from, max(created)))
    starts = [v.started for v in vms if v.started]
    ends = [v.ended for v in vms if v.ended]
    if starts and ends:
        phases.append(Phase(PhaseName.EXECUTION, min(starts), max(ends)))
    last = closed.ts if closed else max(e.ts for e in evs)
    phases.append(Phase(PhaseName.TOTAL, first_sign, last))
    return phases


def _freezes(evs: Sequence[Event]) -> list[Phase]:
    out, since = [], None
    for e in evs:
        if e.name == ev.CONTROLLER_FROZE and since is None:
            since = e.ts
        elif e.name == ev.CONTROLLER_RESUMED and since is not None:
            out.append(Phase(PhaseName.FREEZE, since, e.ts))
            since = None
    if since is not None:
        out.append(Phase(PhaseName.FREEZE, since, evs[-1].ts))
    return out


def _vm_outcomes(evs: Sequence[Event], first_sign: datetime) -> list[VMOutcome]:
    order = list(dict.fromkeys(e["intent"] for e in evs if e.get("intent") and e.name in
                               (ev.INTENT_CREATED, ev.INTENT_STATE_CHANGED)))
    return [_vm_outcome([e for e in evs if e.get("intent") == i], first_sign) for i in order]


def _vm_outcome(evs: Sequence[Event], first_sign: datetime) -> VMOutcome:
    created = _first(evs, ev.INTENT_CREATED)
    head = created or evs[0]
    intent, vm, src, dst = head["intent"], str(head.get("vm", "?")), str(head.get("src", "")), str(head.get("dst", ""))
    # an unknown kind was always drawn as a migration
    kind = IntentKind.RESTART if created and created.get("kind") == IntentKind.RESTART.value else IntentKind.MIGRATE
    state, attempts, started, ended, verified = IntentState.PENDING, 1, None, None, None
    segments: list[Segment] = []
    seg_start: tuple[datetime, int, str] | None = None
    stats: Event | None = None
    restarted: Event | None = None
    job_started: dict[int, datetime] = {}  # attempt -> when its libvirt migration was called
    for e in evs:
        attempts = max(attempts, int(e.get("attempt") or 1))
        dst = str(e.get("dst") or dst)
        if e.name == ev.INTENT_STATE_CHANGED:
            to = _intent_state(e.get("to"))
            state = to or state  # a state this version does not know leaves the last known one
            started = started or e.ts
            if to is IntentState.MIGRATING:
                seg_start = (e.ts, int(e.get("attempt") or 1), dst)
            elif seg_start is not None and _intent_state(e.get("from")) is IntentState.MIGRATING:
                seg_kind = SegmentKind.FAILED
                if to is IntentState.VERIFYING:
                    seg_kind = SegmentKind.RESTART if kind is IntentKind.RESTART else SegmentKind.MIGRATE
                segments.append(Segment(seg_start[0], e.ts, seg_kind, seg_start[1], seg_start[2]))
                seg_start = None
            if to is not None and to.terminal:
                ended = e.ts
        elif e.name == ev.MIGRATION_STARTED:
            job_started[int(e.get("attempt") or 1)] = e.ts
        elif e.name == ev.MIGRATION_COMPLETED:
            stats = e
        elif e.name == ev.VM_RESTARTED:
            restarted = e
        elif e.name == ev.VM_VERIFIED:
            verified = bool(e.get("ok"))
    if seg_start is not None:  # still migrating when the trail ends
        segments.append(Segment(seg_start[0], evs[-1].ts, SegmentKind.FAILED, seg_start[1], seg_start[2]))
    switched_at = (stats or restarted).ts if (stats or restarted) else None
    total = _int(stats, "total_ms")
    job_start = job_started.get(int(stats.get("attempt") or 1)) if stats else None
    if job_start is not None and total is not None:
        # libvirt's job ran from the migration call for total_ms; the switch-over (its
        # downtime) ends it. The runner notices a little later: draw libvirt's numbers.
        switched_at = job_start + timedelta(milliseconds=total)
        segments = [replace(s, start=job_start, end=switched_at)
                    if s.kind is SegmentKind.MIGRATE and s.attempt == int(stats.get("attempt") or 1) else s  # type: ignore[union-attr]
                    for s in segments]
    return VMOutcome(
        vm=vm, intent=intent, kind=kind, src=src, dst=dst, state=state, attempts=attempts,
        started=started, ended=ended, verified=verified,
        total_ms=_int(stats, "total_ms"), downtime_ms=_int(stats, "downtime_ms"),
        data_bytes=_int(stats, "data_bytes"), iterations=_int(stats, "iterations"),
        mode=str(stats.get("mode", "")) if stats else "",
        switched_at=switched_at,
        boot_ms=_int(restarted, "boot_ms"),
        outage_s=(restarted.ts - first_sign).total_seconds() if restarted else None,
        segments=tuple(segments),
    )


def _decisions(evs: Sequence[Event]) -> list[RecordedPlacement]:
    out = []
    for e in evs:
        if e.name not in (ev.PLACEMENT_DECIDED, ev.PLACEMENT_FAILED):
            continue
        cands = tuple(RecordedCandidate(str(c.get("host", "?")), bool(c.get("eligible")), c.get("score"),
                                tuple(str(r) for r in c.get("reasons") or ()))
                      for c in e.get("candidates") or () if isinstance(c, dict))
        dst = e.get("dst") if e.name == ev.PLACEMENT_DECIDED else None
        # the chosen host first, then the eligible by score, then the rejected
        cands = tuple(sorted(cands, key=lambda c: (c.host != dst, not c.eligible, -(c.score or 0.0), c.host)))
        out.append(RecordedPlacement(e.ts, str(e.get("vm", "?")), str(e.get("src", "")), dst, e.get("score"),
                            str(e.get("reason", "")), cands))
    return out


def _anomalies(evs: Sequence[Event], vms: Sequence[VMOutcome]) -> list[Anomaly]:
    out = []
    for e in evs:
        vm = str(e.get("vm", ""))
        a = _anomaly_text(e)
        if a:
            out.append(Anomaly(e.ts, a[0], vm, a[1]))
    for v in vms:
        if v.ended is None:
            out.append(Anomaly(evs[-1].ts, AnomalyKind.UNFINISHED, v.vm, f"{v.vm}: intent {v.intent} still {v.state.value}"))
    return out


def _anomaly_text(e: Event) -> tuple[AnomalyKind, str] | None:
    g, vm = e.get, e.get("vm", "")
    if e.name == ev.RETRY_SCHEDULED:
        return AnomalyKind.RETRY, f"{vm}: retry after attempt {g('attempt')} in {g('sleep_s')} s ({g('error', '')})"
    if e.name == ev.MIGRATION_FAILED:
        how = "transient" if g("transient") else "permanent"
        return AnomalyKind.FAILURE, f"{vm}: attempt {g('attempt')} to {g('dst')} failed (code {g('code', '?')}, {how}): {g('error')}"
    if e.name == ev.MIGRATION_ABORTED:
        return AnomalyKind.ABORT, f"{vm}: migration aborted: {g('reason')}"
    if e.name == ev.INTENT_STATE_CHANGED and (to := _intent_state(g("to"))) in (IntentState.FAILED,
                                                                                  IntentState.ABORTED):
        return (AnomalyKind.ABORT if to is IntentState.ABORTED else AnomalyKind.FAILURE), f"{vm}: intent {g('to')}: {g('reason')}"
    if e.name == ev.INTENT_RETARGETED:
        return AnomalyKind.FALLBACK, f"{vm}: fell back from {g('old_dst')} to {g('dst')}: {g('reason')}"
    if e.name == ev.MIGRATION_ESCALATED:
        return AnomalyKind.ESCALATION, f"{vm}: escalated to {g('step')}: {g('reason')}"
    if e.name in (ev.CONTROLLER_FROZE, ev.CONTROLLER_RESUMED, ev.CONTROLLER_DEPOSED):
        return AnomalyKind.FREEZE, f"controller {e.name.split('.')[1]} (term {g('term')}): {g('reason')}"
    if e.name == ev.FENCE_FAILED:
        return AnomalyKind.FENCE, f"fencing {g('host')} with {g('agent')} failed: {g('error')}"
    if e.name == ev.VM_VERIFIED and not g("ok"):
        return AnomalyKind.UNVERIFIED, f"{vm}: verification on {g('host')} failed: {g('detail', '')}"
    if e.name == ev.PLACEMENT_FAILED:
        return AnomalyKind.UNPLACED, f"{vm}: no eligible host: {g('reason')}"
    if e.name == ev.INCIDENT_CLOSED and g("outcome") != ev.IncidentOutcome.RESOLVED:
        return AnomalyKind.OUTCOME, f"incident closed {g('outcome')}: {g('reason', '')}"
    return None


def _timeline(evs: Sequence[Event]) -> list[TimelineItem]:
    return [TimelineItem(e.ts, e.name, str(e.get("component", "")), str(e.get("level", "info")), describe_event(e))
            for e in evs if e.name != ev.MIGRATION_PROGRESSED]


def describe_event(e: Event) -> str:
    """One human sentence for an event (used by the timeline)."""
    g = e.get
    texts = {
        ev.HOST_STATE_CHANGED: lambda: f"{g('host')}: {g('from')} → {g('to')} ({g('reason')})",
        ev.HEALTH_GRADED: lambda: f"{g('host')} (agent): {g('from')} → {g('to')} ({g('reason')})",
        ev.HOST_HEARTBEAT_LOST: lambda: f"{g('host')}: heartbeat lease expired (last seen {g('last_seen', '?')})",
        ev.WITNESS_REPORTED: lambda: f"{g('witness')} {'reaches' if g('reachable') else 'cannot reach'} "
                                     f"{g('host')}: {g('detail', '')}",
        ev.INCIDENT_OPENED: lambda: f"incident opened for {g('host')}: {g('trigger')}, policy {g('policy')}",
        ev.INCIDENT_CLOSED: lambda: f"incident closed: {g('outcome')} ({g('reason', '')})",
        ev.SNAPSHOT_RECORDED: lambda: f"snapshot recorded: {_count(g('snapshot'), 'hosts')} hosts, "
                                      f"{_count(g('snapshot'), 'vms')} VMs",
        ev.PLACEMENT_DECIDED: lambda: f"{g('vm')}: place on {g('dst')} (score {g('score')}, "
                                      f"{len(g('candidates') or ())} candidates)",
        ev.INTENT_CREATED: lambda: f"{g('vm')}: intent {g('intent')} {g('kind')} {g('src')} → {g('dst')}",
        ev.INTENT_STATE_CHANGED: lambda: f"{g('vm')}: {g('from')} → {g('to')} (attempt {g('attempt')}; {g('reason')})",
        ev.MIGRATION_STARTED: lambda: f"{g('vm')}: migration {g('src')} → {g('dst')} started (attempt {g('attempt')})",
        ev.MIGRATION_COMPLETED: lambda: f"{g('vm')}: migrated {g('src')} → {g('dst')} in {g('total_ms')} ms, "
                                        f"downtime {g('downtime_ms')} ms, {_bytes(g('data_bytes'))}, "
                                        f"{g('iterations')} iterations",
        ev.VM_RESTARTED: lambda: f"{g('vm')}: restarted on {g('dst')} (boot {g('boot_ms')} ms)",
        ev.VM_VERIFIED: lambda: f"{g('vm')}: {'verified' if g('ok') else 'NOT verified'} on {g('host')} "
                                f"({g('detail', '')})",
        ev.EVIDENCE_RECORDED: lambda: f"evidence on {g('host')} ({g('kind')}): {g('detail')}",
        ev.FENCE_REQUESTED: lambda: f"fence {g('host')} with {g('agent')} requested",
        ev.FENCE_SUCCEEDED: lambda: f"fenced {g('host')} with {g('agent')}: {g('detail', '')}",
        ev.TICK_COMPLETED: lambda: str(g("sentence")),
    }
    if e.name in texts:
        return texts[e.name]()
    found = _anomaly_text(e)
    return found[1] if found else ", ".join(f"{k}={v}" for k, v in e.data.items()
                                            if k not in ("ts", "event", "component", "level", "prev"))


# ---------------------------------------------------------------- small helpers


def _intent_state(raw: Any) -> IntentState | None:
    """An intent state as the trail names it; None for a name this version does not know."""
    try:
        return IntentState(raw)
    except ValueError:
        return None


def _first(evs: Sequence[Event], name: str, **match: Any) -> Event | None:
    return next((e for e in evs if e.name == name and all(e.get(k) == v for k, v in match.items())), None)


def _ts_or(text: Any, default: datetime) -> datetime:
    try:
        return parse_ts(str(text)) if text else default
    except ValueError:
        return default


def _int(e: Event | None, key: str) -> int | None:
    v = e.get(key) if e else None
    return int(v) if isinstance(v, (int, float)) else None


def _count(obj: Any, key: str) -> int:
    return len(obj.get(key) or ()) if isinstance(obj, dict) else 0


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "? bytes"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def human_bytes(n: int | None) -> str:
    return "–" if n is None else _bytes(n)
