"""Detection benchmark: how fast a host's state turns `dead` after `host-kill`, and
`degraded` after `memory-errors`, as the controller would see it (drctl.health.grading verdicts
over a watch-fed mirror of the hosts prefix in etcd).

    python tests/bench/detection.py [--trials N] [--json] [--soak SECONDS] [--keep]

Brings up its own 3-host lab with agents (directory and ports below, or DRCTL_BENCH_LAB_*
variables) and tears it down afterwards unless it was already up or --keep is given.
--soak runs the false-positive check instead: both cores loaded, etcd restarted once
half-way, and any host reported dead or unreachable is a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drctl.control.view import host_states_from  # noqa: E402
from drctl.lab import cluster, faults  # noqa: E402
from drctl.lab.cluster import LabConfig, LabState  # noqa: E402
from drctl.model.cluster import HostState  # noqa: E402
from drctl.store import KV, EventKind, WatchEvent  # noqa: E402
from drctl.store.etcd import EtcdStore  # noqa: E402
from drctl.store.keys import Keys  # noqa: E402

HOSTS = 3
QUORUM = 2
TTL_S = 2
KEYS = Keys()


def bench_lab() -> LabConfig:
    env = os.environ.get
    return LabConfig(dir=Path(env("DRCTL_BENCH_LAB_DIR", "/var/lib/drctl-bench-detection")),
                     etcd_port=int(env("DRCTL_BENCH_LAB_ETCD_PORT", "24795")),
                     etcd_peer_port=int(env("DRCTL_BENCH_LAB_ETCD_PEER_PORT", "24805")),
                     addr_prefix=env("DRCTL_BENCH_LAB_ADDR_PREFIX", "127.0.29"),
                     migration_port_base=int(env("DRCTL_BENCH_LAB_MIGRATION_PORT_BASE", "56152")))


class Mirror:
    """The hosts prefix kept current by a watch; verdicts computed on demand (pure)."""

    def __init__(self, store: EtcdStore) -> None:
        self._lock = threading.Lock()
        kvs, rev = store.get_prefix(KEYS.hosts_prefix())
        self._kvs = {kv.key: kv for kv in kvs}
        store.watch_prefix(KEYS.hosts_prefix(), self._on, start_revision=rev + 1)

    def _on(self, ev: WatchEvent) -> None:
        with self._lock:
            if ev.kind is EventKind.DELETE:
                self._kvs.pop(ev.key, None)
            else:
                self._kvs[ev.key] = KV(ev.key, ev.value, 0, ev.revision)

    def states(self) -> dict[str, HostState]:
        with self._lock:
            kvs = list(self._kvs.values())
        return {h: v.state for h, v in host_states_from(kvs, KEYS, QUORUM, time.time()).items()}

    def wait(self, host: str, want: HostState, timeout_s: float, poll_s: float = 0.005) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if self.states().get(host) is want:
                return time.time() - t0
            time.sleep(poll_s)
        raise TimeoutError(f"{host} not {want.value} within {timeout_s}s (now {self.states()})")

    def witnessed(self) -> dict[str, int]:
        with self._lock:
            keys = list(self._kvs)
        out: dict[str, int] = {}
        for key in keys:
            parsed = KEYS.parse_host_key(key)
            if parsed and parsed[1].startswith("witness/"):
                out[parsed[0]] = out.get(parsed[0], 0) + 1
        return out

    def wait_all_healthy(self, timeout_s: float = 60) -> None:
        """Every host healthy and watched by a quorum of witnesses (else a kill could
        only ever read as unreachable)."""
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            s, w = self.states(), self.witnessed()
            if len(s) == HOSTS and all(v is HostState.HEALTHY and w.get(h, 0) >= QUORUM for h, v in s.items()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"lab not healthy within {timeout_s}s: {self.states()}")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def quiet(_msg: str) -> None:
    pass


def run_trials(cfg: LabConfig, mirror: Mirror, trials: int, echo) -> dict:  # type: ignore[no-untyped-def]
    detect, degrade = [], []
    for i in range(trials):
        victim, other = cfg.host_name(i % HOSTS + 1), cfg.host_name((i + 1) % HOSTS + 1)
        mirror.wait_all_healthy()
        faults.inject(cfg, victim, "host-kill", echo=quiet)
        detect.append(mirror.wait(victim, HostState.DEAD, 30))
        faults.inject(cfg, other, "memory-errors", echo=quiet)
        degrade.append(mirror.wait(other, HostState.DEGRADED, 30))
        faults.inject(cfg, victim, "clear", echo=quiet)
        faults.inject(cfg, other, "clear", echo=quiet)
        echo(f"trial {i + 1}/{trials}: {victim} dead after {detect[-1]:.3f}s, "
             f"{other} degraded after {degrade[-1]:.3f}s")
    return {
        "trials": trials, "ttl_s": TTL_S, "quorum": QUORUM,
        "detect_p50_s": round(statistics.median(detect), 3), "detect_p99_s": round(pct(detect, 99), 3),
        "detect_max_s": round(max(detect), 3), "degrade_p50_s": round(statistics.median(degrade), 3),
        "degrade_p99_s": round(pct(degrade, 99), 3), "goal_detect_p99_s": TTL_S + 1,
        "detect_s": [round(x, 3) for x in detect], "degrade_s": [round(x, 3) for x in degrade],
    }


def soak(cfg: LabConfig, mirror: Mirror, seconds: float, echo) -> dict:  # type: ignore[no-untyped-def]
    """Both cores busy, etcd restarted once half-way; count dead/unreachable verdicts."""
    mirror.wait_all_healthy()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    bad: list[str] = []
    restarted = False
    t0 = time.time()
    try:
        while time.time() - t0 < seconds:
            if not restarted and time.time() - t0 >= seconds / 2:
                state = LabState.load(cfg)
                cluster.stop_pid(state.etcd_pid, "etcd")
                cluster.start_etcd(cfg, state)
                state.save(cfg)
                restarted = True
                echo(f"etcd restarted at {time.time() - t0:.0f}s")
            for host, st in mirror.states().items():
                if st in (HostState.DEAD, HostState.UNREACHABLE):
                    bad.append(f"{time.time() - t0:.1f}s {host} {st.value}")
            time.sleep(0.1)
    finally:
        for p in burners:  # only the processes this run started
            p.kill()
            p.wait()
    return {"soak_s": seconds, "etcd_restarted": restarted, "false_positives": len(bad), "examples": bad[:10]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--soak", type=float, default=0, help="run the false-positive check for this many seconds")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    echo = (lambda m: print(m, file=sys.stderr)) if args.json else print
    cfg = bench_lab()
    etcd_ok, hosts = cluster.status(cfg)
    was_up = etcd_ok and len(hosts) >= HOSTS and all(h.responds for h in hosts)
    if not etcd_ok and cluster.etcd_healthy(cfg, 0.5):
        # someone else's etcd on our port: our agents would write into their lab
        sys.exit(f"port {cfg.etcd_port} already serves an etcd this lab did not start: "
                 f"set DRCTL_BENCH_LAB_ETCD_PORT (and _ADDR_PREFIX, _DIR) to free values")
    store = None
    try:
        cluster.up(cfg, HOSTS, install=False, echo=quiet, agents=True)
        store = EtcdStore([cfg.etcd_endpoint], timeout=2)
        mirror = Mirror(store)
        result = soak(cfg, mirror, args.soak, echo) if args.soak else run_trials(cfg, mirror, args.trials, echo)
    finally:
        if store is not None:
            store.close()
        if not was_up and not args.keep:
            cluster.down(cfg, echo=quiet)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20} {v}")


if __name__ == "__main__":
    main()
