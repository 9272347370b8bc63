"""Evacuation benchmark: drain a lab host of 6 ticking 128 MiB guests at concurrency 1, 2, 3.

Brings up its own lab (own directory, addresses and ports; DRCTL_EVAC_LAB_* override them)
and tears it down. Each migration is capped at 32 MiB/s, so one at a time cannot beat the
bound ΣRAM ÷ bandwidth = 6 × 128 MiB ÷ 32 MiB/s = 24 s. Reports makespan against that bound,
per-VM downtime against the configured limit, and data sent ÷ RAM.

    python tests/bench/evacuation.py [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drctl.audit import writer as audit

from drctl.control import intents  # noqa: E402
from drctl.clock import SystemClock  # noqa: E402
from drctl.hypervisor.libvirt_adapter import connect  # noqa: E402
from drctl.control.intents import IntentParams, new_intent  # noqa: E402
from drctl.lab import cluster, guests  # noqa: E402
from drctl.lab.cluster import LabConfig  # noqa: E402
from drctl.lab.console_health import ConsoleTicks  # noqa: E402
from drctl.model.cluster import Limits, Move  # noqa: E402
from drctl.runner.executor import Runner, RunnerConfig  # noqa: E402
from drctl.store.keys import Keys  # noqa: E402
from drctl.store.memory import MemoryStore  # noqa: E402

VMS, MEMORY_MIB, DIRTY_MIB, BANDWIDTH, DOWNTIME_MS = 6, 128, 4, 32, 300
SRC, DESTS = "labhost1", ("labhost2", "labhost3", "labhost4")


def bench_lab() -> LabConfig:
    env = os.environ.get
    # a lab of its own, apart from the test suite's and the other benches' (DRCTL_EVAC_LAB_* override)
    return LabConfig(dir=Path(env("DRCTL_EVAC_LAB_DIR", "/var/lib/drctl-lab-evacuation")),
                     etcd_port=int(env("DRCTL_EVAC_LAB_ETCD_PORT", "23797")),
                     etcd_peer_port=int(env("DRCTL_EVAC_LAB_ETCD_PEER_PORT", "23807")),
                     addr_prefix=env("DRCTL_EVAC_LAB_ADDR_PREFIX", "127.0.17"),
                     migration_port_base=int(env("DRCTL_EVAC_LAB_MIGRATION_PORT_BASE", "57152")))


def evacuate(lab: LabConfig, sink: audit.AuditSink, moves: list[tuple[str, str, str]], concurrency: int,
             bandwidth: int) -> tuple[float, list[dict]]:
    store, keys, clock = MemoryStore(), Keys(), SystemClock()
    limits = Limits(max_concurrent=concurrency, max_per_source=concurrency, max_per_destination=2,
                    bandwidth_mibs=bandwidth, bandwidth_total_mibs=max(1, bandwidth) * concurrency,
                    max_downtime_ms=DOWNTIME_MS)
    batch = [new_intent(Move(vm, src, dst, reason="bench"), "bench", 1, clock.now(),
                        IntentParams(bandwidth_mibs=bandwidth, max_downtime_ms=DOWNTIME_MS), memory_mib=MEMORY_MIB,
                        candidates=[d for d in DESTS if d != dst]) for vm, src, dst in moves]
    assert intents.create_intents(store, keys, batch)
    runner = Runner(store, keys, guests.host_uris(lab), lambda uri: connect(uri, timeout_s=10), clock,
                    RunnerConfig(f"bench-c{concurrency}", limits=limits, verify_timeout_s=30),
                    health=ConsoleTicks(lab))
    first = len(sink.lines)
    t0 = time.monotonic()
    final = runner.drain(timeout_s=600)
    makespan = time.monotonic() - t0
    runner.close()
    bad = [f"{i.vm}: {i.state.value} {i.reason}" for i in final if i.state.value != "done"]
    if bad:
        print("not done: " + "; ".join(bad), file=sys.stderr)
    done = [e for e in sink.lines[first:] if e["event"] == "migration.completed"]
    return makespan, done


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    lab = bench_lab()
    sink = audit.configure("bench", keep_in_memory=True)
    cluster.up(lab, 1 + len(DESTS), echo=log)
    runs = []
    try:
        names = [f"e{i}" for i in range(VMS)]
        for n in names:
            guests.create(lab, n, SRC, memory_mib=MEMORY_MIB, dirty_mib=DIRTY_MIB, wait=False)
        for n in names:
            guests.wait_ticking(guests.console_path(lab, n), timeout_s=120)
        for c in (1, 2, 3):
            home = {g.name: g.hosts[0] for g in guests.locate_all(lab) if g.hosts}
            back = [(n, home[n], SRC) for n in names if home[n] != SRC]
            if back:  # bring them home unthrottled; not measured
                evacuate(lab, sink, back, 3, 0)
            moves = [(n, SRC, DESTS[i % len(DESTS)]) for i, n in enumerate(names)]
            makespan, done = evacuate(lab, sink, moves, c, BANDWIDTH)
            downs = [float(e["downtime_ms"]) for e in done if e.get("downtime_ms") is not None]
            sent = sum(int(e["data_bytes"]) for e in done)
            run = {"concurrency": c, "makespan_s": round(makespan, 2),
                   "bound_s": round(VMS * MEMORY_MIB / BANDWIDTH, 2),
                   "downtime_p50_ms": pct(downs, 0.5), "downtime_p99_ms": pct(downs, 0.99),
                   "downtime_limit_ms": DOWNTIME_MS, "bytes_sent": sent, "ram_bytes": VMS * MEMORY_MIB << 20,
                   "migrated": len(done)}
            runs.append(run)
            log(f"concurrency {c}: {run}")
        where = {g.name: g.hosts for g in guests.locate_all(lab)}
        once = all(len(where.get(n, ())) == 1 for n in names)
    finally:
        cluster.down(lab, echo=log)
    result = {"runs": runs, "every_vm_exactly_once": once}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'conc':>4} {'makespan s':>10} {'bound s':>8} {'ratio':>6} {'downtime p50/p99 ms':>20} "
          f"{'limit':>6} {'sent/RAM':>8}")
    for r in runs:
        print(f"{r['concurrency']:>4} {r['makespan_s']:>10.1f} {r['bound_s']:>8.1f} "
              f"{r['makespan_s'] / r['bound_s']:>6.2f} {r['downtime_p50_ms']:>9.0f}/{r['downtime_p99_ms']:<10.0f} "
              f"{r['downtime_limit_ms']:>6} {r['bytes_sent'] / r['ram_bytes']:>8.2f}")
    c1 = runs[0]["makespan_s"]
    print(f"makespan c3 / c1 = {runs[-1]['makespan_s'] / c1:.2f} (goal <= 0.5); every VM exactly once: {once}")


if __name__ == "__main__":
    main()
