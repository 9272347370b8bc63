"""Postmortem reports (and replay) built from the recorded sample trail in tests/data/audit."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.requires import needs
from click.testing import CliRunner

from drctl.audit import events as ev
from drctl.audit.reader import Event, read_files
from drctl.cli.main import cli
from drctl.audit.postmortem import IncidentNotFound, build_report
from drctl.audit.report_html import render_html, render_markdown, timeline_svg
from tests import chromium

ROOT = Path(__file__).parent.parent.parent
SAMPLE = ROOT / "tests" / "data" / "audit"
FILES = sorted(str(p) for p in SAMPLE.glob("*.log*"))
HV3, HV5 = "inc-20250314-0900-hv3", "inc-20250314-0920-hv5"


@pytest.fixture(scope="module")
def log():
    return read_files(FILES)


def _recorded_stats() -> dict[str, dict]:
    """migration.completed straight from the files, without any drctl reader."""
    out = {}
    for f in FILES:
        for line in Path(f).read_text().splitlines():
            obj = json.loads(line)
            if obj["event"] == "migration.completed":
                out[obj["vm"]] = obj
    return out


def test_report_names_every_vm_with_the_recorded_job_statistics(log) -> None:
    r = build_report(log.events, HV3)
    stats = _recorded_stats()
    assert {v.vm for v in r.vms} == {"web-1", "web-2", "db-1"}
    html, md = render_html(r), render_markdown(r)
    for v in r.vms:
        s = stats[v.vm]
        assert (v.src, v.dst, v.total_ms, v.downtime_ms, v.data_bytes, v.iterations) == \
               (s["src"], s["dst"], s["total_ms"], s["downtime_ms"], s["data_bytes"], s["iterations"])
        assert v.state == "done" and v.verified
        for text in (html, md):
            row = f"{v.vm}</td><td>{v.src}</td><td>{v.dst}</td>" if text is html else f"| {v.vm} | {v.src} | {v.dst} |"
            assert row in text
            assert f"{s['total_ms']} ms" in text and f"{s['downtime_ms']} ms" in text


def test_summary_and_phases_of_a_live_evacuation(log) -> None:
    r = build_report(log.events, HV3)
    assert r.host == "hv3" and r.outcome == "resolved" and "degraded" in r.what_failed
    assert r.what_done.startswith("live-migrated 3 of 3 VMs")
    phases = {p.name: p.seconds for p in r.phases}
    assert list(phases) == ["detection", "decision", "execution", "total"]
    assert phases["detection"] == pytest.approx(0.010) and phases["total"] == pytest.approx(60.18)
    web2 = next(v for v in r.vms if v.vm == "web-2")
    assert web2.attempts == 2 and [s.kind for s in web2.segments] == ["failed", "migrate"]


def test_anomalies_retry_failure_fallback_escalation(log) -> None:
    r = build_report(log.events, HV3)
    kinds = [(a.kind, a.vm) for a in r.anomalies]
    assert kinds == [("failure", "web-2"), ("retry", "web-2"), ("fallback", "db-1"), ("escalation", "db-1")]
    assert "fell back from hv2 to hv4" in r.anomalies[2].text


def test_decisions_carry_candidates_and_rejections(log) -> None:
    r = build_report(log.events, HV3)
    db1 = next(d for d in r.decisions if d.vm == "db-1")
    assert db1.dst == "hv2" and db1.candidates[0].host == "hv2"
    hv1 = next(c for c in db1.candidates if c.host == "hv1")
    assert not hv1.eligible and "anti-affinity" in hv1.reasons[0]
    assert "anti-affinity: db-2 (group db) runs on hv1" in render_html(r)


def test_dead_host_phases_restarts_and_freeze(log) -> None:
    r = build_report(log.events, HV5)
    phases = {p.name: round(p.seconds, 3) for p in r.phases}
    assert phases == {"detection": 2.05, "evidence": 8.93, "fencing": 4.39, "decision": 0.032,
                      "execution": 7.96, "total": 20.09}
    assert [(v.vm, v.kind, v.dst, v.boot_ms) for v in r.vms] == [("app-1", "restart", "hv4", 5100),
                                                                  ("app-2", "restart", "hv1", 5800)]
    assert r.vms[0].outage_s == pytest.approx(16.39)
    assert [a.kind for a in r.anomalies] == ["freeze", "freeze"] and len(r.freezes) == 1
    assert "fenced hv5 (ipmi)" in r.what_done
    # host and witness lines carry no incident id but belong to its window
    assert {"witness.reported", "host.heartbeat_lost"} <= {t.event for t in r.timeline}


def test_html_is_self_contained(log) -> None:
    html = render_html(build_report(log.events, HV5))
    assert "<svg" in html and "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=|@import|url\(\s*['"]?(https?:|//)""", html)
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only


def test_timeline_chart_has_a_bar_per_phase_and_move_and_downtime_markers(log) -> None:
    svg = timeline_svg(build_report(log.events, HV3))
    for label in ("detection", "decision", "web-1", "web-2", "db-1"):
        assert f">{label}</text>" in svg
    assert svg.count("downtime 168 ms") == 1 and svg.count("downtime 41 ms") == 1
    assert "attempt 1 → hv2: failed" in svg


