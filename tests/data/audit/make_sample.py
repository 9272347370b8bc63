"""Write the recorded sample audit trail in this folder (run it to regenerate on purpose).

    .venv/bin/python tests/data/audit/make_sample.py [OUT_DIR]

Two incidents on a 5-host cluster (racks r1-r3), written through drctl.audit.writer exactly as the
controller, runner and agents would, on a fake clock so the files are byte-for-byte
reproducible:

1. hv3 degraded (EDAC corrected-error burst): live evacuation of web-1, web-2, db-1.
   web-2's first attempt fails (destination refused the connection) and is retried;
   db-1's first destination is rejected at execution time (fallback to hv4) and its
   migration escalates to auto-converge.
2. hv5 dead (lease expired, witnesses agree, IPMI fence): app-1 and app-2 restarted
   elsewhere; the controller freezes for a few seconds on an etcd hiccup meanwhile.

The controller's stream is rotated once (controller-c1.log.1 precedes controller-c1.log).
"""
from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from drctl.audit import writer as audit
from drctl.audit import events as ev

T0 = datetime(2025, 3, 14, 9, 0, 0, tzinfo=UTC).timestamp()
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
FILES = ("controller-c1.log", "controller-c1.log.1", "runner-c1.log", "agent-hv1.log", "agent-hv2.log")

_now = [T0]
_current: list[str] = [""]
_queue: list[tuple[float, int, str, str, bool, dict]] = []
_who = ["controller:c1"]


def at(seconds: float) -> None:
    _now[0] = T0 + seconds


def E(event: str, **fields: object) -> None:
    """Queue one event at the current fake time, from the current component."""
    _queue.append((_now[0], len(_queue), _who[0], event, False, fields))


def W(event: str, **fields: object) -> None:
    _queue.append((_now[0], len(_queue), _who[0], event, True, fields))


def flush() -> None:
    """Write the queued events in time order, each to its component's file."""
    for ts, _, who, event, warn, fields in sorted(_queue, key=lambda q: q[:2]):
        _switch(who)
        _now[0] = ts
        (audit.warn if warn else audit.emit)(event, **fields)
    _queue.clear()


def _switch(component: str) -> None:
    """Each component has its own hash-chained file; reopening resumes its chain."""
    if _current[0] == component:
        return
    old = audit.sink()
    if old is not None and old.file is not None:
        old.file.close()
    filename = component.replace(":", "-") + ".log"
    sink = audit.configure(component, path=OUT / filename, clock=lambda: _now[0])
    if component.startswith("controller"):
        # small rotation size so the sample exercises a rotated pair (snapshot lines are large)
        sink.file.close()
        sink.file = audit.ChainedFile(OUT / filename, max_bytes=12_000)
    _current[0] = component


def controller() -> None:
    _who[0] = "controller:c1"


def runner() -> None:
    _who[0] = "runner:c1"


def agent(host: str) -> None:
    _who[0] = f"agent:{host}"


GiB = 1024


def host(name: str, rack: str, used: int, state: str = "healthy") -> dict:
    return {"name": name, "memory_mib": 64 * GiB, "cpus": 32, "memory_used_mib": used, "reserved_mib": 4 * GiB,
            "cpu_used": used / 2048, "cpu_model": "qemu64", "cpu_features": [], "hypervisor_version": "9.0.0",
            "machine_types": ["pc"], "networks": ["prod", "storage"], "storage_pools": ["ceph"],
            "labels": {"rack": rack}, "state": state, "maintenance": False, "incoming_limit": 2}


def vm(name: str, on: str, mem: int, group: str = "", prio: int = 0) -> dict:
    return {"name": name, "host": on, "memory_mib": mem, "vcpus": 2, "cpu_model": "", "cpu_features": [],
            "machine_type": "", "networks": ["prod"],
            "disks": [{"name": "vda", "size_gib": 20, "storage": "shared", "pool": "ceph"}], "priority": prio,
            "tags": [], "affinity_group": "", "anti_affinity_group": group, "migratable": True,
            "dirty_rate_mibs": None}


