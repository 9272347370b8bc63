"""Health grading and host state: the pure core of the health watchers (no I/O).

Two questions live here:

- *How is this host doing?* (the agent asks it of itself): every probe sample has a grade;
  `step` filters one probe's samples with hysteresis, so a flapping probe does not flap
  the grade, and `combine` takes the worst filtered grade of all probes. The reason
  (probe, value, threshold) travels with the grade.
- *What state is that host in?* (the controller asks it of every host): `host_state`
  combines the host's own health record (present only while its lease lives), and the
  witness reports of its peers into one HostState with the evidence for it.

The records come parsed (drctl.model.records); reading them from etcd is drctl.control.view's
job. This module does no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from drctl.model.cluster import HostState
from drctl.model.records import Grade, HealthRecord, WitnessReport

__all__ = ["Grade", "HealthRecord", "WitnessReport", "Sample", "ProbeGrade", "step", "combine", "HostVerdict",
           "host_state", "quorum_for", "RecordAges"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@dataclass(frozen=True)
class Sample:
    """One probe result: what was measured, against which threshold, and its grade."""

    probe: str
    grade: Grade
    value: float | None = None
    threshold: float | None = None  # the threshold the grade was decided by (None: none crossed)
    detail: str = ""
    ts: float = 0.0

    @property
    def reason(self) -> str:
        text = f"{self.probe} {_fmt(self.value)}"
        if self.threshold is not None:
            text += f" (threshold {_fmt(self.threshold)})"
        return f"{text}: {self.detail}" if self.detail else text

    def to_json(self) -> dict[str, Any]:
        return {"grade": self.grade.value, "value": self.value, "threshold": self.threshold,
                "detail": self.detail, "ts": self.ts}


# ---------------------------------------------------------------- grading with hysteresis


@dataclass(frozen=True)
class ProbeGrade:
    """One probe's filtered grade and the hysteresis state behind it.

    `candidate`/`streak`: samples in a row that disagreed with `grade` on the same side
    (all worse, or all better). After `samples_needed` of them the grade moves to the
    candidate, the disagreeing grade closest to the current one, so three samples of
    "degraded, failing, degraded" move a healthy probe to degraded, not to failing.
    """

    grade: Grade = Grade.HEALTHY
    sample: Sample | None = None  # the latest sample that agrees with `grade` (the reason)
    candidate: Grade | None = None
    streak: int = 0


def step(prev: ProbeGrade, sample: Sample, samples_needed: int) -> ProbeGrade:
    """The probe's grade after one more sample."""
    if sample.grade is prev.grade:
        return ProbeGrade(prev.grade, sample)
    worse = sample.grade.severity > prev.grade.severity
    same_side = prev.candidate is not None and (prev.candidate.severity > prev.grade.severity) == worse
    if same_side:
        assert prev.candidate is not None
        closer = min if worse else max
        candidate = closer(prev.candidate, sample.grade, key=lambda g: g.severity)
        streak = prev.streak + 1
    else:
        candidate, streak = sample.grade, 1
    if streak >= max(1, samples_needed):
        return ProbeGrade(candidate, sample)
    return replace(prev, candidate=candidate, streak=streak)


def combine(grades: Mapping[str, ProbeGrade]) -> tuple[Grade, str, Sample | None]:
    """The host's grade: the worst filtered probe grade, with that probe's reason."""
    worst: tuple[Grade, str, Sample | None] = (Grade.HEALTHY, "all probes healthy", None)
    for name in sorted(grades):
        pg = grades[name]
        if pg.grade.severity > worst[0].severity:
            reason = pg.sample.reason if pg.sample is not None else name
            worst = (pg.grade, reason, pg.sample)
    return worst


@dataclass
class FailureSpan:
    """How long one witness's checks of one peer have been failing without a success between.

    A witness confirms a peer down only once its failures span at least one lease TTL
    (docs/health.md, "Witnesses"): a NIC blip or a slow libvirtd shorter than that says
    nothing a lease would not also say, and must not help declare a live host dead.
    """

    since: float | None = None  # monotonic time of the first failure of the current run

    def observe(self, ok: bool, now: float) -> float:
        """Record one check; seconds the failures have lasted so far (0 after a success)."""
        if ok:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = now
        return now - self.since


# ---------------------------------------------------------------- host state


@dataclass(frozen=True)
class HostVerdict:
    host: str
    state: HostState
    reason: str
    evidence: tuple[str, ...] = ()
    lease_present: bool = True  # the health record (bound to the agent's lease) exists
    witnesses_confirm_down: bool = False  # a quorum of fresh witnesses cannot reach its libvirtd


# A record is stale when its writer missed this many of its own intervals (and at least
# STALE_MIN_S): a slow tick is not a stall, and clocks of different hosts differ a little.
STALE_INTERVALS = 3.0
STALE_MIN_S = 3.0


# A host's own health record (its lease still alive) counts as stalled only after this
# long: an etcd restart or a slow reconnect leaves every agent's last write seconds old
# (seen: 0.6 s of false "unreachable" right after an etcd restart under full CPU load with
# 3 s), and a stalled agent loop is not urgent - its lease proves the host is up.
STALLED_MIN_S = 10.0


