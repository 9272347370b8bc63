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
from drctl.sim.sched import Scheduler
from drctl.sim.search import random_spec, search
from drctl.sim.world import World

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
    when it continues, while the incident still waits in fencing (the new leader's fence is
    slower): the lease guard refuses it; without the guard it lands (I4)."""
    folder = Path(__file__).resolve().parents[1] / "scenarios" / "deposed-leader-fence-result"
    spec = scenario.load(folder)
    guarded = Simulation(spec).run()
    assert not [v for v in guarded.violations if v.invariant == "I4"]
    unguarded = Simulation(replace(spec, disabled=("lease-guard",))).run(stop_on_violation=True)
    assert [v.invariant for v in unguarded.violations] == ["I4"], unguarded.violations


# ---------------------------------------------------------------- the scheduler under the search


def _world() -> tuple[Scheduler, World]:
    sched = Scheduler()
    return sched, World(sched, seed=1)


def test_a_killed_process_writes_nothing_on_its_way_out() -> None:
    """SIGKILL runs no `finally`: a write there must not land."""
    sched, world = _world()
    proc = sched.new_process("p", "n1")
    store = world.store_for(proc)

    def body() -> None:
        store.put("/a", b"before")
        try:
            sched.sleep(5.0)
        finally:
            store.put("/b", b"last words")

    sched.spawn(proc, "main", body)
    sched.run_until(sched.now() + 1.0)
    sched.kill(proc)
    sched.run_until(sched.now() + 10.0)
    assert world.store.get("/a") is not None and world.store.get("/b") is None


def test_a_paused_process_resumes_where_it_stopped_and_loses_its_lease() -> None:
    sched, world = _world()
    proc = sched.new_process("p", "n1")
    store = world.store_for(proc)
    seen: list[float] = []
    leases: list[object] = []

    def body() -> None:
        leases.append(store.grant_lease(2))
        for _ in range(6):
            seen.append(round(sched.monotonic(), 3))
            sched.sleep(1.0)

    t0 = sched.now()
    sched.spawn(proc, "main", body)
    sched.run_until(t0 + 2.5)
    sched.pause(proc)
    sched.run_until(t0 + 10.0)
    assert world.store.lease_ids() == []  # its keepalive is paused with it: the lease expired
    sched.resume(proc)
    sched.run_until(t0 + 20.0)
    assert seen[:3] == [0.001, 1.001, 2.001] and seen[3] == 10.0 and seen[4] == 11.0
    assert world.store.lease_ids() == []  # nobody kept it alive meanwhile
