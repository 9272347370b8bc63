"""Reaction benchmark: from a host turning degraded to its first live migration starting.

    python tests/bench/reaction.py [--trials N] [--json] [--keep]

Per trial (the victim rotates over the 3 hosts) two guests run on the victim, then
`drctl lab inject HOST memory-errors`. The lab policy evacuates degraded hosts with a hold
time of 0 s, so "degraded past the hold time" is the moment it turns degraded, in two
readings of the audit trails:

    agent       the victim's agent grades itself degraded (`health.graded` to=degraded in
                <lab>/agents/<host>/audit.jsonl): the host's own report, before etcd
    controller  the leader sees it (`host.state_changed` to=degraded in its trail)

and the end is the first `migration.started` from the victim (the runner has claimed the
intent, passed its pre-checks and called libvirt). Also reported: incident opened, intent
written, intent claimed (pending -> checking). Between trials the evacuation finishes,
the host is cleared and healthy again, guests deleted and controller state reset. Brings
up its own lab (3 hosts, agents, 2 controllers; DRCTL_REACTION_LAB_* override directory
and ports) and tears it down unless it was up before or --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctlbench import Lab, Trail, episodes, lab_config, pct, quiet, wait_for

from drctl.lab import faults

VMS, MEMORY_MIB, DIRTY_MIB = 2, 96, 1
GOAL_S = 1.0
STEPS = ("incident_s", "intent_s", "claimed_s", "migration_s")


def one_trial(lab: Lab, trail: Trail, n: int) -> dict:
    victim = lab.cfg.host_name(n % 3 + 1)
    names = [f"d{n}v{i}" for i in range(1, VMS + 1)]
    lab.start_episode(victim, names, MEMORY_MIB, DIRTY_MIB)
    t_inject = time.time()
    faults.inject(lab.cfg, victim, "memory-errors", echo=quiet)
    try:
        started = wait_for(lambda: next((e for e in trail.find("migration.started", t_inject)
                                         if e.get("vm") in names), None), 120, "the first migration", 0.05)
        agent = trail.first("health.graded", t_inject, origin=f"agent:{victim}", to="degraded")
        seen = trail.first("host.state_changed", t_inject, host=victim, to="degraded")
        opened = trail.first("incident.opened", t_inject, host=victim)
        created = next((e for e in trail.find("intent.created", t_inject) if e.get("vm") in names), None)
        claimed = next((e for e in trail.find("intent.state_changed", t_inject, to="checking")
                        if e.get("vm") in names), None)
        if not (agent and seen and opened and created and claimed):
            raise RuntimeError(f"trial {n}: missing lines: agent={bool(agent)} seen={bool(seen)} "
                               f"opened={bool(opened)} created={bool(created)} claimed={bool(claimed)}")
        t0 = seen["_t"]
        row = {"victim": victim, "degraded_after_inject_s": round(agent["_t"] - t_inject, 3),
               "agent_to_controller_s": round(seen["_t"] - agent["_t"], 3),
               "incident_s": round(opened["_t"] - t0, 3), "intent_s": round(created["_t"] - t0, 3),
               "claimed_s": round(claimed["_t"] - t0, 3),
               "migration_s": round(started["_t"] - t0, 3),  # type: ignore[index]
               "from_agent_s": round(started["_t"] - agent["_t"], 3)}  # type: ignore[index]
        wait_for(lambda: trail.first("incident.closed", t_inject, host=victim), 240, "the evacuation to end", 0.2)
        return row
    finally:
        lab.end_episode(victim, names)


def describe(row: dict) -> str:
    return (f"{row['victim']} degraded (agent) -> controller sees it +{row['agent_to_controller_s']}s; from there "
            f"incident {row['incident_s']}s, intent {row['intent_s']}s, claimed {row['claimed_s']}s, migration "
            f"started {row['migration_s']}s ({row['from_agent_s']}s from the agent's report)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    echo = (lambda m: print(m, file=sys.stderr)) if args.json else print
    cfg = lab_config("REACTION", "/var/lib/drctl-lab-bench-react", 24822, "127.0.42", 59152)
    t_start = time.monotonic()
    with Lab(cfg, 2, echo, keep=args.keep) as lab:
        rows, failures = episodes(lab, args.trials, "trial", one_trial, describe, echo)
    ctl = [r["migration_s"] for r in rows]
    agent = [r["from_agent_s"] for r in rows]
    result = {
        "trials": len(rows), "failed_trials": len(failures), "failures": failures, "goal_s": GOAL_S,
        "p50_s": round(statistics.median(ctl), 3) if rows else None,
        "p99_s": round(pct(ctl, 99), 3) if rows else None,
        "from_agent_p50_s": round(statistics.median(agent), 3) if rows else None,
        "from_agent_p99_s": round(pct(agent, 99), 3) if rows else None,
        **{f"{k[:-2]}_p50_s": round(statistics.median(r[k] for r in rows), 3) for k in STEPS if rows},
        "agent_to_controller_p50_s": round(statistics.median(r["agent_to_controller_s"] for r in rows), 3)
        if rows else None,
        "goal_met": bool(rows) and pct(ctl, 99) <= GOAL_S and pct(agent, 99) <= GOAL_S,
        "cpus": os.cpu_count(), "wall_s": round(time.monotonic() - t_start),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    cols = ("agent_to_controller_s", *STEPS, "from_agent_s")
    print(f"{'trial':>5} {'victim':>9} " + " ".join(f"{c[:-2]:>20}" for c in cols))
    for n, r in enumerate(rows, 1):
        print(f"{n:>5} {r['victim']:>9} " + " ".join(f"{r[c]:>20}" for c in cols))
    for k, v in result.items():
        if k != "rows":
            print(f"{k:26} {v}")


if __name__ == "__main__":
    main()
