"""`drctl lab demo`: drctl at work on a real 3-host lab, narrated as it happens.

1. a lab of 3 libvirt hosts, one agent each, etcd, and two controller replicas;
2. a few ticking guests;
3. labhost1 reports memory errors -> degraded -> its guests are live-migrated away;
4. labhost2 loses power (libvirtd, QEMU and agent killed) -> dead -> fenced -> its guests
   are restarted on the other hosts;
5. where every guest runs now, and that each one is alive.

The timeline is the controllers' own audit trail, printed line by line while it is
written. The lab is left running to explore (`drctl lab down` stops it).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

from drctl.audit import events
from drctl.hypervisor import MigrationParams
from drctl.hypervisor.libvirt_adapter import connect
from drctl.lab import cluster, faults, guests
from drctl.lab.guest import last_tick, wait_ticking

Echo = Callable[[str], None]
DEMO_GUESTS = {"web-1": "labhost1", "web-2": "labhost1", "db-1": "labhost2", "db-2": "labhost2", "cache-1": "labhost3"}


def migration_demo(cfg: cluster.LabConfig, echo: Echo, vm: str = "demo-1") -> dict[str, float]:
    """The smallest demo: one guest, one live migration, libvirt's statistics."""
    cluster.up(cfg, 3, echo=echo, agents=False)
    uris = guests.host_uris(cfg)
    src, dst = list(uris)[:2]
    guests.delete(cfg, vm)
    echo(f"booting {vm} (128 MiB, dirtying 8 MiB/s) on {src} ...")
    tick = guests.create(cfg, vm, src, memory_mib=128, dirty_mib=8)
    echo(f"{vm} is ticking (tick {tick.count if tick else '?'})")
    hv_src, hv_dst = connect(uris[src]), connect(uris[dst])
    try:
        echo(f"live-migrating {vm} {src} -> {dst} (peer-to-peer, max downtime 300 ms) ...")
        hv_src.migrate(vm, uris[dst], MigrationParams(max_downtime_ms=300))
        stats = hv_dst.completed_job_stats(vm)
    finally:
        hv_src.close()
        hv_dst.close()
    console = guests.console_path(cfg, vm)
    before = last_tick(console)
    after = wait_ticking(console, timeout_s=30, after=before.count if before else 0)
    result = {"total_ms": stats.elapsed_ms, "downtime_ms": stats.downtime_ms or 0,
              "data_mib": round(stats.data_processed / 2**20, 1), "iterations": stats.memory_iteration}
    echo(f"migrated: total {result['total_ms']} ms, downtime {result['downtime_ms']} ms, "
         f"{result['data_mib']} MiB sent in {result['iterations']} iterations; {vm} keeps ticking (tick {after.count})")
    return result


# ------------------------------------------------------------------ the timeline


_SHOWN = {
    events.CONTROLLER_ELECTED: lambda e: f"{e['component']} leads (term {e.get('term')})",
    events.INCIDENT_OPENED: lambda e: f"incident {e['incident']} opened: {e.get('trigger')}",
    events.EVIDENCE_RECORDED: lambda e: f"  evidence on {e['host']}: {e.get('kind')}: {str(e.get('detail'))[:90]}",
    events.FENCE_REQUESTED: lambda e: f"  fencing {e['host']} with agent {e.get('agent')}",
    events.FENCE_SUCCEEDED: lambda e: f"  fenced {e['host']}: {e.get('detail')}",
    events.FENCE_FAILED: lambda e: f"  FENCING FAILED on {e['host']}: {e.get('error')}",
    events.PLACEMENT_DECIDED: lambda e: f"  {e['vm']}: {e['src']} -> {e['dst']} (score {e.get('score')}, "
                                   f"{sum(1 for c in e.get('candidates', []) if c.get('eligible'))} eligible)",
    events.MIGRATION_COMPLETED: lambda e: f"  {e['vm']} live-migrated to {e.get('dst')}: {e.get('total_ms')} ms, "
                                     f"downtime {e.get('downtime_ms')} ms",
    events.VM_RESTARTED: lambda e: f"  {e['vm']} restarted on {e['dst']}",
    events.VM_VERIFIED: lambda e: f"  {e['vm']} verified on {e.get('host')}: {str(e.get('detail'))[:80]}",
    events.CONTROLLER_FROZE: lambda e: f"FROZEN: {e.get('reason')}",
    events.INCIDENT_CLOSED: lambda e: f"incident {e['incident']} closed: {e.get('outcome')}",
}


