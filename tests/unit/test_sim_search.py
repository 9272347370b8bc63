"""The randomized search: its command-line contract, and proof that it has teeth.

Budget (2-core machine): the random schedules here are 3 hosts / 6 VMs / 150 simulated
seconds each; the teeth test spends at most 6 schedules, the contract test 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from drctl.sim import scenario
from drctl.sim.run import Simulation
from drctl.sim.search import random_spec, search

TEETH_BUDGET = 6  # schedules; the fence gate switched off is found at the 2nd (seed 101)


def test_search_finds_restarts_without_fencing_when_the_fence_gate_is_switched_off(tmp_path: Path) -> None:
    s = search(TEETH_BUDGET, 100, hosts=3, vms=6, duration_s=150.0, out=tmp_path, shrink_budget=2,
               disabled=("fence",))
    assert s.violations >= 1, s.as_json()
    found = s.findings[0]
    assert found.invariant in ("I5", "I1"), found
    # the folder written for it reproduces the violation, as a scenario
    assert found.folder is not None and (found.folder / "expected.log").exists()
    spec = replace(scenario.load(found.folder), disabled=("fence",))
    again = Simulation(spec).run()
    assert any(v.invariant == found.invariant for v in again.violations)
    assert len(found.timeline) <= len(random_spec(found.seed, 3, 6, 150.0).timeline)


def test_same_seed_same_schedule_same_outcome() -> None:
    a = Simulation(random_spec(7, 3, 4, 60.0)).run()
    b = Simulation(random_spec(7, 3, 4, 60.0)).run()
    assert a.log == b.log and a.steps == b.steps and a.log


def test_search_command_prints_totals_as_json_and_exits_by_violations(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "drctl.cli.main", "sim", "search", "--runs", "2", "--seed", "5",
                          "--hosts", "3", "--vms", "4", "--duration", "90s", "--json", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    totals = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"runs", "violations", "steps", "sim_seconds", "wall_seconds"} <= totals.keys()
    assert totals["runs"] == 2 and totals["steps"] > 0 and totals["sim_seconds"] == 180.0
    assert out.returncode == (0 if totals["violations"] == 0 else 1), out.stderr[-2000:]


def test_search_rejects_a_bad_duration_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "drctl.cli.main", "sim", "search", "--duration", "ten"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["drctl: error: --duration: not a duration: 'ten' (expected e.g. "
                                               "'30s', '5m', '1h', '300ms')"]


def test_lease_guard_switched_off_lets_a_deposed_leader_write() -> None:
    """The leader, paused past its lease while its slow fence runs, writes the fence's result
    when it continues: the lease guard refuses it; without the guard it lands (I4)."""
    folder = Path(__file__).resolve().parents[1] / "scenarios" / "deposed-leader-fence-returns"
    spec = scenario.load(folder)
    guarded = Simulation(spec).run()
    assert not [v for v in guarded.violations if v.invariant == "I4"]
    unguarded = Simulation(replace(spec, disabled=("lease-guard",))).run(stop_on_violation=True)
    assert [v.invariant for v in unguarded.violations] == ["I4"], unguarded.violations
