"""Grading with hysteresis and host_state: pure, fast."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drctl.control.view import host_states_from
from drctl.health.grading import (Grade, HealthRecord, HostVerdict, ProbeGrade, Sample, WitnessReport, combine,
                          host_state, step)
from drctl.model.cluster import HostState
from drctl.store import KV
from drctl.store.keys import Keys

H, D, F = Grade.HEALTHY, Grade.DEGRADED, Grade.FAILING
NOW = 1000.0


def run(grades: list[Grade], n: int = 3, start: ProbeGrade = ProbeGrade()) -> list[Grade]:
    pg, out = start, []
    for i, g in enumerate(grades):
        pg = step(pg, Sample("edac", g, float(i), 1.0, "", float(i)), n)
        out.append(pg.grade)
    return out


def test_grade_changes_only_after_n_agreeing_samples() -> None:
    assert run([D, D, D, H, H, H]) == [H, H, D, D, D, H]


def test_flapping_probe_does_not_flap_the_grade() -> None:
    assert run([D, H] * 10) == [H] * 20
    assert run([F, D, F], start=ProbeGrade(D)) == [D, D, D]  # not all on the worse side


def test_mixed_worse_samples_move_to_the_closest_grade() -> None:
    assert run([D, F, F]) == [H, H, D]
    assert run([F, F, F]) == [H, H, F]
    assert run([H, D, H], start=ProbeGrade(F)) == [F, F, D]  # better side: the least better


def test_reason_travels_with_the_grade() -> None:
    pg = ProbeGrade()
    for i in range(3):
        pg = step(pg, Sample("edac", D, 12.0, 1.0, "12 new corrected", float(i)), 3)
    grade, reason, sample = combine({"edac": pg, "load": ProbeGrade()})
    assert grade is D and sample is not None
    assert reason == "edac 12 (threshold 1): 12 new corrected"


@given(st.lists(st.sampled_from([H, D, F]), max_size=40), st.integers(1, 5))
def test_every_change_is_backed_by_n_samples_on_one_side(samples: list[Grade], n: int) -> None:
    out = run(samples, n)
    prev = H
    for i, g in enumerate(out):
        if g is not prev:
            window = samples[i - n + 1: i + 1]
            assert len(window) == n
            worse = g.severity > prev.severity
            assert all((s.severity > prev.severity) == worse and s is not prev for s in window)
        prev = g


# ---------------------------------------------------------------- host_state

def health(grade: Grade = H, ts: float = NOW - 0.5) -> HealthRecord:
    return HealthRecord("hv1", grade, f"reason {grade.value}", ts, 7, 1.0, 0xABC)


def witness(name: str, reachable: bool, ts: float = NOW - 0.3) -> WitnessReport:
    return WitnessReport("hv1", name, reachable, False, ts, 1.0, 0.01 if reachable else None,
                         "" if reachable else "connection refused")


def state(h: HealthRecord | None, ws: list[WitnessReport], quorum: int = 2) -> HostVerdict:
    return host_state("hv1", h, {w.witness: w for w in ws}, quorum, NOW)


def test_lease_present_gives_the_agents_own_grade() -> None:
    for g in (H, D, F):
        v = state(health(g), [witness("hv2", False), witness("hv3", False)])
        assert v.state is g.state and v.reason == f"reason {g.value}"
        assert any("lease abc present" in e for e in v.evidence)


def test_lease_gone_and_quorum_cannot_reach_is_dead() -> None:
    v = state(None, [witness("hv2", False), witness("hv3", False)])
    assert v.state is HostState.DEAD
    assert v.evidence[0] == "lease gone (no health record)"
    assert "2 of quorum 2" in v.reason


def test_lease_gone_but_a_witness_reaches_it_is_unreachable() -> None:
    v = state(None, [witness("hv2", True), witness("hv3", False)])
    assert v.state is HostState.UNREACHABLE and "hv2" in v.reason


def test_too_few_witnesses_is_unreachable_not_dead() -> None:
    assert state(None, [witness("hv2", False)]).state is HostState.UNREACHABLE
    assert state(None, []).state is HostState.UNREACHABLE
    assert state(None, [], quorum=0).state is HostState.UNREACHABLE  # quorum 0 still needs one


def test_stale_witness_reports_do_not_count() -> None:
    v = state(None, [witness("hv2", False, ts=NOW - 30), witness("hv3", False)])
    assert v.state is HostState.UNREACHABLE
    assert any("stale" in e for e in v.evidence)


def test_stale_health_with_lease_is_unreachable() -> None:
    v = state(health(H, ts=NOW - 60), [])
    assert v.state is HostState.UNREACHABLE and "stalled" in v.reason


def test_host_states_from_store_records() -> None:
    k = Keys()
    kvs = [
        KV(k.inventory("hv1"), b"{}", 1, 1),
        KV(k.witness("hv1", "hv2"), witness("hv2", False).to_json(), 2, 2, 5),
        KV(k.witness("hv1", "hv3"), witness("hv3", False).to_json(), 3, 3, 6),
        KV(k.health("hv2"), HealthRecord("hv2", D, "edac 3", NOW, 1).to_json(), 4, 4, 9),
        KV(k.health("hv3"), b"not json", 5, 5, 9),
    ]
    out = host_states_from(kvs, k, 2, NOW)
    assert out["hv1"].state is HostState.DEAD
    assert out["hv2"].state is HostState.DEGRADED
    assert out["hv3"].state is HostState.UNREACHABLE  # an unreadable record is no evidence of life


def test_health_a_few_seconds_old_is_not_a_stall() -> None:
    """Right after an etcd restart every agent's last write is seconds old: not a stall."""
    assert state(health(H, ts=NOW - 5), []).state is HostState.HEALTHY
