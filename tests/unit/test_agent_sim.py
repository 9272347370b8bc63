"""A simulated run of three agents: SimClock, MemoryStore and simulated hosts.

Covers the agent's whole loop without a lab: graded health bound to the lease, witness
reports, inventory and VM definitions, and the host states the controller would read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from drctl.audit import writer as audit
from drctl.health.agent import Agent, choose_witnessed
from drctl.clock import SimClock
from drctl.config.settings import AgentConfig, Peer
from drctl.control.view import read_host_states
from drctl.hypervisor.sim import SimCluster
from drctl.model.cluster import HostState
from drctl.health.probes import KINDS, ProbeSpec
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

HOSTS = ("hv1", "hv2", "hv3")
KEYS = Keys()


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = SimClock()
        self.sink = audit.configure("test", clock=self.clock.now, keep_in_memory=True)
        self.store = MemoryStore(self.clock)
        self.sim = SimCluster(self.clock)
        self.edac = {}
        self.agents: dict[str, Agent] = {}
        for h in HOSTS:
            self.sim.add_host(h)
            mc = tmp / h / "mc" / "mc0"
            mc.mkdir(parents=True)
            (mc / "ce_count").write_text("0")
            (mc / "ue_count").write_text("0")
            self.edac[h] = mc / "ce_count"
        hv = self.sim.connect("sim://hv1")
        hv.define("<domain><name>web-1</name><memory unit='MiB'>128</memory><vcpu>1</vcpu></domain>")
        hv.start("web-1")
        for h in HOSTS:
            edac = KINDS["edac"]
            probes = (
                ProbeSpec("libvirt", "libvirt", 1.0, 1.0, None, None, {"uri": ""}),
                ProbeSpec("edac", "edac", 1.0, 1.0, 1.0, 1000.0, {"root": str(tmp / h), "window": 3600.0}),
            )
            assert edac.options.keys() == {"root", "window"}
            cfg = AgentConfig(host=h, libvirt_uri=SimCluster.uri(h), probes=probes, labels={"rack": f"r-{h}"},
                              peers=None if h != "hv3" else tuple(Peer(p, SimCluster.uri(p)) for p in HOSTS))
            self.agents[h] = Agent(cfg, self.store, KEYS, lambda uri, _t: self.sim.connect(uri), self.clock,
                                   background=False)
        self.running = set(HOSTS)

    def drive(self, seconds: float, dt: float = 0.05) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            for h in sorted(self.running):
                if self.clock.monotonic() >= self.agents[h].next_due():
                    self.agents[h].tick()
            self.clock.advance(dt)

    def states(self) -> dict[str, HostState]:
        return {h: v.state for h, v in read_host_states(self.store, KEYS, 2, self.clock.now()).items()}

    def until(self, host: str, want: HostState, limit: float) -> float:
        """Seconds of simulated time until `host` is in state `want` (fails after `limit`)."""
        start = self.clock.now()
        while self.states().get(host) is not want:
            assert self.clock.now() - start < limit, f"{host}: {self.states()} after {limit}s"
            self.drive(0.05)
        return self.clock.now() - start

    def kill_agent(self, host: str) -> None:
        """The agent process dies: nothing ticks or refreshes its lease any more."""
        self.running.discard(host)
        lease = self.agents[host]._lease
        assert lease is not None
        lease.stop_keepalive()  # type: ignore[attr-defined]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.drive(3)
    yield w
    w.store.close()


def test_all_healthy_with_inventory_and_definitions(world: World) -> None:
    assert world.states() == {h: HostState.HEALTHY for h in HOSTS}
    inv = json.loads(world.store.get(KEYS.inventory("hv1")).value)  # type: ignore[union-attr]
    assert inv["labels"] == {"rack": "r-hv1"} and inv["memory_total_mib"] == 16384 and inv["vms"][0]["name"] == "web-1"
    d = json.loads(world.store.get(KEYS.vm_definition("web-1")).value)  # type: ignore[union-attr]
    assert d["host"] == "hv1" and "<name>web-1</name>" in d["xml"]
    health = world.store.get(KEYS.health("hv2"))
    assert health is not None and health.lease == world.agents["hv2"]._lease.id  # type: ignore[union-attr]
    # each host is watched by two peers (hv1, hv2 find peers through the inventory)
    for h in HOSTS:
        kvs, _ = world.store.get_prefix(KEYS.witness_prefix(h))
        assert len(kvs) == 2, h
    assert [e["event"] for e in world.sink.lines].count("agent.registered") == 3


def test_memory_errors_degrade_after_hysteresis_and_clear(world: World) -> None:
    world.edac["hv1"].write_text("12")
    took = world.until("hv1", HostState.DEGRADED, 10)
    assert 1.5 <= took <= 4  # three 1s samples in a row
    v = read_host_states(world.store, KEYS, 2, world.clock.now())["hv1"]
    assert v.reason.startswith("edac 12 (threshold 1)")
    graded = [e for e in world.sink.lines if e["event"] == "health.graded"]
    assert graded[-1]["host"] == "hv1" and graded[-1]["to"] == "degraded" and graded[-1]["value"] == 12
    world.edac["hv1"].write_text("0")
    world.until("hv1", HostState.HEALTHY, 10)


def test_hung_libvirt_is_failing_not_dead(world: World) -> None:
    world.sim.hosts["hv2"].hung = True
    world.until("hv2", HostState.FAILING, 10)
    world.drive(5)
    assert world.states()["hv2"] is HostState.FAILING


def test_host_kill_is_dead_within_ttl_plus_a_second(world: World) -> None:
    world.sim.hosts["hv3"].up = False
    world.kill_agent("hv3")
    took = world.until("hv3", HostState.DEAD, 10)
    assert took <= world.agents["hv3"].cfg.lease_ttl_s + 1.1
    assert world.states()["hv1"] is HostState.HEALTHY


def test_agent_kill_with_libvirt_alive_is_unreachable(world: World) -> None:
    world.kill_agent("hv1")
    world.until("hv1", HostState.UNREACHABLE, 10)
    world.drive(5)
    assert world.states()["hv1"] is HostState.UNREACHABLE


def test_agent_re_registers_after_losing_its_lease(world: World) -> None:
    world.store.fail(True)
    world.drive(4)  # longer than the TTL: every lease expires
    world.store.fail(False)
    world.drive(3)
    assert world.states() == {h: HostState.HEALTHY for h in HOSTS}
    events = [e["event"] for e in world.sink.lines]
    assert events.count("agent.registered") == 6 and "agent.lease_lost" in events


def test_choose_witnessed_is_a_ring() -> None:
    peers = [Peer(h, "") for h in ("a", "b", "c", "d")]
    assert [p.name for p in choose_witnessed("c", peers, 2)] == ["d", "a"]
    assert choose_witnessed("a", peers, 0) == [] and len(choose_witnessed("a", peers, 9)) == 3


def test_witness_calls_a_peer_unreachable_only_after_failures_spanning_a_lease_ttl(world: World) -> None:
    """Issue 12, case 2: a blip shorter than the lease TTL (a NIC flap, a slow libvirtd) must
    not count as a witness confirming the host down; failures that last do."""
    from drctl.model.records import parse_witness

    def confirming() -> list[str]:
        kvs, _ = world.store.get_prefix(KEYS.witness_prefix("hv2"))
        reports = [parse_witness(kv.key, kv.value) for kv in kvs]
        return sorted(r.witness for r in reports if not r.libvirt_reachable)

    ttl = world.agents["hv1"].cfg.lease_ttl_s
    world.sim.hosts["hv2"].up = False
    seen: list[str] = []
    start = world.clock.now()
    while world.clock.now() - start < ttl * 0.9:
        world.drive(0.05)
        seen += confirming()
    assert seen == [], f"witnesses confirmed hv2 down after {world.clock.now() - start:.1f}s < TTL {ttl}s"
    world.drive(ttl + 1.5)
    assert confirming(), "failures spanning more than a lease TTL must be reported"
    world.sim.hosts["hv2"].up = True
    world.drive(1.5)
    assert confirming() == []