@dataclass(frozen=True)
class RecordAges:
    """How old a host's health record and its witnesses' reports are, judged by the reader
    alone: seconds on the reader's own monotonic clock since it saw each record's etcd
    revision change (drctl.control.view.RecordClock). Another machine's clock never enters:
    a host whose clock is behind writes `ts` values that look old to everyone else.

    health: seconds the reader has seen the health record unchanged; witnesses: witness ->
    the same for its report. Both are lower bounds for records that were already there at
    the reader's first read.
    """

    health: float = 0.0
    witnesses: Mapping[str, float] = field(default_factory=dict)


def _age(ts: float, now: float, judged: float | None, ages: RecordAges | None) -> float | None:
    """A record's age: the reader's own measure if it has one, else `now - ts` (a one-shot
    reader, e.g. `drctl status`, which has seen no revision change to measure by)."""
    return now - ts if ages is None else judged


def _is_stale(age: float | None, interval_s: float, minimum: float = STALE_MIN_S) -> bool:
    return age is None or age > max(STALE_INTERVALS * interval_s, minimum)


def quorum_for(witnesses: int, configured: int | None = None) -> int:
    """How many witnesses must confirm a host's libvirtd unreachable (its lease being
    gone) before it is DEAD. The one quorum rule; docs/health.md states it.

    witnesses: the peers that witness this host, i.e. that have a report about it in etcd
    (each agent watches its `witnesses` ring successors and its reports live with its
    lease, so this counts the host's assigned, living witnesses - 2 with the shipped
    configuration, fewer in a cluster of 2 or when a witness is gone too).
    configured: a fixed quorum (controller `witness_quorum` or the policy's); None means
    a majority of those witnesses: witnesses // 2 + 1. Never below 1: a gone lease alone
    is not proof of death (a partition from etcd also removes it).
    """
    if configured is not None:
        return max(1, configured)
    return max(1, witnesses // 2 + 1)


def default_quorum(witnesses: int) -> int:
    """A majority of the witnesses a host has (`quorum_for` with no fixed quorum)."""
    return quorum_for(witnesses)


def host_state(host: str, health: HealthRecord | None, witnesses: Mapping[str, WitnessReport],
               quorum: int | None, now: float, ages: RecordAges | None = None) -> HostVerdict:
    """Combine a host's own report, its lease and its witnesses' reports into one state.

    health: its health record, None when the key is gone (the key is bound to the agent's
    lease, so absent = lease expired or never granted). witnesses: peer -> report about
    this host (each present only while that peer's lease lives). quorum: how many fresh
    witnesses must confirm they cannot reach its libvirtd before it counts as dead; None:
    a majority of the witnesses it has (`quorum_for`). ages: how old the records are by
    the reader's own clock (RecordAges); None for a one-shot reader, which falls back to
    comparing the writers' `ts` with `now` (only the controller's repeated reads can tell
    a record's age without trusting another host's clock).
    """
    quorum = quorum_for(len(witnesses), quorum)
    age = {w: _age(r.ts, now, ages.witnesses.get(w) if ages else None, ages) for w, r in witnesses.items()}

    def ago(w: str) -> str:
        a = age[w]
        return "not yet seen rewritten" if a is None else f"{a:.1f}s old"

    fresh = {w: r for w, r in sorted(witnesses.items()) if not _is_stale(age[w], r.interval_s)}
    evidence = [f"witness {w}: {'reaches' if r.libvirt_reachable else 'cannot reach'} libvirtd"
                f"{', sees lease' if r.lease_seen else ', lease not seen'}"
                f"{' (' + r.detail + ')' if r.detail and not r.libvirt_reachable else ''}, {age[w] or 0.0:.1f}s ago"
                for w, r in fresh.items()]
    evidence += [f"witness {w}: report stale ({ago(w)})" for w, r in sorted(witnesses.items()) if w not in fresh]
    if health is not None:
        lease = f"lease {health.lease:x} present" if health.lease else "health record present"
        health_age = _age(health.ts, now, ages.health if ages else None, ages) or 0.0
        if _is_stale(health_age, health.interval_s, STALLED_MIN_S):
            # The lease keepalive runs in its own thread: a stuck agent loop keeps the
            # lease but stops reporting. We know nothing current about the host.
            return HostVerdict(host, HostState.UNREACHABLE,
                               f"{lease} but its health report is {health_age:.1f}s old (agent stalled?)",
                               (lease, f"last report seq {health.seq}: {health.grade.value}", *evidence))
        return HostVerdict(host, health.grade.state, health.reason,
                           (f"{lease}, report seq {health.seq} {health_age:.1f}s ago", *evidence))
    reaching = [w for w, r in fresh.items() if r.libvirt_reachable]
    confirming = [w for w, r in fresh.items() if not r.libvirt_reachable]
    evidence.insert(0, "lease gone (no health record)")
    if reaching:
        return HostVerdict(host, HostState.UNREACHABLE,
                           f"lease gone but {', '.join(reaching)} still reach its libvirtd", tuple(evidence),
                           lease_present=False)
    if len(confirming) >= quorum:
        return HostVerdict(host, HostState.DEAD,
                           f"lease gone and {len(confirming)} of quorum {quorum} witnesses cannot reach its libvirtd "
                           f"({', '.join(confirming)})", tuple(evidence),
                           lease_present=False, witnesses_confirm_down=True)
    return HostVerdict(host, HostState.UNREACHABLE,
                       f"lease gone; only {len(confirming)} witnesses confirm, quorum is {quorum}", tuple(evidence),
                       lease_present=False)
