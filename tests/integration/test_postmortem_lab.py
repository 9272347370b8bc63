"""Postmortems of real lab incidents, built from the real audit files.

The controllers (two replicas, each with its runner) and the hosts' agents write their
audit streams under the lab directory; after a real incident the report must name every
VM with libvirt's own job statistics, the HTML must render in headless Chromium (the
screenshot is kept under artifacts/ for people to look at), the files' hash chains must
hold, and `drctl replay` must reproduce the incident's placements.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requires import needs

from drctl.audit import events as ev
from drctl.audit.reader import read_files
from drctl.hypervisor.libvirt_adapter import connect
from drctl.lab.cluster import LabConfig
from drctl.lab import faults
from drctl.lab.guests import host_uris
from drctl.audit.postmortem import build_report
from drctl.audit.report_html import render_html, render_markdown
from tests import chromium
from tests.integration.test_controller_lab import Harness, ctl, wait_for  # noqa: F401 - ctl is a fixture

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CLI = [sys.executable, "-m", "drctl.cli.main"]


def audit_files(cfg: LabConfig) -> list[Path]:
    """Every stream of the lab: the controllers' (with their runners) and the agents'."""
    files = sorted((cfg.dir / "controllers").glob("ctl-*/audit.jsonl*"))
    files += sorted((cfg.dir / "agents").glob("*/audit.jsonl*"))
    return files


def drctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def raw_events(files: list[Path], name: str, incident: str | None = None) -> list[dict]:
    """Events straight from the files, without any drctl reader."""
    out = []
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("event") == name and (incident is None or obj.get("incident") == incident):
                out.append(obj)
    return out


def completed_on(cfg: LabConfig, host: str, vm: str) -> dict[str, object]:
    """libvirt's completed job statistics of `vm`, read on `host` now."""
    hv = connect(host_uris(cfg)[host], timeout_s=10)
    try:
        return hv.completed_job_stats(vm).raw
    finally:
        hv.close()


