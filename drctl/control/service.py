"""One controller replica as a process: the election loop plus a migration runner.

Every replica runs a runner (claims keep two runners off one intent, and a dead replica's
claims lapse with its lease), but only the leader decides. The runner learns hosts'
libvirt URIs and states from the leader loop's latest view of etcd; a follower refreshes
that view itself every few seconds so its runner can finish intents too.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.clock import SystemClock
from drctl.control.view import build_snapshot, read_cluster, verdicts_of
from drctl.config.settings import Config
from drctl.control.tick import Settings
from drctl.control.loop import ControllerLoop
from drctl.control.plugins import load_guest_health
from drctl.model.errors import ConfigError, DrctlError
from drctl.fencing.agents import FenceAgent, make_agent
from drctl.model.cluster import Host, Snapshot
from drctl.policy import Policy, default_policy, load_policy
from drctl.store import Store
from drctl.store.keys import Keys

Echo = Callable[[str], None]


class ClusterCache:
    """The latest snapshot and host URIs, shared by the loop and the runner."""

    def __init__(self, store: Store, keys: Keys, quorum: int | None) -> None:
        self.store, self.keys, self.quorum = store, keys, quorum
        self.snapshot = Snapshot({}, {})
        self.uris: dict[str, str] = {}
        self._lock = threading.Lock()

    def refresh(self) -> Snapshot:
        clock = SystemClock()
        records = read_cluster(self.store, self.keys)
        snap = build_snapshot(records, verdicts_of(records, self.keys, self.quorum, clock.now()), clock.now())
        with self._lock:
            self.snapshot = snap
            self.uris.update({h: str(inv["uri"]) for h, inv in records.inventories.items() if inv.get("uri")})
        return snap

    def host(self, name: str) -> Host | None:
        with self._lock:
            return self.snapshot.hosts.get(name)


def load_controller_policy(path: str) -> Policy:
    if not path:
        return default_policy()
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"controller.policy: {path} is a directory; name one policy file")
    return load_policy(p)


def fence_agents(cfg: Config) -> dict[str, FenceAgent]:
    assert cfg.controller is not None
    return {name: make_agent(name, spec.spec()) for name, spec in cfg.controller.fence_agents.items()}


def run(cfg: Config, store: Store, stop: threading.Event, echo: Echo) -> None:
    """Run one replica until `stop` is set."""
    from drctl.hypervisor.libvirt_adapter import connect
    from drctl.runner.executor import Runner, RunnerConfig

    if cfg.controller is None:
        raise ConfigError(f"{cfg.path}: no `controller:` section")
    cc = cfg.controller
    keys = Keys(cfg.etcd.prefix)
    policy = load_controller_policy(cc.policy)
    agents = fence_agents(cfg)
    if policy.evidence.fence_agent and policy.evidence.fence_agent not in agents:
        raise ConfigError(f"{cfg.path}: policy {policy.name} fences with {policy.evidence.fence_agent!r}, "
                          f"but controller.fence_agents has {sorted(agents) or 'none'}")
    cache = ClusterCache(store, keys, cc.witness_quorum or policy.evidence.witness_quorum)
    cache.refresh()
    runner = None
    if cc.runner_enabled:
        health = load_guest_health(cc.guest_health, f"{cfg.path}: controller.guest_health")
        runner = Runner(store, keys, cache.uris, lambda uri: connect(uri, timeout_s=15), SystemClock(),
                        RunnerConfig(runner_id=cc.name, limits=policy.limits, lease_ttl_s=cc.runner_lease_ttl_s),
                        health=health, host_state=cache.host)
        runner.uris = cache.uris  # share the live mapping: hosts join as their agents publish
    loop = ControllerLoop(store, keys, policy, cc.name, fence_agents=agents, lease_ttl=cc.lease_ttl_s,
                          tick_interval_s=cc.tick_interval_s, quorum=cc.witness_quorum, echo=echo,
                          settings=Settings(stale_after_s=cc.stale_after_s, reopen_after_s=cc.reopen_after_s))
    threads = [threading.Thread(target=_refresh_forever, args=(cache, stop), name="cluster-cache", daemon=True)]
    if runner is not None:
        threads.append(threading.Thread(target=_run_runner, args=(runner, stop), name="runner", daemon=True))
    for t in threads:
        t.start()
    audit.emit(events.CONTROLLER_STARTED, name=cc.name, policy=policy.name, runner=bool(runner))
    echo(f"{cc.name}: controller started (policy {policy.name}, runner {'on' if runner else 'off'})")
    try:
        loop.run(stop)
    finally:
        stop.set()
        if runner is not None:
            runner.close()


def _refresh_forever(cache: ClusterCache, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            cache.refresh()
        except DrctlError as e:
            audit.warn(events.CONTROLLER_VIEW_FAILED, error=str(e))
        stop.wait(1.0)


def _run_runner(runner, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
    while not stop.is_set():
        try:
            runner.run_forever(stop)
        except DrctlError as e:  # etcd outage: report, wait, carry on
            audit.warn(events.RUNNER_PAUSED, error=str(e))
            stop.wait(1.0)
