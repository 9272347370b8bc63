"""Reading audit files: damaged lines are reported and skipped, files merge by time."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from drctl.audit import writer as audit
from drctl.audit.writer import ChainedFile, line_hash
from drctl.audit.reader import Filter, order_rotated, parse_since, read_files
from drctl.cli.main import cli

SAMPLE = Path(__file__).parent.parent / "data" / "audit"
FILES = sorted(str(p) for p in SAMPLE.glob("*.log*"))
HV3 = "inc-20250314-0900-hv3"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "audit"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("*.py"))
    return dst


def test_sample_reads_clean_and_merges_by_time() -> None:
    log = read_files(FILES)
    assert log.problems == ()
    assert len(log.events) == 88
    stamps = [e.ts for e in log.events]
    assert stamps == sorted(stamps)
    assert {e.get("component") for e in log.events} == {"controller:c1", "runner:c1", "agent:hv1", "agent:hv2"}


def test_rotated_files_come_oldest_first() -> None:
    order = [p.name for p in order_rotated(["a/x.log", "a/y.log", "a/x.log.1", "a/x.log.2"])]
    assert order == ["x.log.2", "x.log.1", "x.log", "y.log"]


def test_garbage_and_truncated_lines_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    runner = d / "runner-c1.log"
    lines = runner.read_bytes().split(b"\n")
    lines.insert(4, b"\xff\xfe not json at all \x00")  # becomes line 5
    lines.insert(9, b'["a", "list"]')  # line 10
    lines.insert(12, b'{"no":"event"}')  # line 13
    runner.write_bytes(b"\n".join(lines).rstrip(b"\n") + b"\n" + b'{"ts":"2025-03-14T09:02:00.000Z","ev')
    log = read_files([str(p) for p in d.glob("*.log*")])
    where = {(Path(p.file).name, p.line) for p in log.problems}
    assert where == {("runner-c1.log", 5), ("runner-c1.log", 10), ("runner-c1.log", 13), ("runner-c1.log", 58)}
    assert any("truncated" in p.message for p in log.problems if p.line == 58)
    assert len(log.events) == 88


def test_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    log = read_files([str(tmp_path / "missing.log"), *FILES])
    assert len(log.events) == 88
    assert log.problems[0].file.endswith("missing.log") and "cannot read" in log.problems[0].message


def test_incident_filter_includes_progress_lines_that_carry_only_the_intent() -> None:
    events = Filter(incident=HV3).apply(read_files(FILES).events)
    names = {e.name for e in events}
    assert "migration.progressed" in names and "incident.opened" in names
    assert all(e.get("incident") == HV3 or e.get("intent", "").startswith("mig-20250314-0900-hv3") for e in events)


def test_vm_host_and_since_filters() -> None:
    events = read_files(FILES).events
    assert {e.get("vm") for e in Filter(vm="db-1").apply(events)} == {"db-1"}
    hv4 = Filter(host="hv4").apply(events)
    assert hv4 and all("hv4" in (e.get("host"), e.get("src"), e.get("dst"), e.get("old_dst")) for e in hv4)
    late = Filter(since=parse_since("2025-03-14T09:20:00Z")).apply(events)
    assert late and all(e.ts >= datetime(2025, 3, 14, 9, 20, tzinfo=UTC) for e in late)


def test_parse_since_accepts_durations_and_iso() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_since("15m", now) == datetime(2025, 1, 1, 11, 45, tzinfo=UTC)
    assert parse_since("2025-01-01T10:00:00") == datetime(2025, 1, 1, 10, tzinfo=UTC)


def test_show_cli_text_json_and_warnings(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    with open(d / "agent-hv1.log", "a") as fh:
        fh.write("garbage\n")
    files = [str(p) for p in sorted(d.glob("*.log*"))]
    res = CliRunner().invoke(cli, ["audit", "show", "--vm", "web-2", "--json", *files])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert rows and {r["vm"] for r in rows} == {"web-2"}
    assert "agent-hv1.log:2: not valid JSON" in res.stderr
    res = CliRunner().invoke(cli, ["audit", "show", "--incident", "inc-20250314-0920-hv5", *files])
    assert res.exit_code == 0
    assert "snapshot=<5 hosts, 6 vms>" in res.stdout and "fence.succeeded" in res.stdout
    bad = CliRunner().invoke(cli, ["audit", "show", "--since", "yesterday", *files])
    assert bad.exit_code == 2


def test_chained_file_ends_a_cut_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    f = ChainedFile(path)
    f.write({"event": "x.happened"})
    f.close()
    with open(path, "a") as fh:
        fh.write('{"event":"cut')  # a crash mid-write
    f = ChainedFile(path)
    f.write({"event": "y.happened"})
    f.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["prev"] == line_hash(lines[1])


def test_chained_file_resumes_after_a_line_longer_than_the_tail_window(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    f = ChainedFile(path)
    f.write({"event": "small.happened"})
    f.write({"event": "snapshot.recorded", "snapshot": "x" * 200_000})
    f.close()
    f = ChainedFile(path)
    f.write({"event": "next.happened"})
    f.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[2])["prev"] == line_hash(lines[1])


def test_emit_without_configure_is_silent() -> None:
    audit.emit("nothing.happened")  # must not raise in library use
