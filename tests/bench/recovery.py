"""Disaster-recovery benchmark: `host-kill` of a lab host running 4 ticking guests, until
all 4 run elsewhere; split into detect / fence / restart.

    python tests/bench/recovery.py [--runs N] [--json] [--keep]

Per run (the victim rotates over the 3 hosts), from the kill (`time.time()` in the bench
just before `drctl lab inject HOST host-kill`) to these lines of the leader's audit trail:

    dead       host.state_changed of the victim to dead (lease gone, witnesses agree)
    detect     incident.opened for the victim
    fenced     fence.succeeded for the victim (lab fence agent: its libvirtd and QEMU off)
    restarted  the last of the 4 vm.restarted (every VM defined and started elsewhere)
    verified   the last of the 4 vm.verified ok=true (the guest booted again: its console
               ticks from 1; a cold TCG boot takes seconds, which is why it is separate)

detect_s, fence_s and restart_s are the phases between kill, detect, fenced and restarted
(they add up to restarted_s); p50_s/p99_s are of restarted_s ("every VM started again").
Between runs the host is cleared and healthy again, the guests deleted and the controller
state (intents, claims, incidents, placements) reset. Brings up its own lab (3 hosts,
agents, 2 controllers; DRCTL_RECOVERY_LAB_* override directory and ports) and tears it
down unless it was up before or --keep.
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

from drctl.lab import faults, guests

VMS, MEMORY_MIB, DIRTY_MIB = 4, 96, 1
GOAL_S = 5.0
PHASES = ("dead_s", "detect_s", "fence_s", "restart_s", "restarted_s", "verified_s")


def one_run(lab: Lab, trail: Trail, run: int) -> dict:
    victim = lab.cfg.host_name(run % 3 + 1)
    names = [f"r{run}v{i}" for i in range(1, VMS + 1)]
    lab.start_episode(victim, names, MEMORY_MIB, DIRTY_MIB)
    time.sleep(1.0)
    t_kill = time.time()
    faults.inject(lab.cfg, victim, "host-kill", echo=quiet)
    try:
        closed = wait_for(lambda: trail.first("incident.closed", t_kill, host=victim), 240,
                          f"the recovery of {victim} to finish", 0.1)
        dead = trail.first("host.state_changed", t_kill, host=victim, to="dead")
        opened = trail.first("incident.opened", t_kill, host=victim)
        fenced = trail.first("fence.succeeded", t_kill, host=victim)
        restarted = [e for e in trail.find("vm.restarted", t_kill) if e["vm"] in names]
        verified = [e for e in trail.find("vm.verified", t_kill) if e["vm"] in names and e.get("ok")]
        where = {g.name: g.hosts for g in guests.locate_all(lab.cfg)}
        ok = (len({e["vm"] for e in restarted}) == VMS == len(restarted) and len(verified) == VMS
              and all(len(where.get(n, ())) == 1 and where[n][0] != victim for n in names))
        if not (opened and fenced and ok):
            raise RuntimeError(f"run {run}: recovery of {victim} incomplete: opened={bool(opened)} "
                               f"fenced={bool(fenced)} restarted={len(restarted)} verified={len(verified)} "
                               f"where={where} outcome={closed['outcome']}")  # type: ignore[index]
        assert opened is not None and fenced is not None
        t_restarted = max(e["_t"] for e in restarted)
        return {
            "victim": victim, "dests": sorted({e["dst"] for e in restarted}),
            "dead_s": round(dead["_t"] - t_kill, 3) if dead else None,
            "detect_s": round(opened["_t"] - t_kill, 3),
            "fence_s": round(fenced["_t"] - opened["_t"], 3),
            "restart_s": round(t_restarted - fenced["_t"], 3),
            "restarted_s": round(t_restarted - t_kill, 3),
            "verified_s": round(max(e["_t"] for e in verified) - t_kill, 3),
        }
    finally:
        lab.end_episode(victim, names)


def describe(row: dict) -> str:
    return (f"{row['victim']} killed; dead {row['dead_s']}s, incident {row['detect_s']}s, fenced "
            f"+{row['fence_s']}s, 4 restarted +{row['restart_s']}s = {row['restarted_s']}s, 4 verified alive "
            f"{row['verified_s']}s")


def median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    echo = (lambda m: print(m, file=sys.stderr)) if args.json else print
    cfg = lab_config("RECOVERY", "/var/lib/drctl-lab-bench-rec", 24821, "127.0.41", 58652)
    t_start = time.monotonic()
    with Lab(cfg, 2, echo, keep=args.keep) as lab:
        rows, failures = episodes(lab, args.runs, "run", one_run, describe, echo)
    restarted = [r["restarted_s"] for r in rows]
    result = {
        "runs": len(rows), "failed_runs": len(failures), "failures": failures, "vms": VMS, "memory_mib": MEMORY_MIB, "goal_s": GOAL_S,
        "p50_s": round(statistics.median(restarted), 3), "p99_s": round(pct(restarted, 99), 3),
        "max_s": round(max(restarted), 3),
        **{k: median(rows, k) for k in PHASES},
        "verified_p99_s": round(pct([r["verified_s"] for r in rows], 99), 3),
        "goal_met": pct(restarted, 99) <= GOAL_S,
        "cpus": os.cpu_count(), "wall_s": round(time.monotonic() - t_start),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'run':>3} {'victim':>9} " + " ".join(f"{k[:-2]:>9}" for k in PHASES))
    for n, r in enumerate(rows, 1):
        print(f"{n:>3} {r['victim']:>9} " + " ".join(f"{r[k] if r[k] is not None else '-':>9}" for k in PHASES))
    for k, v in result.items():
        if k != "rows":
            print(f"{k:16} {v}")


if __name__ == "__main__":
    main()
