"""Leader failover benchmark: SIGKILL the leading controller replica while an intent is
open (a slow live migration, claimed by a runner) and time how long until a new leader
has adopted it.

    python tests/bench/failover.py [--trials N] [--replicas N] [--json] [--keep]

"Adopted", per trial, is the later of:
  - the new leader's first `tick.completed` after its `controller.elected` (that tick
    read the open intent from etcd and decided on it: nothing re-planned), and
  - for each open intent whose claim the killed replica's runner held: the
    `intent.resumed` line of the surviving runner that claimed it again.
Both from the survivors' audit trails; the kill time is `time.time()` in the bench just
before SIGKILL (one machine, one clock). The killed replica is restarted between trials.

The open intent is made on purpose: a migrate intent for a 128 MiB guest capped at
1 MiB/s, so it is still in flight across several trials (a new one is written when it
finishes). Brings up its own lab (3 hosts, agents, controllers; DRCTL_FAILOVER_LAB_*
override directory and ports) and tears it down unless it was up before or --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctlbench import KEYS, Lab, Trail, lab_config, pct, wait_for

from drctl.control import intents
from drctl.clock import SystemClock
from drctl.control.intents import IntentParams, new_intent
from drctl.lab import guests
from drctl.model.cluster import Move

TTL_S = 2  # controller election lease and runner claim lease (lab controller config)
VM, MEMORY_MIB = "fovm1", 128
SLOW_MIBS = 1  # migration bandwidth cap that keeps the intent open for a while
OPEN = {"pending", "checking", "migrating", "verifying"}


def open_intents(lab: Lab) -> list[dict]:
    return [i for i in lab.intents() if i["state"] in OPEN]


def ensure_open_intent(lab: Lab, trail: Trail, seq: int, echo) -> None:  # type: ignore[no-untyped-def]
    """An open intent, claimed by a runner; a new one when the last one finished."""
    if not open_intents(lab):
        where = {g.name: g.hosts for g in guests.locate_all(lab.cfg)}.get(VM, ())
        if len(where) != 1:
            raise RuntimeError(f"{VM} runs on {where}, expected exactly one host")
        src = where[0]
        dst = next(lab.cfg.host_name(n) for n in (1, 2, 3) if lab.cfg.host_name(n) != src)
        params = IntentParams(bandwidth_mibs=SLOW_MIBS, timeout_s_per_gib=20000.0)  # deadline far away
        it = new_intent(Move(VM, src, dst, reason="failover bench: slow move kept open"), "bench-failover",
                        0, SystemClock().now(), params, memory_mib=MEMORY_MIB, intent_id=f"fo-{seq}")
        assert lab.store is not None
        if not intents.create_intents(lab.store, KEYS, [it]):
            raise RuntimeError(f"intent {it.id} not written")
        echo(f"wrote intent {it.id}: {VM} {src} -> {dst} at {SLOW_MIBS} MiB/s")
    wait_for(lambda: all(i["id"] in lab.claims() for i in open_intents(lab)), 90, "the open intent to be claimed", 0.1)


def one_trial(lab: Lab, trail: Trail, replicas: int) -> dict:
    old = lab.leader()
    assert old is not None
    pid = lab.controller_pid(old)
    opened = open_intents(lab)
    held = sorted(iid for iid, runner in lab.claims().items() if runner == old and iid in {i["id"] for i in opened})
    n_intents = len(lab.intents())
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    elected = wait_for(lambda: next((e for e in trail.find("controller.elected", t_kill) if e["_src"] != old), None),
                       30, "a new leader")
    new = elected["_src"]  # type: ignore[index]
    t_elected = elected["_t"]  # type: ignore[index]
    tick = wait_for(lambda: trail.first("tick.completed", t_elected, origin=new), 30, f"{new}'s first tick")
    t_claims = []
    for iid in held:
        def resumed(iid: str = iid) -> object:
            ev = next((e for e in trail.find("intent.resumed", t_kill, intent=iid) if e["_src"] != old), None)
            if ev is not None:
                return ev["_t"]
            st = next((i["state"] for i in lab.intents() if i["id"] == iid), "gone")
            return time.time() if st not in OPEN else None  # finished meanwhile: nothing left to adopt
        t_claims.append(wait_for(resumed, 30, f"a surviving runner to claim {iid}"))
    t_tick = tick["_t"]  # type: ignore[index]
    adopted = max([t_tick, *t_claims])
    replanned = len(lab.intents()) != n_intents or bool(trail.find("intent.created", t_kill))
    try:
        os.waitpid(pid, os.WNOHANG)  # our child (start_controllers spawned it): no zombie
    except ChildProcessError:
        pass
    lab.start_controllers()
    wait_for(lambda: trail.first("election.campaigned", t_kill, origin=old), 30, f"{old} to campaign again", 0.1)
    return {"killed": old, "new_leader": new, "claims_held": len(held), "open_intents": len(opened),
            "elected_s": round(t_elected - t_kill, 3), "first_tick_s": round(t_tick - t_kill, 3),
            "claims_s": round(max(t_claims) - t_kill, 3) if t_claims else None,
            "adopted_s": round(adopted - t_kill, 3), "replanned": replanned}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--replicas", type=int, default=2, choices=(2, 3))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    echo = (lambda m: print(m, file=sys.stderr)) if args.json else print
    cfg = lab_config("FAILOVER", "/var/lib/drctl-lab-bench-ctl", 24798, "127.0.31", 58152)
    rows = []
    t_start = time.monotonic()
    with Lab(cfg, args.replicas, echo, keep=args.keep) as lab:
        lab.delete_guests([VM])
        lab.create_guests(cfg.host_name(1), [VM], MEMORY_MIB, 0)
        trail = Trail(cfg)
        for i in range(args.trials):
            ensure_open_intent(lab, trail, i, echo)
            time.sleep(0.5)  # let the survivors settle into following (watches in place)
            row = one_trial(lab, trail, args.replicas)
            rows.append(row)
            echo(f"trial {i + 1}/{args.trials}: killed {row['killed']} (held {row['claims_held']} claim(s)); "
                 f"{row['new_leader']} elected {row['elected_s']:.3f}s, first tick {row['first_tick_s']:.3f}s, "
                 f"claims {row['claims_s'] if row['claims_s'] is not None else '-'}s -> adopted {row['adopted_s']:.3f}s")
        lab.delete_guests([VM])
    adopted = [r["adopted_s"] for r in rows]
    claimed = [r["claims_s"] for r in rows if r["claims_s"] is not None]
    result = {
        "trials": len(rows), "replicas": args.replicas, "ttl_s": TTL_S, "goal_s": TTL_S + 1,
        "p50_s": round(statistics.median(adopted), 3), "p99_s": round(pct(adopted, 99), 3),
        "max_s": round(max(adopted), 3),
        "elected_p50_s": round(statistics.median(r["elected_s"] for r in rows), 3),
        "elected_p99_s": round(pct([r["elected_s"] for r in rows], 99), 3),
        "first_tick_p50_s": round(statistics.median(r["first_tick_s"] for r in rows), 3),
        "claims_taken_over": len(claimed),
        "claims_p50_s": round(statistics.median(claimed), 3) if claimed else None,
        "claims_p99_s": round(pct(claimed, 99), 3) if claimed else None,
        "replanned_trials": sum(r["replanned"] for r in rows),
        "goal_met": pct(adopted, 99) <= TTL_S + 1,
        "cpus": os.cpu_count(), "wall_s": round(time.monotonic() - t_start),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'trial':>5} {'killed':>7} {'new':>7} {'claims':>6} {'elected':>8} {'tick':>7} {'claimed':>8} {'adopted':>8}")
    for n, r in enumerate(rows, 1):
        print(f"{n:>5} {r['killed']:>7} {r['new_leader']:>7} {r['claims_held']:>6} {r['elected_s']:>8.3f} "
              f"{r['first_tick_s']:>7.3f} {r['claims_s'] if r['claims_s'] is not None else '-':>8} {r['adopted_s']:>8.3f}")
    for k, v in result.items():
        if k != "rows":
            print(f"{k:20} {v}")


if __name__ == "__main__":
    main()
