"""Every scenario folder under tests/scenarios/ produces exactly its expected decision log.

A change in drctl's behaviour shows as a diff of a log a reviewer can read; after a reviewed
change, `drctl sim run tests/scenarios/NAME --update` rewrites the expected log. The folders
run in two worker processes (each scenario is deterministic and independent)."""
from __future__ import annotations

import difflib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from drctl.sim import scenario

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
FOLDERS = sorted(p for p in ROOT.iterdir() if (p / "cluster.yaml").exists())


def _run(folder: str) -> str:
    return scenario.render(scenario.run(folder))


@pytest.fixture(scope="module")
def logs() -> dict[str, str]:
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip((f.name for f in FOLDERS), pool.map(_run, [str(f) for f in FOLDERS])))


def test_there_are_enough_scenarios_and_each_is_complete() -> None:
    assert len(FOLDERS) >= 30
    for f in FOLDERS:
        missing = [n for n in scenario.FILES if not (f / n).exists()]
        assert not missing, f"{f.name}: missing {missing}"
        assert len((f / "README").read_text().strip().splitlines()) == 1, f"{f.name}: README is one line"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_scenario_log_matches(folder: Path, logs: dict[str, str]) -> None:
    expected = (folder / "expected.log").read_text()
    got = logs[folder.name]
    if got != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "expected.log", "this run",
                                            n=2))
        pytest.fail(f"{folder.name}: decision log changed (review, then `drctl sim run {folder} --update`):\n"
                    + diff[:6000])


def test_a_run_is_deterministic_across_hash_seeds(tmp_path: Path) -> None:
    """Same inputs, another process with another PYTHONHASHSEED: the same log."""
    import os
    import subprocess
    import sys

    folder = ROOT / "leader-failover-mid-evacuation"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "drctl.cli.main", "sim", "run", str(folder)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == (folder / "expected.log").read_text()


def test_bad_scenario_input_is_one_clear_line(tmp_path: Path) -> None:
    import shutil

    from drctl.model.errors import ConfigError

    bad = tmp_path / "bad"
    shutil.copytree(ROOT / "host-dies", bad)
    (bad / "timeline.yaml").write_text("- {at: 20s, do: host-explode, host: h1}\n")
    with pytest.raises(ConfigError, match=r"timeline.yaml: \[0\]\.do: unknown action 'host-explode'"):
        scenario.load(bad)
    (bad / "timeline.yaml").write_text("- {at: soon, do: host-kill, host: h1}\n")
    with pytest.raises(ConfigError, match=r"timeline.yaml: \[0\]\.at: not a duration"):
        scenario.load(bad)
    (bad / "timeline.yaml").write_text("- {after: fence.requested h1, at: 1s, do: host-kill, host: h1}\n")
    with pytest.raises(ConfigError, match=r"timeline.yaml: \[0\]\.after: expected 'EVENT key=value \.\.\.'"):
        scenario.load(bad)