class Timeline:
    """Follows the controllers' audit files and prints the events that tell the story."""

    def __init__(self, files: list[Path], echo: Echo) -> None:
        self.files, self.echo = files, echo
        self.seen: list[dict] = []
        self._pos: dict[Path, int] = {}
        self._stop = threading.Event()
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> "Timeline":
        for f in self.files:
            self._pos[f] = f.stat().st_size if f.exists() else 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _follow(self) -> None:
        while not self._stop.is_set():
            fresh = []
            for f in self.files:
                if not f.exists():
                    continue
                with open(f) as fh:
                    fh.seek(self._pos.get(f, 0))
                    data = fh.read()
                    # only whole lines; a half-written one is read next time
                    cut = data.rfind("\n") + 1
                    self._pos[f] = self._pos.get(f, 0) + len(data[:cut].encode())
                for line in data[:cut].splitlines():
                    try:
                        fresh.append(json.loads(line))
                    except ValueError:
                        continue
            for e in sorted(fresh, key=lambda e: e.get("ts", "")):
                self.seen.append(e)
                show = _SHOWN.get(e.get("event", ""))
                if show is not None:
                    try:
                        self.echo(f"  {time.time() - self._t0:6.1f}s  {show(e)}")
                    except KeyError:
                        pass
            self._stop.wait(0.2)

    def wait_for(self, event: str, pred: Callable[[dict], bool], timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in list(self.seen):
                if e.get("event") == event and pred(e):
                    return e
            time.sleep(0.2)
        raise TimeoutError(f"no {event} within {timeout_s:.0f}s")


# ------------------------------------------------------------------ the story


def controller_demo(cfg: cluster.LabConfig, echo: Echo) -> None:
    from drctl.lab.controllers import controller_dir, reset_controller_state

    echo("== 1. a lab: 3 libvirt hosts with health agents, etcd, 2 controller replicas")
    cluster.up(cfg, 3, echo=echo, agents=True, controllers=0)
    for host in ("labhost1", "labhost2", "labhost3"):
        faults.inject(cfg, host, "clear", echo=lambda _m: None)
    for g in guests.locate_all(cfg):
        guests.delete(cfg, g.name)
    reset_controller_state(cfg)
    cluster.up(cfg, 3, install=False, echo=echo, agents=True, controllers=2)

    echo("== 2. guests: " + ", ".join(f"{vm} on {h}" for vm, h in DEMO_GUESTS.items()))
    for vm, host in DEMO_GUESTS.items():
        guests.create(cfg, vm, host, memory_mib=128, dirty_mib=2, wait=False)
    for vm in DEMO_GUESTS:
        wait_ticking(guests.console_path(cfg, vm), timeout_s=120)
    _wait_published(cfg, list(DEMO_GUESTS), 60)
    echo("   every guest is ticking and known to the controllers")

    files = [controller_dir(cfg, f"ctl-{n}") / "audit.jsonl" for n in (1, 2)]
    timeline = Timeline(files, echo).start()
    try:
        echo("== 3. labhost1 reports corrected memory errors (EDAC): degraded -> live evacuation")
        faults.inject(cfg, "labhost1", "memory-errors", echo=lambda m: echo(f"   inject: {m}"))
        timeline.wait_for(events.INCIDENT_CLOSED, lambda e: e.get("host") == "labhost1", 300)

        echo("== 4. labhost2 loses power: libvirtd, its QEMU guests and its agent are killed")
        faults.inject(cfg, "labhost2", "host-kill", echo=lambda m: echo(f"   inject: {m}"))
        timeline.wait_for(events.INCIDENT_CLOSED, lambda e: e.get("host") == "labhost2", 300)
    finally:
        timeline.stop()

    echo("== 5. where every guest runs now")
    where = {g.name: g.hosts for g in guests.locate_all(cfg)}
    for vm in DEMO_GUESTS:
        hosts = where.get(vm, ())
        console = guests.console_path(cfg, vm)
        tick = last_tick(console)
        alive = wait_ticking(console, timeout_s=60, after=tick.count if tick else 0)
        echo(f"   {vm:8} was on {DEMO_GUESTS[vm]}, runs on {', '.join(hosts) or 'NOWHERE'} "
             f"({'exactly once' if len(hosts) == 1 else 'NOT exactly once'}), ticking (tick {alive.count})")
    echo(f"the lab keeps running: drctl lab status / drctl lab down --dir {cfg.dir}; audit trails in "
         f"{cfg.dir}/controllers/*/audit.jsonl (try: drctl postmortem INCIDENT FILE... --out report.html)")


def _wait_published(cfg: cluster.LabConfig, vms: list[str], timeout_s: float) -> None:
    from drctl.store.etcd import EtcdStore
    from drctl.store.keys import Keys

    store = EtcdStore([cfg.etcd_endpoint], timeout=3)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(store.get(Keys().vm_definition(vm)) is not None for vm in vms):
                return
            time.sleep(0.5)
        raise TimeoutError(f"agents did not publish {vms} within {timeout_s:.0f}s")
    finally:
        store.close()
