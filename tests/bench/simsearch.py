"""Simulator figures: random schedules per CPU-minute, simulated time per real second for
5, 100 and 1,000 hosts, violations found on this tree, and the schedules (and time) the
search needs to find each safety mechanism switched off on purpose.

Take figures on an idle machine only (the lab and other benches share the two cores):

    python tests/bench/simsearch.py                   # all sizes, defaults below
    python tests/bench/simsearch.py --sizes 5 --schedules 20
    python tests/bench/simsearch.py --json            # one JSON object on the last line

CPU time is this process's (`time.process_time`: every simulated actor is a thread of it),
wall time is `time.perf_counter`; the load average is printed alongside so a crowded run
is visible as such.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drctl.sim.run import Simulation  # noqa: E402
from drctl.sim.search import random_spec, search  # noqa: E402

# per cluster size: (VMs, simulated seconds per schedule, schedules by default)
SIZES = {5: (20, 600.0, 10), 100: (400, 120.0, 2), 1000: (4000, 30.0, 1)}
TEETH = ("fence", "lease-guard")


def measure(hosts: int, schedules: int, seed: int) -> dict[str, object]:
    vms, duration, _ = SIZES.get(hosts, (hosts * 4, 120.0, 1))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    steps = violations = 0
    sim_s = 0.0
    for i in range(schedules):
        r = Simulation(random_spec(seed + i, hosts, vms, duration, settle_s=min(240.0, duration / 2))).run()
        steps += r.steps
        sim_s += r.sim_seconds
        violations += bool(r.violations)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"hosts": hosts, "vms": vms, "schedules": schedules, "sim_seconds_each": duration,
            "violations": violations, "steps": steps, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "schedules_per_cpu_minute": round(schedules / cpu * 60, 2) if cpu else None,
            "sim_per_real": round(sim_s / wall, 1) if wall else None,
            "steps_per_s": round(steps / wall) if wall else None}


def teeth(mechanism: str, seed: int, budget: int) -> dict[str, object]:
    """Schedules and time until the search notices `mechanism` switched off."""
    t0 = time.perf_counter()
    for i in range(budget):
        s = search(1, seed + i, hosts=3, vms=6, duration_s=150.0, shrink_budget=0, disabled=(mechanism,))
        if s.violations:
            return {"mechanism": mechanism, "found_after_schedules": i + 1, "invariant": s.findings[0].invariant,
                    "seconds": round(time.perf_counter() - t0, 1)}
    return {"mechanism": mechanism, "found_after_schedules": None, "budget": budget,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,100,1000", help="cluster sizes (hosts), comma-separated")
    ap.add_argument("--schedules", type=int, default=0, help="schedules per size (default: per size)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--teeth-budget", type=int, default=40, help="schedules allowed per seeded bug (0: skip)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict[str, object] = {"load_before": os.getloadavg(), "sizes": [], "teeth": []}
    for hosts in (int(x) for x in a.sizes.split(",") if x):
        n = a.schedules or SIZES.get(hosts, (0, 0.0, 1))[2]
        row = measure(hosts, n, a.seed)
        out["sizes"].append(row)  # type: ignore[union-attr]
        if not a.json:
            print(f"{hosts:5d} hosts {row['vms']:5d} VMs: {row['schedules']} schedule(s) x {row['sim_seconds_each']:g} s;"
                  f" {row['schedules_per_cpu_minute']} schedules/CPU-minute; {row['sim_per_real']}x real time; "
                  f"{row['violations']} with a violation", flush=True)
    for m in TEETH if a.teeth_budget else ():
        row = teeth(m, a.seed, a.teeth_budget)
        out["teeth"].append(row)  # type: ignore[union-attr]
        if not a.json:
            print(f"switched off {m}: found after {row['found_after_schedules']} schedule(s) "
                  f"({row.get('invariant', '-')}) in {row['seconds']} s", flush=True)
    out["load_after"] = os.getloadavg()
    if a.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"load average before {out['load_before']}, after {out['load_after']}")


if __name__ == "__main__":
    main()