def snapshot(taken: float, states: dict[str, str], vms: list[dict]) -> dict:
    used = {h: 8 * GiB for h in ("hv1", "hv2", "hv3", "hv4", "hv5")}
    used["hv2"] = 52 * GiB
    for v in vms:
        used[v["host"]] += v["memory_mib"]
    racks = {"hv1": "r1", "hv2": "r1", "hv3": "r2", "hv4": "r2", "hv5": "r3"}
    return {"taken_at": T0 + taken,
            "hosts": {h: host(h, racks[h], used[h], states.get(h, "healthy")) for h in racks},
            "vms": {v["name"]: v for v in vms}}


def cand(h: str, ok: bool, score: float | None, *reasons: str) -> dict:
    return {"host": h, "eligible": ok, "score": score, "reasons": list(reasons)}


VMS_1 = [vm("web-1", "hv3", 4 * GiB, prio=5), vm("web-2", "hv3", 4 * GiB, prio=5),
         vm("db-1", "hv3", 8 * GiB, group="db", prio=9), vm("db-2", "hv1", 8 * GiB, group="db"),
         vm("app-1", "hv5", 2 * GiB), vm("app-2", "hv5", 2 * GiB)]


def move(t: float, inc: str, intent: str, name: str, src: str, dst: str, frm: str, to: str,
         attempt: int, reason: str) -> None:
    at(t)
    E(ev.INTENT_STATE_CHANGED, incident=inc, intent=intent, vm=name, src=src, dst=dst,
      **{"from": frm, "to": to}, attempt=attempt, term=41, reason=reason)


def progress(t: float, intent: str, name: str, it: int, remaining: int, dirty: int, bps: int) -> None:
    at(t)
    E(ev.MIGRATION_PROGRESSED, intent=intent, vm=name, iteration=it, memory_remaining=remaining,
      dirty_rate=dirty, bps=bps)


def verified_done(t: float, inc: str, intent: str, name: str, src: str, dst: str, attempt: int) -> None:
    at(t)
    E(ev.VM_VERIFIED, incident=inc, intent=intent, vm=name, host=dst, ok=True,
      detail=f"running on {dst} only; guest tick advanced")
    move(t + 0.01, inc, intent, name, src, dst, "verifying", "done", attempt, "verified")


def close(t: float, inc: str, host: str, moved: int, reason: str, sentence: str) -> None:
    controller()
    at(t)
    E(ev.INCIDENT_CLOSED, incident=inc, host=host, outcome="resolved", term=41, vms_moved=moved, vms_failed=0,
      reason=reason)
    E(ev.TICK_COMPLETED, term=41, incident=inc, sentence=sentence)


