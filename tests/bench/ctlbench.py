"""What the controller benches (failover, recovery, reaction) share: a lab of their own
with agents and controller replicas, the controllers' and agents' audit trails read back
as (epoch seconds, event) and the controller state reset between runs.

Times come from the audit trails (each line's `ts`, wall clock, millisecond resolution)
and from `time.time()` in the bench for what the bench itself does (a kill, an injected
fault): one machine, one clock.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from typing import Self

from drctl.model.errors import DrctlError
from drctl.hypervisor.libvirt_adapter import connect
from drctl.lab import cluster, faults, guests
from drctl.lab.cluster import LabConfig, LabState
from drctl.lab.controllers import controller_key, forget_decisions, start_controllers, stop_controllers
from drctl.store.etcd import EtcdStore
from drctl.store.keys import Keys

KEYS = Keys()
HOSTS = 3


def lab_config(env_name: str, directory: str, etcd_port: int, addr_prefix: str, migration_base: int) -> LabConfig:
    """The bench's own lab; DRCTL_<ENV_NAME>_LAB_{DIR,ETCD_PORT,ETCD_PEER_PORT,ADDR_PREFIX,
    MIGRATION_PORT_BASE} override each value."""
    def env(key: str, default: object) -> str:
        return os.environ.get(f"DRCTL_{env_name}_LAB_{key}", str(default))

    return LabConfig(dir=Path(env("DIR", directory)), etcd_port=int(env("ETCD_PORT", etcd_port)),
                     etcd_peer_port=int(env("ETCD_PEER_PORT", etcd_port + 10)),
                     addr_prefix=env("ADDR_PREFIX", addr_prefix),
                     migration_port_base=int(env("MIGRATION_PORT_BASE", migration_base)))


def quiet(_msg: str) -> None:
    pass


def wait_for(pred: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.02) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 10 values is the maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


# ------------------------------------------------------------------ audit trails


class Trail:
    """Audit lines of the lab's controllers (`<lab>/controllers/ctl-N/audit.jsonl`) and
    agents (`<lab>/agents/<host>/audit.jsonl`), read incrementally; each line gains
    `_t` (epoch seconds) and `_src` (where it came from: ctl-N or agent:<host>; `origin=` filters on it)."""

    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self._pos: dict[Path, int] = {}
        self.lines: list[dict] = []

    def _files(self) -> Iterable[tuple[str, Path]]:
        for f in sorted((self.cfg.dir / "controllers").glob("ctl-*/audit.jsonl")):
            yield f.parent.name, f
        for f in sorted((self.cfg.dir / "agents").glob("*/audit.jsonl")):
            yield f"agent:{f.parent.name}", f

    def read(self) -> list[dict]:
        for src, f in self._files():
            try:
                with open(f, "rb") as fh:
                    fh.seek(self._pos.get(f, 0))
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
            self._pos[f] = self._pos.get(f, 0) + end
            for raw in data[:end].splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                line["_t"], line["_src"] = epoch(line["ts"]), src
                self.lines.append(line)
        return self.lines

    def skip_to_end(self) -> None:
        """Forget everything written so far (the next reads see only newer lines)."""
        self.read()
        self.lines = []

    def find(self, event: str, since: float = 0.0, origin: str | None = None, **match: object) -> list[dict]:
        self.read()
        return sorted((e for e in self.lines if e.get("event") == event and e["_t"] >= since
                       and (origin is None or e["_src"] == origin) and all(e.get(k) == v for k, v in match.items())),
                      key=lambda e: e["_t"])

    def first(self, event: str, since: float = 0.0, origin: str | None = None, **match: object) -> dict | None:
        found = self.find(event, since, origin, **match)
        return found[0] if found else None


# ------------------------------------------------------------------ the lab


class Lab:
    """A bench's lab: `HOSTS` hosts with agents and `replicas` controllers, torn down on
    close unless it was already up (or `keep`)."""

    def __init__(self, cfg: LabConfig, replicas: int, echo: Callable[[str], None], keep: bool = False) -> None:
        self.cfg, self.replicas, self.echo, self.keep = cfg, replicas, echo, keep
        etcd_ok, hosts = cluster.status(cfg)
        self.was_up = etcd_ok and len(hosts) >= HOSTS and all(h.responds for h in hosts)
        if not etcd_ok and cluster.etcd_healthy(cfg, 0.5):
            sys.exit(f"port {cfg.etcd_port} already serves an etcd this lab did not start: set the bench's "
                     f"DRCTL_*_LAB_ETCD_PORT (and _ADDR_PREFIX, _DIR) to free values")
        self.store: EtcdStore | None = None

    def __enter__(self) -> Self:
        t0 = time.monotonic()
        cluster.up(self.cfg, HOSTS, install=False, echo=quiet, agents=True)
        self.store = EtcdStore([self.cfg.etcd_endpoint], timeout=3)
        self.stop_controllers()
        self.reset_state(leaders=True)
        for f in (self.cfg.dir / "controllers").glob("ctl-*/audit.jsonl"):
            f.unlink()
        self.start_controllers()
        wait_for(self.leader, 30, "a leader", 0.1)
        self.echo(f"lab up at {self.cfg.dir} in {time.monotonic() - t0:.0f}s "
                  f"({HOSTS} hosts, {self.replicas} controllers)")
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.stop_controllers()
            if self.store is not None:
                self.store.close()
        finally:
            if not self.was_up and not self.keep:
                cluster.down(self.cfg, echo=quiet)

    # ------------------------------------------------------------ controllers
    def start_controllers(self) -> list[str]:
        return start_controllers(self.cfg, LabState.load(self.cfg), self.replicas, echo=quiet)

    def stop_controllers(self) -> None:
        stop_controllers(self.cfg)

    def controller_pid(self, name: str) -> int:
        return LabState.load(self.cfg).extra_pids.get(controller_key(name), 0)

    def leader(self) -> str | None:
        assert self.store is not None
        kvs, _ = self.store.get_prefix(KEYS.leader_prefix())
        if not kvs:
            return None
        return json.loads(min(kvs, key=lambda kv: kv.create_revision).value)["name"]

    # ------------------------------------------------------------ etcd state
    def reset_state(self, leaders: bool = False, vms: Iterable[str] = ()) -> None:
        """Forget intents, claims, incidents and placement records (and the given VMs'
        stored definitions); with `leaders`, election keys too (controllers stopped)."""
        assert self.store is not None
        forget_decisions(self.cfg, election_keys=leaders)
        for vm in vms:
            self.store.delete(KEYS.vm_definition(vm))

    def intents(self) -> list[dict]:
        assert self.store is not None
        kvs, _ = self.store.get_prefix(KEYS.intents_prefix())
        return [json.loads(kv.value) for kv in kvs]

    def claims(self) -> dict[str, str]:
        assert self.store is not None
        kvs, _ = self.store.get_prefix(KEYS.intent_claims_prefix())
        return {Keys.last_segment(kv.key): kv.value.decode() for kv in kvs}

    def grade(self, host: str) -> str | None:
        assert self.store is not None
        kv = self.store.get(KEYS.health(host))
        return json.loads(kv.value).get("grade") if kv else None

    def witnesses(self, host: str) -> int:
        assert self.store is not None
        kvs, _ = self.store.get_prefix(KEYS.witness_prefix(host))
        return len(kvs)

    def all_healthy(self) -> bool:
        """Every host graded healthy and watched by two witnesses (else a kill could only
        read as unreachable)."""
        names = [self.cfg.host_name(n) for n in range(1, HOSTS + 1)]
        return all(self.grade(h) == "healthy" and self.witnesses(h) >= 2 for h in names)

    def inventory_vms(self, host: str) -> dict[str, str]:
        assert self.store is not None
        kv = self.store.get(KEYS.inventory(host))
        return {str(v["name"]): str(v.get("state")) for v in (json.loads(kv.value).get("vms") or ())} if kv else {}

    # ------------------------------------------------------------ guests
    def create_guests(self, host: str, names: list[str], memory_mib: int, dirty_mib: int) -> None:
        """Start ticking guests on `host` and wait until its agent has published them
        (definitions and inventory): only then does the controller know they are there."""
        for name in names:
            guests.create(self.cfg, name, host, memory_mib=memory_mib, dirty_mib=dirty_mib, wait=False)
        for name in names:
            guests.wait_ticking(guests.console_path(self.cfg, name), timeout_s=120)
        assert self.store is not None
        wait_for(lambda: all(self.store.get(KEYS.vm_definition(n)) for n in names)  # type: ignore[union-attr]
                 and all(self.inventory_vms(host).get(n) == "running" for n in names), 60,
                 f"{host}'s agent to publish {', '.join(names)}", 0.2)

    def delete_guests(self, names: Iterable[str]) -> None:
        """Destroy and undefine these guests wherever they are (running or shut off)."""
        wanted = set(names)
        for uri in guests.host_uris(self.cfg).values():
            try:
                hv = connect(uri, timeout_s=5)
            except DrctlError:
                continue
            try:
                for d in hv.list_domains():
                    if d.name in wanted:
                        for op in (hv.destroy, hv.undefine):
                            try:
                                op(d.name)
                            except DrctlError:
                                pass
            finally:
                hv.close()


    # ------------------------------------------------------------ one episode
    def start_episode(self, host: str, names: list[str], memory_mib: int, dirty_mib: int) -> None:
        """Every host healthy and witnessed, then `names` ticking on `host` and published."""
        wait_for(self.all_healthy, 120, "every host healthy and witnessed", 0.2)
        self.create_guests(host, names, memory_mib, dirty_mib)
        wait_for(self.all_healthy, 60, "every host healthy after the guests started", 0.2)

    def end_episode(self, host: str, names: list[str]) -> None:
        """Undo a fault on `host`, wait until it is healthy again, remove the guests and
        forget the episode's intents, incidents and placements."""
        faults.inject(self.cfg, host, "clear", echo=quiet)
        wait_for(self.all_healthy, 120, f"{host} healthy again", 0.2)
        self.delete_guests(names)
        self.reset_state(vms=names)
        wait_for(lambda: not any(n in self.inventory_vms(self.cfg.host_name(h)) for n in names
                                 for h in range(1, HOSTS + 1)), 60, "the agents to drop the deleted guests", 0.2)
        self.reset_state(vms=names)  # whatever an agent republished before it noticed


def episodes(lab: Lab, count: int, label: str, one: Callable[[Lab, Trail, int], dict],
             describe: Callable[[dict], str], echo: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    """Run `one(lab, trail, i)` `count` times; a run that fails (times out, or its trail
    is incomplete) is counted and reported, not measured, and the next one goes on."""
    trail = Trail(lab.cfg)
    rows: list[dict] = []
    failures: list[str] = []
    for i in range(count):
        try:
            row = one(lab, trail, i)
        except (RuntimeError, TimeoutError) as e:
            failures.append(str(e))
            echo(f"{label} {i + 1}/{count}: FAILED {e}")
            continue
        rows.append(row)
        echo(f"{label} {i + 1}/{count}: {describe(row)}")
    return rows, failures