def test_report_survives_damaged_lines_and_lists_them(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    shutil.copytree(SAMPLE, d, ignore=shutil.ignore_patterns("*.py"))
    with open(d / "runner-c1.log", "a") as fh:
        fh.write('{"ts":"2025-03-14T09:30:00.000Z","event":"vm.ver')
    out = tmp_path / "r.md"
    res = CliRunner().invoke(cli, ["postmortem", HV3, *map(str, sorted(d.glob("*.log*"))), "--out", str(out),
                                   "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "runner-c1.log:55: truncated line" in res.stderr
    assert "runner-c1.log:55: truncated" in out.read_text()


def test_unknown_incident_is_bad_input(tmp_path: Path, log) -> None:
    with pytest.raises(IncidentNotFound, match=HV3):
        build_report(log.events, "inc-nope")
    res = CliRunner().invoke(cli, ["postmortem", "inc-nope", *FILES, "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "incidents found" in res.output


def test_sample_trail_follows_the_schema(log) -> None:
    assert {e.name for e in log.events} <= set(ev.SCHEMA)
    assert [(e.where, ev.missing_fields(e.data)) for e in log.events if ev.missing_fields(e.data)] == []
    doc = (ROOT / "docs" / "audit.md").read_text()  # the audit schema is documented there
    assert [name for name in ev.SCHEMA if f"`{name}`" not in doc] == []
    for spec in ev.SCHEMA.values():
        assert "prev" not in spec.required + spec.optional


def test_sample_generator_reproduces_the_committed_trail(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SAMPLE / "make_sample.py"), str(tmp_path)], check=True, cwd=ROOT)
    for f in FILES:
        assert (tmp_path / Path(f).name).read_bytes() == Path(f).read_bytes(), f


# ---------------------------------------------------------------- replay


@pytest.fixture(scope="module")
def replay_incident():
    from drctl.audit.replay import replay_incident

    return replay_incident


def _as_planned(events: tuple[Event, ...], incident: str) -> list[Event]:
    """The trail with its placement decisions replaced by what the planner decides on the
    recorded snapshot: a trail a controller using this planner would have written."""
    from drctl.planning import planner
    from drctl.model.cluster import Limits, PlacementRules
    from drctl.audit.replay import _rebuild, snapshot_of

    rec = next(e for e in events if e.name == ev.SNAPSHOT_RECORDED and e.get("incident") == incident)
    plan = planner.plan_evacuation(snapshot_of(events, incident), ["hv3"], _rebuild(PlacementRules, rec["rules"], []),
                                   _rebuild(Limits, rec["limits"], []))
    dst = {m.vm: m.dst for m in plan.moves}
    return [replace(e, data={**e.data, "dst": dst[e["vm"]]}) if e.name == ev.PLACEMENT_DECIDED
            and e.get("incident") == incident else e for e in events]


def test_replay_reproduces_a_trail_written_by_the_planner(log, replay_incident) -> None:
    r = replay_incident(_as_planned(log.events, HV3), HV3)
    assert r.reproduced and len(r.decisions) == 3 and r.rules_from == "recorded rules"


def test_replay_shows_where_recorded_decisions_differ(log, replay_incident) -> None:
    r = replay_incident(log.events, HV3)  # the sample's decisions were written by hand
    assert not r.reproduced and {d.vm for d in r.decisions} == {"web-1", "web-2", "db-1"}
    res = CliRunner().invoke(cli, ["replay", HV3, *FILES])
    assert res.exit_code == 1 and "≠ web-1" in res.output and "DIFFERENT" in res.output


def test_replay_with_another_policy(log, replay_incident) -> None:
    policy = ROOT / "policies" / "proactive-evacuation.yaml"
    r = replay_incident(log.events, HV3, policy)
    assert r.rules_from == str(policy) and {d.vm for d in r.decisions} == {"web-1", "web-2", "db-1"}
    # each VM either gets a host other than the failing one, or the reasons no host fits
    assert all(d.replayed_dst not in (None, "hv3") or "hv1:" in d.note for d in r.decisions)


# ---------------------------------------------------------------- headless Chromium


@needs(chromium.available(), f"{chromium.CHROMIUM} not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(log) -> None:
    """Screenshot kept at artifacts/postmortem-timeline.png for people to look at."""
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    html = artifacts / "postmortem-timeline.html"
    html.write_text(render_html(build_report(log.events, HV3)), encoding="utf-8")
    png = chromium.screenshot(html, artifacts / "postmortem-timeline.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 1000)
    assert len(data) > 20_000  # a blank page compresses to a few kB; the report does not


def test_an_intent_open_when_the_trail_ends_is_reported_by_its_state_name(log) -> None:
    # cut the trail right after the first intent started migrating
    cut = next(i for i, e in enumerate(log.events)
               if e.name == ev.INTENT_STATE_CHANGED and e.get("to") == "migrating")
    r = build_report(log.events[:cut + 1], HV3)
    unfinished = [a for a in r.anomalies if a.kind == "unfinished"]
    assert unfinished and unfinished[0].text.endswith(" still migrating"), unfinished
    assert "still migrating" in render_markdown(r) and "IntentState" not in render_html(r) + render_markdown(r)
