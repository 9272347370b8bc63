"""`drctl lab demo`: bring the lab up, boot a ticking guest, live-migrate it, show libvirt's
own statistics of the move and that the guest kept ticking."""
from __future__ import annotations

from typing import Callable

from drctl.hypervisor import MigrationParams
from drctl.hypervisor.libvirt_adapter import connect
from drctl.lab import cluster, guests
from drctl.lab.guest import last_tick, wait_ticking

Echo = Callable[[str], None]


def migration_demo(cfg: cluster.LabConfig, echo: Echo, vm: str = "demo-1") -> dict[str, float]:
    cluster.up(cfg, 3, echo=echo)
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
    where = [g.hosts for g in guests.locate_all(cfg) if g.name == vm]
    result = {
        "total_ms": stats.elapsed_ms,
        "downtime_ms": stats.downtime_ms or 0,
        "data_mib": round(stats.data_processed / 2**20, 1),
        "iterations": stats.memory_iteration,
    }
    echo(f"migrated: total {result['total_ms']} ms, downtime {result['downtime_ms']} ms, "
         f"{result['data_mib']} MiB sent in {result['iterations']} iterations")
    echo(f"{vm} now runs on {', '.join(where[0]) if where else '?'} and keeps ticking (tick {after.count})")
    return result
