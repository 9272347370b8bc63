"""`drctl audit verify`: the hash chain catches edited, dropped and reordered lines."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from drctl.audit.writer import GENESIS, line_hash
from drctl.audit.reader import RawLine
from drctl.audit.verify import (
    CHANGED_OR_DROPPED,
    DAMAGED,
    DUPLICATED,
    REORDERED,
    UNANCHORED,
    verify_files,
    verify_lines,
)
from drctl.cli.main import cli

SAMPLE = Path(__file__).parent.parent / "data" / "audit"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "audit"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("*.py"))
    return dst


def _edit(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def _verify(*paths: Path) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["audit", "verify", *map(str, paths)])
    return res.exit_code, res.output


def _tampering(path: Path) -> list[tuple[str, int]]:
    [r] = verify_files([path])
    return [(f.kind, f.line) for f in r.findings if f.tampered]


def test_untouched_sample_passes(tmp_path: Path) -> None:
    code, out = _verify(*sorted(SAMPLE.glob("*.log*")))
    assert code == 0, out
    assert out.count(": ok,") == 4 and "32 lines in 2 file(s)" in out


def test_edited_line_breaks_the_link_after_it(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    _edit(runner, lambda ls: [ln.replace('"downtime_ms":168', '"downtime_ms":16') if i == 11 else ln
                              for i, ln in enumerate(ls)])
    assert '"downtime_ms":16,' in runner.read_text().splitlines()[11]  # line 12
    assert _tampering(runner) == [(CHANGED_OR_DROPPED, 13)]
    code, out = _verify(runner)
    assert code == 1 and "runner-c1.log:13: changed_or_dropped" in out and "runner-c1.log:12" in out


def test_deleted_line_breaks_the_link_at_its_position(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    _edit(runner, lambda ls: ls[:19] + ls[20:])  # drop line 20
    assert _tampering(runner) == [(CHANGED_OR_DROPPED, 20)]
    assert _verify(runner)[0] == 1


def test_swapped_pair_shows_as_reordered_at_both_lines(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    _edit(runner, lambda ls: ls[:10] + [ls[11], ls[10]] + ls[12:])  # swap lines 11 and 12
    [r] = verify_files([runner])
    assert [(f.kind, f.line) for f in r.findings] == [(REORDERED, 11)]
    assert "runner-c1.log:11 and runner-c1.log:12 are swapped" in r.findings[0].message
    assert _verify(runner)[0] == 1


def test_line_moved_far_is_reported_once(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    _edit(runner, lambda ls: ls[:4] + ls[5:30] + [ls[4]] + ls[30:])  # line 5 moved to 30
    assert _tampering(runner) == [(REORDERED, 30)]


def test_duplicated_line(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    _edit(runner, lambda ls: ls[:8] + [ls[7]] + ls[8:])
    assert _tampering(runner) == [(DUPLICATED, 9)]


def test_cut_last_line_is_damage_not_tampering(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    runner.write_text(runner.read_text() + '{"ts":"2025-03-14T09:02:00Z","eve')
    [r] = verify_files([runner])
    assert r.ok and [(f.kind, f.line) for f in r.findings] == [(DAMAGED, 55)]
    assert _verify(runner)[0] == 0


def test_line_replaced_by_garbage_is_tampering(tmp_path: Path) -> None:
    runner = _copy(tmp_path) / "runner-c1.log"
    _edit(runner, lambda ls: ls[:5] + ["#### garbage ####"] + ls[6:])
    [r] = verify_files([runner])
    assert [(f.kind, f.line) for f in r.findings] == [(DAMAGED, 6), (CHANGED_OR_DROPPED, 7)]


def test_rotation_is_one_chain_and_a_missing_older_file_is_not_tampering(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    [r] = verify_files([d / "controller-c1.log", d / "controller-c1.log.1"])  # order given does not matter
    assert r.ok and r.findings == () and r.lines == 32
    [r] = verify_files([d / "controller-c1.log"])
    assert r.ok and [f.kind for f in r.findings] == [UNANCHORED]
    # an edit to the last line of the older file shows at the first line of the newer one
    _edit(d / "controller-c1.log.1", lambda ls: ls[:-1] + [ls[-1].replace("41", "42")])
    [r] = verify_files([d / "controller-c1.log.1", d / "controller-c1.log"])
    assert [(Path(f.file).name, f.line, f.kind) for f in r.findings] == [("controller-c1.log", 1, CHANGED_OR_DROPPED)]


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    code, out = _verify(tmp_path / "nope.log")
    assert code == 2 and "cannot read" in out


# ---------------------------------------------------------------- properties on synthetic chains


def _chain(n: int) -> list[str]:
    out, prev = [], GENESIS
    for i in range(n):
        line = json.dumps({"ts": f"t{i}", "event": "x.happened", "i": i, "prev": prev}, separators=(",", ":"))
        out.append(line)
        prev = line_hash(line)
    return out


def _check(lines: list[str]) -> list[tuple[str, int]]:
    raws = [RawLine("s.log", i + 1, t, True) for i, t in enumerate(lines)]
    return [(f.kind, f.line) for f in verify_lines("s.log", ("s.log",), raws).findings]


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 40), st.data())
def test_any_single_tamper_is_found_at_its_position(n: int, data: st.DataObject) -> None:
    lines = _chain(n)
    assert _check(lines) == []
    k = data.draw(st.integers(0, n - 2), label="k")  # 0-based; the last line has no witness after it
    swapped = lines[:k] + [lines[k + 1], lines[k]] + lines[k + 2:]
    assert _check(swapped) == [(REORDERED, k + 1)]
    edited = lines[:k] + [lines[k].replace('"i":', '"i": ')] + lines[k + 1:]
    assert _check(edited) == [(CHANGED_OR_DROPPED, k + 2)]
    if k > 0:
        dropped = lines[:k] + lines[k + 1:]
        assert _check(dropped) == [(CHANGED_OR_DROPPED, k + 1)]


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 40), st.data())
def test_a_moved_line_is_one_reorder_and_nothing_else(n: int, data: st.DataObject) -> None:
    lines = _chain(n)
    a = data.draw(st.integers(0, n - 1), label="from")
    b = data.draw(st.integers(0, n - 1).filter(lambda b: b != a), label="to")
    moved = lines[:a] + lines[a + 1:]
    moved.insert(b, lines[a])
    found = _check(moved)
    assert len(found) == 1 and found[0][0] == REORDERED