def render(report_html: str, stem: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    html = ARTIFACTS / f"{stem}.html"
    html.write_text(report_html, encoding="utf-8")
    png = chromium.screenshot(html, ARTIFACTS / f"{stem}.png", height=1600, timeout_s=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # not a blank page
    return png


def check_trail(files: list[Path], incident: str) -> None:
    r = drctl("audit", "verify", *map(str, files))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TAMPERED" not in r.stdout
    r = drctl("replay", incident, *map(str, files))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reproduced" in r.stdout and "with recorded rules" in r.stdout, r.stdout


@needs(chromium.available(), f"{chromium.CHROMIUM} not installed")
def test_postmortem_of_a_live_evacuation_matches_libvirt(ctl: Harness) -> None:
    names = ctl.guests_on("labhost1", 2)
    faults.inject(ctl.cfg, "labhost1", "memory-errors", echo=lambda _m: None)
    closed = wait_for(lambda: ctl.events("incident.closed"), 240, "the evacuation to finish")
    incident = closed[0]["incident"]  # type: ignore[index]
    where = ctl.assert_each_runs_once(names)
    # libvirt's statistics as it keeps them now, on each destination (the runner read
    # them with KEEP_COMPLETED, and nothing has run a job on these domains since)
    libvirt_stats = {vm: completed_on(ctl.cfg, host, vm) for vm, host in where.items()}

    files = audit_files(ctl.cfg)
    recorded = {e["vm"]: e for e in raw_events(files, ev.MIGRATION_COMPLETED, incident)}
    assert sorted(recorded) == sorted(names)
    for vm, e in recorded.items():
        raw = libvirt_stats[vm]
        assert e["src"] == "labhost1" and e["dst"] == where[vm]
        assert e["total_ms"] == raw["time_elapsed"] and e["downtime_ms"] == raw["downtime"], (e, raw)
        assert e["data_bytes"] == raw["data_processed"] and e["iterations"] == raw["memory_iteration"]
        assert e["total_ms"] > 0 and e["downtime_ms"] > 0 and e["data_bytes"] > 0 and e["iterations"] >= 1

    log = read_files(files)
    assert not log.problems, log.problems
    report = build_report(log.events, incident, log.problems)
    assert report.host == "labhost1" and report.kind == "evacuate"
    rows = {v.vm: v for v in report.vms}
    assert sorted(rows) == sorted(names)
    for vm, row in rows.items():
        e = recorded[vm]
        assert (row.kind, row.state, row.src, row.dst) == ("migrate", "done", "labhost1", where[vm])
        assert (row.total_ms, row.downtime_ms, row.data_bytes, row.iterations) == \
               (e["total_ms"], e["downtime_ms"], e["data_bytes"], e["iterations"])
        assert row.verified is True
        assert [s.kind for s in row.segments] == ["migrate"]
        # the bar is libvirt's job: its length is total_ms, the downtime sits at its end
        assert abs((row.segments[0].end - row.segments[0].start).total_seconds() * 1000 - e["total_ms"]) <= 1
        assert row.switched_at == row.segments[0].end
    phases = {p.name: p.seconds for p in report.phases}
    assert set(phases) >= {"detection", "decision", "execution", "total"}
    assert all(s >= 0 for s in phases.values()), phases
    assert phases["total"] >= phases["execution"] > 0
    assert 0 < phases["total"] < 240
    assert {d.vm: d.dst for d in report.decisions} == where
    assert all(len(d.candidates) >= 2 for d in report.decisions)
    assert report.outcome == "resolved" and report.closed is not None
    assert report.anomalies == (), report.anomalies
    # the first sign is the agent's own grading, before the controller saw it
    graded = [e for e in log.events if e.name == ev.HEALTH_GRADED and e.get("host") == "labhost1"
              and e.get("from") == "healthy" and e.ts <= report.opened]
    assert graded and report.first_sign == graded[-1].ts

    html = render_html(report)
    md = render_markdown(report)
    for vm, row in rows.items():
        assert vm in html and vm in md and f"{row.downtime_ms}" in md
    render(html, "postmortem-lab-evacuation")

    r = drctl("postmortem", incident, *map(str, files), "--out", str(ARTIFACTS / "postmortem-lab-cli.html"))
    assert r.returncode == 0, r.stdout + r.stderr
    check_trail(files, incident)


@needs(chromium.available(), f"{chromium.CHROMIUM} not installed")
def test_postmortem_of_a_dead_host_shows_evidence_fencing_and_restarts(ctl: Harness) -> None:
    names = ctl.guests_on("labhost2", 2)
    faults.inject(ctl.cfg, "labhost2", "host-kill", echo=lambda _m: None)
    closed = wait_for(lambda: ctl.events("incident.closed"), 300, "recovery to finish")
    incident = closed[0]["incident"]  # type: ignore[index]
    where = ctl.assert_each_runs_once(names)

    files = audit_files(ctl.cfg)
    log = read_files(files)
    report = build_report(log.events, incident, log.problems)
    assert report.host == "labhost2" and report.kind == "recover"
    rows = {v.vm: v for v in report.vms}
    assert sorted(rows) == sorted(names)
    for vm, row in rows.items():
        assert (row.kind, row.state, row.src, row.dst) == ("restart", "done", "labhost2", where[vm])
        assert row.boot_ms is not None and row.outage_s is not None and row.outage_s > 0
        assert [s.kind for s in row.segments] == ["restart"]
    phases = {p.name: p for p in report.phases}
    assert {"detection", "evidence", "fencing", "decision", "execution", "total"} <= set(phases)
    assert all(p.seconds >= 0 for p in phases.values())
    # in order: the host was lost, then fenced, then its VMs restarted
    assert phases["detection"].start <= phases["fencing"].start <= phases["fencing"].end <= phases["execution"].start
    assert "fenced labhost2" in report.what_done
    assert report.outcome == "resolved"
    render(render_html(report), "postmortem-lab-dead-host")
    check_trail(files, incident)