def live_migration(t: float, inc: str, intent: str, name: str, src: str, dst: str, attempt: int,
                   total_ms: int, downtime_ms: int, data: int, iterations: int) -> float:
    """checking -> migrating -> completed -> verifying -> done; returns the end time."""
    move(t, inc, intent, name, src, dst, "checking", "migrating", attempt, f"pre-checks passed on {dst}")
    at(t + 0.01)
    E(ev.MIGRATION_STARTED, intent=intent, vm=name, src=src, dst=dst, attempt=attempt,
      flags="LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE", bandwidth_mibs=512, max_downtime_ms=300)
    steps = max(2, min(iterations, 4))
    for i in range(1, steps):
        progress(t + 0.01 + total_ms / 1000 * i / steps, intent, name, i, data // (4 ** i), 30_000_000, 480_000_000)
    end = t + 0.01 + total_ms / 1000
    at(end)
    E(ev.MIGRATION_COMPLETED, incident=inc, intent=intent, vm=name, src=src, dst=dst, attempt=attempt,
      total_ms=total_ms, downtime_ms=downtime_ms, data_bytes=data, iterations=iterations, mode="precopy")
    move(end + 0.005, inc, intent, name, src, dst, "migrating", "verifying", attempt, "libvirt job completed")
    verified_done(end + 1.2, inc, intent, name, src, dst, attempt)
    return end + 1.21


def incident_degraded() -> None:
    inc = "inc-20250314-0900-hv3"
    controller()
    at(-60)
    E(ev.CONTROLLER_ELECTED, term=41, reason="lowest create_revision after c2's lease expired")
    at(12.2)
    E(ev.HOST_STATE_CHANGED, host="hv3", **{"from": "healthy", "to": "degraded"},
      reason="hv3 degraded for 30s (edac ce_count +12)",
      evidence={"edac_ce_delta": 12, "window_s": 30, "agent": "agent:hv3"})
    at(12.21)
    E(ev.INCIDENT_OPENED, incident=inc, host="hv3", trigger="host.degraded",
      policy="proactive-evacuation", kind="evacuate", term=41)
    at(12.215)
    E(ev.SNAPSHOT_RECORDED, incident=inc, term=41, snapshot=snapshot(12.2, {"hv3": "degraded"}, VMS_1),
      rules={"memory_headroom_pct": 10.0, "failure_domain_label": "rack",
             "spread_anti_affinity_across_domains": False},
      limits={"max_concurrent": 2, "max_per_source": 2, "max_per_destination": 2, "bandwidth_mibs": 512})
    decisions = [
        ("web-1", "hv1", 0.74, [cand("hv1", True, 0.74, "free 38.8 GiB after move", "rack r1"),
                                cand("hv4", True, 0.71, "free 39.8 GiB after move", "rack r2 (same as source)"),
                                cand("hv5", True, 0.68, "free 35.8 GiB after move", "rack r3"),
                                cand("hv2", False, None, "memory: needs 4.0 GiB + 10% headroom, 1.6 GiB free"),
                                cand("hv3", False, None, "source host", "host degraded")]),
        ("web-2", "hv2", 0.52, [cand("hv2", True, 0.52, "spread: web-1 already going to hv1"),
                                cand("hv1", True, 0.49, "free 34.8 GiB after move", "incoming 1 of 2"),
                                cand("hv4", True, 0.47, "free 39.8 GiB after move"),
                                cand("hv3", False, None, "source host", "host degraded")]),
        ("db-1", "hv2", 0.61, [cand("hv2", True, 0.61, "free 2.4 GiB after move"),
                               cand("hv4", True, 0.58, "free 35.8 GiB after move"),
                               cand("hv1", False, None, "anti-affinity: db-2 (group db) runs on hv1"),
                               cand("hv3", False, None, "source host", "host degraded")]),
    ]
    intents = {}
    for n, (name, dst, score, cands) in enumerate(decisions):
        intent = f"mig-{inc[4:]}-{name}"
        intents[name] = intent
        at(12.22 + n * 0.002)
        E(ev.PLACEMENT_DECIDED, incident=inc, intent=intent, vm=name, src="hv3", dst=dst, score=score,
          candidates=cands, policy="proactive-evacuation", reason="highest score among eligible hosts")
    for n, (name, dst, _, _) in enumerate(decisions):
        at(12.23 + n * 0.002)
        E(ev.INTENT_CREATED, incident=inc, intent=intents[name], vm=name, src="hv3", dst=dst,
          kind="migrate", term=41, wave=0 if n < 2 else 1, predicted_s=1.1 if n < 2 else 40.0,
          predicted_downtime_ms=180 if n < 2 else 250)
    at(12.24)
    E(ev.TICK_COMPLETED, term=41, incident=inc, decisions=3,
      sentence=f"opened {inc} for hv3 (degraded): 3 intents in 2 waves")

    runner()
    for name in ("web-1", "web-2"):
        move(12.4, inc, intents[name], name, "hv3", decisions[0 if name == "web-1" else 1][1],
             "pending", "checking", 1, "picked up by runner")
    # web-1: clean
    live_migration(12.6, inc, intents["web-1"], "web-1", "hv3", "hv1", 1, 1043, 168, 139_460_608, 3)
    # web-2: destination refuses the connection, retried
    i2 = intents["web-2"]
    move(12.61, inc, i2, "web-2", "hv3", "hv2", "checking", "migrating", 1, "pre-checks passed on hv2")
    at(12.62)
    E(ev.MIGRATION_STARTED, intent=i2, vm="web-2", src="hv3", dst="hv2", attempt=1,
      flags="LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE", bandwidth_mibs=512, max_downtime_ms=300)
    at(12.95)
    E(ev.MIGRATION_FAILED, incident=inc, intent=i2, vm="web-2", src="hv3", dst="hv2", attempt=1,
      code=38, transient=True, error="unable to connect to server at 'labhost2:49153': Connection refused")
    at(12.951)  # as drctl.audit.writer.retry_scheduled writes it, with the runner's bound ids
    E(ev.RETRY_SCHEDULED, incident=inc, intent=i2, vm="web-2", fn="migrate", attempt=1, sleep_s=1.37,
      error="DestinationUnreachable: unable to connect to server at 'labhost2:49153'")
    move(12.952, inc, i2, "web-2", "hv3", "hv2", "migrating", "checking", 2, "transient failure: retry 1 of 3")
    live_migration(14.33, inc, i2, "web-2", "hv3", "hv2", 2, 1187, 212, 141_033_472, 3)

    # db-1 (wave 1): hv2 no longer fits at execution time -> fallback to hv4; slow to converge
    i3 = intents["db-1"]
    move(16.8, inc, i3, "db-1", "hv3", "hv2", "pending", "checking", 1, "wave 1 started")
    move(16.85, inc, i3, "db-1", "hv3", "hv2", "checking", "pending", 1,
         "hv2 rejected at execution: 7.1 GiB free < 8.0 GiB + 10% headroom")
    at(16.851)
    E(ev.INTENT_RETARGETED, incident=inc, intent=i3, vm="db-1", src="hv3", old_dst="hv2", dst="hv4",
      attempt=1, reason="next candidate (score 0.58) after hv2 was rejected at execution")
    move(16.86, inc, i3, "db-1", "hv3", "hv4", "pending", "checking", 1, "retargeted to hv4")
    t = 17.0
    move(t, inc, i3, "db-1", "hv3", "hv4", "checking", "migrating", 1, "pre-checks passed on hv4")
    at(t + 0.01)
    E(ev.MIGRATION_STARTED, intent=i3, vm="db-1", src="hv3", dst="hv4", attempt=1,
      flags="LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE", bandwidth_mibs=512, max_downtime_ms=300)
    for k in range(1, 9):
        progress(t + 0.01 + k * 5, i3, "db-1", k * 4, 2_400_000_000 - k * 200_000_000, 410_000_000, 500_000_000)
        if k == 4:
            at(t + 0.02 + k * 5)
            W(ev.MIGRATION_ESCALATED, incident=inc, intent=i3, vm="db-1", step="auto-converge", attempt=1,
              reason="not converging: dirty rate 391 MiB/s vs 477 MiB/s after 20 s")
    end = t + 0.01 + 53.87
    at(end)
    E(ev.MIGRATION_COMPLETED, incident=inc, intent=i3, vm="db-1", src="hv3", dst="hv4", attempt=1,
      total_ms=53_870, downtime_ms=41, data_bytes=26_843_545_600, iterations=38, mode="precopy")
    move(end + 0.005, inc, i3, "db-1", "hv3", "hv4", "migrating", "verifying", 1, "libvirt job completed")
    verified_done(end + 1.3, inc, i3, "db-1", "hv3", "hv4", 1)
    close(end + 1.5, inc, "hv3", 3, "hv3 evacuated: 3 of 3 VMs moved", f"closed {inc}: hv3 evacuated (3/3)")


def incident_dead() -> None:
    inc = "inc-20250314-0920-hv5"
    base = 20 * 60
    for w in ("hv1", "hv2"):
        agent(w)
        at(base + 1.8 + (0.1 if w == "hv2" else 0))
        E(ev.WITNESS_REPORTED, host="hv5", witness=w, reachable=False,
          detail="libvirt and ssh probes timed out after 1s")
    controller()
    at(base + 2.45)
    E(ev.HOST_HEARTBEAT_LOST, host="hv5", lease="694d8c1f02a7", ttl_s=2,
      last_seen=audit.iso_utc(T0 + base + 0.41))
    E(ev.HOST_STATE_CHANGED, host="hv5", **{"from": "healthy", "to": "unreachable"},
      reason="lease 694d8c1f02a7 expired")
    at(base + 2.46)
    E(ev.INCIDENT_OPENED, incident=inc, host="hv5", trigger="host.lease_expired",
      policy="dead-host-restart", kind="restart", term=41)
    at(base + 2.47)
    E(ev.EVIDENCE_RECORDED, incident=inc, host="hv5", kind="lease_expired",
      detail="no refresh since 09:20:00.410Z (ttl 2s)", met=True)
    at(base + 2.9)
    W(ev.CONTROLLER_FROZE, term=41, reason="etcd put p99 2.1s over 3 ticks: suspect etcd, not hosts",
      hosts=["hv5"])
    at(base + 6.9)
    E(ev.CONTROLLER_RESUMED, term=41, reason="etcd healthy for 3 ticks")
    at(base + 7.0)
    E(ev.EVIDENCE_RECORDED, incident=inc, host="hv5", kind="witnesses",
      detail="2 of 2 witnesses cannot reach hv5", witnesses=["hv1", "hv2"], quorum=2, met=True)
    E(ev.HOST_STATE_CHANGED, host="hv5", **{"from": "unreachable", "to": "dead"},
      reason="lease expired and 2/2 witnesses agree", incident=inc)
    at(base + 7.01)
    E(ev.FENCE_REQUESTED, incident=inc, host="hv5", agent="ipmi", term=41)
    at(base + 11.4)
    E(ev.FENCE_SUCCEEDED, incident=inc, host="hv5", agent="ipmi", detail="chassis power is off")
    E(ev.EVIDENCE_RECORDED, incident=inc, host="hv5", kind="fence", detail="ipmi: chassis power is off",
      met=True)
    at(base + 11.41)
    vms = [dict(v, host=("hv4" if v["name"] == "db-1" else "hv1" if v["name"] == "web-1" else
                         "hv2" if v["name"] == "web-2" else v["host"])) for v in VMS_1]
    E(ev.SNAPSHOT_RECORDED, incident=inc, term=41,
      snapshot=snapshot(base + 11.4, {"hv3": "degraded", "hv5": "dead"}, vms),
      rules={"memory_headroom_pct": 10.0, "failure_domain_label": "rack"},
      limits={"max_concurrent": 4})
    plan = [("app-1", "hv4", 0.66), ("app-2", "hv1", 0.61)]
    for n, (name, dst, score) in enumerate(plan):
        intent = f"rst-{inc[4:]}-{name}"
        at(base + 11.42 + n * 0.002)
        other = "hv1" if dst == "hv4" else "hv4"
        E(ev.PLACEMENT_DECIDED, incident=inc, intent=intent, vm=name, src="hv5", dst=dst, score=score,
          candidates=[cand(dst, True, score, "fits with headroom"),
                      cand(other, True, score - 0.03 if n == 0 else score - 0.02, "fits with headroom"),
                      cand("hv3", False, None, "host degraded"),
                      cand("hv2", False, None, "memory: needs 2.0 GiB + 10% headroom, 0.6 GiB free"),
                      cand("hv5", False, None, "source host", "host dead")],
          policy="dead-host-restart", reason="highest score among eligible hosts")
        at(base + 11.43 + n * 0.002)
        E(ev.INTENT_CREATED, incident=inc, intent=intent, vm=name, src="hv5", dst=dst, kind="restart",
          term=41, wave=0, predicted_s=6.0)
    at(base + 11.44)
    E(ev.TICK_COMPLETED, term=41, incident=inc, decisions=2,
      sentence="hv5 fenced (ipmi): restarting 2 VMs on hv4, hv1")
    runner()
    for n, (name, dst, _) in enumerate(plan):
        intent = f"rst-{inc[4:]}-{name}"
        t = base + 11.6 + n * 0.05
        move(t, inc, intent, name, "hv5", dst, "pending", "checking", 1, "picked up by runner")
        move(t + 0.1, inc, intent, name, "hv5", dst, "checking", "migrating", 1, f"define and start on {dst}")
        done = t + 5.2 + n * 0.7
        at(done)
        E(ev.VM_RESTARTED, incident=inc, intent=intent, vm=name, src="hv5", dst=dst, attempt=1,
          boot_ms=int((done - t - 0.1) * 1000))
        move(done + 0.01, inc, intent, name, "hv5", dst, "migrating", "verifying", 1, "domain running")
        verified_done(done + 2.0, inc, intent, name, "hv5", dst, 1)
    close(base + 20.5, inc, "hv5", 2, "hv5 fenced; 2 of 2 VMs restarted", f"closed {inc}: 2/2 VMs restarted")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (OUT / name).unlink(missing_ok=True)
    incident_degraded()
    incident_dead()
    flush()
    s = audit.sink()
    if s is not None and s.file is not None:
        s.file.close()


if __name__ == "__main__":
    main()
