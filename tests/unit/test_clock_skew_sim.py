"""Hosts whose clocks disagree (issue 12, case 17).

A record's `ts` is its writer's wall clock. The controller must judge a record's age by
the record's etcd revision and its own monotonic clock, never by comparing another host's
clock with its own: simulated agents with a skewed clock, the controller's shared view.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from drctl.audit import writer as audit
from drctl.clock import SimClock
from drctl.config.settings import AgentConfig
from drctl.control.view import SharedView
from drctl.health.agent import Agent
from drctl.health.probes import ProbeSpec
from drctl.hypervisor.sim import SimCluster
from drctl.model.cluster import HostState
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

HOSTS = ("hv1", "hv2", "hv3")
KEYS = Keys()


class SkewedClock:
    """A host's clock `skew_s` off the true time; its monotonic clock runs true."""

    def __init__(self, base: SimClock, skew_s: float) -> None:
        self.base, self.skew_s = base, skew_s

    def now(self) -> float:
        return self.base.now() + self.skew_s

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)


class World:
    def __init__(self, skews: dict[str, float]) -> None:
        self.clock = SimClock()
        audit.configure("test", clock=self.clock.now, keep_in_memory=True)
        self.store = MemoryStore(self.clock)
        self.sim = SimCluster(self.clock)
        self.agents: dict[str, Agent] = {}
        for h in HOSTS:
            self.sim.add_host(h)
        for h in HOSTS:
            probes = (ProbeSpec("libvirt", "libvirt", 1.0, 1.0, None, None, {"uri": ""}),)
            cfg = AgentConfig(host=h, libvirt_uri=SimCluster.uri(h), probes=probes, inventory_interval_s=1.0)
            clock = SkewedClock(self.clock, skews.get(h, 0.0))
            self.agents[h] = Agent(cfg, self.store, KEYS, lambda uri, _t: self.sim.connect(uri), clock,
                                   background=False)
        self.running = set(HOSTS)
        self.shared = SharedView(self.store, KEYS, None)  # the controller's view, default quorum

    def drive(self, seconds: float, dt: float = 0.05) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            for h in sorted(self.running):
                if self.clock.monotonic() >= self.agents[h].next_due():
                    self.agents[h].tick()
            self.clock.advance(dt)

    def states(self) -> dict[str, HostState]:
        """The controller reads once per tick (every 0.5 s of simulated time here)."""
        view = self.shared.refresh(self.clock.now(), self.clock.monotonic())
        return {h: v.state for h, v in view.verdicts.items()}

    def watch(self, seconds: float) -> list[dict[str, HostState]]:
        seen = []
        for _ in range(int(seconds / 0.5)):
            self.drive(0.5)
            seen.append(self.states())
        return seen

    def stop_agent(self, host: str, keep_lease: bool) -> None:
        self.running.discard(host)
        if not keep_lease:
            self.agents[host]._lease.stop_keepalive()  # type: ignore[union-attr]


@pytest.fixture(params=[-10.0, -60.0, 3600.0], ids=["10s-behind", "60s-behind", "1h-ahead"])
def skew(request: pytest.FixtureRequest) -> float:
    return float(request.param)


def test_host_with_a_skewed_clock_is_healthy(skew: float) -> None:
    """Before: hv2, 10 s behind, was `unreachable` ("health report is 10.x s old (agent
    stalled?)") for as long as it lived."""
    w = World({"hv2": skew})
    try:
        w.drive(2)
        seen = w.watch(30)
        assert all(s == {h: HostState.HEALTHY for h in HOSTS} for s in seen), seen[-1]
    finally:
        w.store.close()


def test_dead_host_is_declared_dead_though_a_witness_clock_is_behind(skew: float) -> None:
    """hv1's witnesses are hv2 and hv3 (a majority of two is two); hv3's clock is off.
    Before: hv3's reports looked stale, so hv1 stayed `unreachable` ("only 1 witnesses
    confirm") for ever."""
    w = World({"hv3": skew})
    try:
        w.drive(2)
        w.watch(3)
        w.sim.hosts["hv1"].up = False
        w.stop_agent("hv1", keep_lease=False)
        seen = w.watch(8)
        assert seen[-1]["hv1"] is HostState.DEAD, w.shared.latest.verdicts["hv1"].reason
        assert sum(1 for s in seen if s["hv1"] is HostState.DEAD) >= 5  # within ~3 s, then stays
    finally:
        w.store.close()


def test_stalled_agent_is_still_seen_by_its_unchanged_record(skew: float) -> None:
    """Judging by revision must keep what `ts` gave: an agent loop that stopped (its lease
    kept alive by the keepalive thread) is `unreachable` once its record is ~10 s unchanged,
    whatever its clock says (before: one an hour ahead was never seen stalled)."""
    w = World({"hv2": skew})
    try:
        w.drive(2)
        w.watch(3)
        w.stop_agent("hv2", keep_lease=True)
        seen = w.watch(14)
        assert seen[10]["hv2"] is HostState.HEALTHY  # 5.5 s after: not yet
        assert seen[-1]["hv2"] is HostState.UNREACHABLE
        assert "agent stalled" in w.shared.latest.verdicts["hv2"].reason
    finally:
        w.store.close()


def test_a_report_a_witness_stopped_rewriting_stops_counting() -> None:
    """A report is evidence only while its witness keeps rewriting it: a new leader counts
    what it finds for one staleness threshold (3 s here), then a stalled witness's last
    report no longer confirms a death."""
    w = World({})
    try:
        w.drive(3)
        w.sim.hosts["hv1"].up = False
        w.stop_agent("hv1", keep_lease=False)
        w.drive(3)  # hv1's lease is gone, hv2 and hv3 report it unreachable
        w.stop_agent("hv3", keep_lease=True)  # hv3's loop stalls with its report in place
        fresh = SharedView(w.store, KEYS, None)  # a leader that starts now
        view = fresh.refresh(w.clock.now(), w.clock.monotonic())
        assert view.verdicts["hv1"].state is HostState.DEAD  # what it finds counts at first
        w.drive(3.5)
        view = fresh.refresh(w.clock.now(), w.clock.monotonic())
        assert view.verdicts["hv1"].state is HostState.UNREACHABLE  # hv3's report never changed
        assert "only 1 witnesses confirm" in view.verdicts["hv1"].reason
    finally:
        w.store.close()
