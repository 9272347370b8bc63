"""A fenced host returns after its VMs were restarted elsewhere (issue 12, cases 3 and 11).

Simulated: SimClock, MemoryStore, simulated hosts and real agents. The restart elsewhere
is done the way the runner does it (define from the stored definition, start, then the
placement record), so the agents see exactly what they would see after a recovery.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from drctl.audit import writer as audit
from drctl.clock import SimClock
from drctl.config.settings import AgentConfig
from drctl.health.agent import Agent
from drctl.health.inventory import HostView, Publisher
from drctl.health.probes import ProbeSpec
from drctl.hypervisor import DomainState
from drctl.hypervisor.sim import SimCluster
from drctl.model.records import PlacementRecord, parse_definition
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

HOSTS = ("hv1", "hv2", "hv3")
KEYS = Keys()
XML = "<domain><name>web-1</name><memory unit='MiB'>128</memory><vcpu>1</vcpu></domain>"


class World:
    def __init__(self) -> None:
        self.clock = SimClock()
        self.sink = audit.configure("test", clock=self.clock.now, keep_in_memory=True)
        self.store = MemoryStore(self.clock)
        self.sim = SimCluster(self.clock)
        for h in HOSTS:
            self.sim.add_host(h)
        hv = self.sim.connect("sim://hv1")
        hv.define(XML)
        hv.start("web-1")
        self.agents = {h: self.new_agent(h) for h in HOSTS}
        self.running = set(HOSTS)

    def new_agent(self, host: str) -> Agent:
        probes = (ProbeSpec("libvirt", "libvirt", 1.0, 1.0, None, None, {"uri": ""}),)
        cfg = AgentConfig(host=host, libvirt_uri=SimCluster.uri(host), probes=probes, inventory_interval_s=1.0)
        return Agent(cfg, self.store, KEYS, lambda uri, _t: self.sim.connect(uri), self.clock, background=False)

    def drive(self, seconds: float, dt: float = 0.05) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            for h in sorted(self.running):
                if self.clock.monotonic() >= self.agents[h].next_due():
                    self.agents[h].tick()
            self.clock.advance(dt)

    def host_dies(self, host: str) -> None:
        """Fenced: power off, so the agent stops and libvirtd is gone."""
        self.running.discard(host)
        self.sim.hosts[host].up = False
        for d in self.sim.hosts[host].domains.values():
            d.state = DomainState.SHUTOFF  # powered off
        lease = self.agents[host]._lease
        assert lease is not None
        lease.stop_keepalive()  # type: ignore[attr-defined]

    def host_returns(self, host: str) -> None:
        """Powered on again: libvirtd starts (autostarting what is marked so), then a
        fresh agent."""
        self.sim.boot(host)
        self.agents[host] = self.new_agent(host)
        self.running.add(host)

    def restart_elsewhere(self, vm: str, dst: str) -> None:
        """What the runner does for a restart intent: define from the stored definition,
        start, and (after verifying) write the placement record."""
        kv = self.store.get(KEYS.vm_definition(vm))
        assert kv is not None, f"no stored definition of {vm}"
        hv = self.sim.connect(SimCluster.uri(dst))
        hv.define(parse_definition(kv.key, kv.value, vm).xml)
        hv.start(vm)
        self.store.put(KEYS.vm(vm), PlacementRecord(vm, dst, intent=f"i-{vm}-{dst}").to_json())

    def definition_host(self, vm: str) -> str | None:
        kv = self.store.get(KEYS.vm_definition(vm))
        return None if kv is None else json.loads(kv.value)["host"]

    def running_on(self, vm: str) -> list[str]:
        return sorted(h for h, host in self.sim.hosts.items()
                      if vm in host.domains and host.domains[vm].state is DomainState.RUNNING)


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    w.drive(3)
    assert w.definition_host("web-1") == "hv1"
    yield w
    w.store.close()


def test_returned_host_keeps_the_definition_record_for_a_second_restart(world: World) -> None:
    """Case 11: hv1 returns with its stale copy; its fresh agent must not overwrite the
    record, and once the copy is gone it must not delete it: hv2 then dies and the
    second restart still finds the definition."""
    world.host_dies("hv1")
    world.restart_elsewhere("web-1", "hv2")
    world.drive(3)
    assert world.definition_host("web-1") == "hv2"
    # hv2 does not run it (yet) per its inventory: the returning agent keeps the copy defined
    world.sim.hosts["hv2"].domains["web-1"].state = DomainState.SHUTOFF
    world.drive(1.5)  # hv2's inventory says so
    world.host_returns("hv1")
    world.drive(3)
    assert world.definition_host("web-1") == "hv2", "the returned host overwrote the record"
    assert "web-1" in world.sim.hosts["hv1"].domains  # kept: not verified running elsewhere
    world.sim.hosts["hv2"].domains["web-1"].state = DomainState.RUNNING
    # the controller's stale-copy removal undefines the copy on hv1
    world.sim.connect("sim://hv1").undefine("web-1")
    world.drive(3)
    assert world.definition_host("web-1") == "hv2", "the returned host deleted the only record"
    world.host_dies("hv2")
    world.restart_elsewhere("web-1", "hv3")  # fails with "no stored definition" before the fix
    world.drive(3)
    assert world.running_on("web-1") == ["hv3"] and world.definition_host("web-1") == "hv3"


def test_publisher_writes_and_deletes_only_what_it_owns() -> None:
    clock = SimClock()
    store = MemoryStore(clock)
    mine = json.dumps({"vm": "x", "host": "a", "xml": XML}).encode()
    theirs = json.dumps({"vm": "x", "host": "b", "xml": XML}).encode()
    a, b = Publisher(store, KEYS, "a"), Publisher(store, KEYS, "b")
    assert a.publish(HostView({}, {"x": mine})) == ["x"]  # no placement, no record: first writer owns
    assert b.publish(HostView({}, {"x": theirs})) == []  # owned by a
    store.put(KEYS.vm("x"), PlacementRecord("x", "b").to_json())
    assert b.publish(HostView({}, {"x": theirs})) == ["x"]  # placement names b now
    assert a.publish(HostView({}, {})) == []  # a's copy went: not a's record to delete
    assert store.get(KEYS.vm_definition("x")).value == theirs  # type: ignore[union-attr]
    assert b.publish(HostView({}, {})) == ["x"]  # the owner's VM is undefined: its record goes
    assert store.get(KEYS.vm_definition("x")) is None


def test_returned_host_with_autostart_stops_its_copy_before_publishing(world: World) -> None:
    """Case 3: libvirtd autostarts the old copy when hv1 boots; the agent's start-up check
    stops it (the VM runs on hv2), switches autostart off and undefines it."""
    world.sim.connect("sim://hv1").set_autostart("web-1", True)
    world.host_dies("hv1")
    world.restart_elsewhere("web-1", "hv2")
    world.drive(3)
    world.host_returns("hv1")
    assert world.running_on("web-1") == ["hv1", "hv2"]  # libvirtd's autostart, before the agent
    world.agents["hv1"].tick()
    assert world.running_on("web-1") == ["hv2"]
    assert "web-1" not in world.sim.hosts["hv1"].domains
    stale = [e for e in world.sink.lines if e["event"] == "agent.stale_copy"]
    assert stale and stale[-1]["actions"] == ["stopped", "autostart off", "undefined"] and stale[-1]["host"] == "hv1"
    inv = json.loads(world.store.get(KEYS.inventory("hv1")).value)  # type: ignore[union-attr]
    assert [v["name"] for v in inv["vms"]] == []  # published only after the check
    world.drive(3)
    assert world.running_on("web-1") == ["hv2"] and world.definition_host("web-1") == "hv2"


def test_returned_host_stops_its_copy_even_when_the_owner_is_not_seen_running_it(world: World) -> None:
    """The placement host is dead too (its lease gone): the copy here may be a duplicate of
    one we cannot see, so it is stopped and kept defined with autostart off - never run."""
    world.sim.connect("sim://hv1").set_autostart("web-1", True)
    world.host_dies("hv1")
    world.restart_elsewhere("web-1", "hv2")
    world.drive(3)
    world.host_dies("hv2")
    world.drive(3)  # hv2's lease expires
    world.host_returns("hv1")
    world.drive(1)
    dom = world.sim.hosts["hv1"].domains["web-1"]
    assert dom.state is DomainState.SHUTOFF and dom.autostart is False
    stale = [e for e in world.sink.lines if e["event"] == "agent.stale_copy"]
    assert stale[-1]["actions"] == ["stopped", "autostart off"]


def test_only_copy_is_kept_when_the_placement_host_runs_nothing(world: World) -> None:
    """A placement record out of date (the VM was moved by hand) never costs the only
    running copy: the owner is alive and does not run it, so ours keeps running."""
    world.store.put(KEYS.vm("web-1"), PlacementRecord("web-1", "hv3").to_json())
    world.drive(1.5)  # hv3 publishes an inventory after that record: it does not run web-1
    world.agents["hv1"] = world.new_agent("hv1")  # an agent restart (an upgrade)
    world.drive(2)
    assert world.running_on("web-1") == ["hv1"]
    stale = [e for e in world.sink.lines if e["event"] == "agent.stale_copy"]
    assert stale[-1]["actions"] == ["kept running"]


def test_returned_host_stops_its_copy_while_the_restart_elsewhere_is_still_verifying(world: World) -> None:
    """Seen on the lab: hv1 came back while the runner was still verifying the restart on
    hv2 (no placement record yet); its copy, autostarted, kept running next to the new one."""
    from drctl.control.intents import create_intents, new_intent
    from dataclasses import replace

    from drctl.model.cluster import IntentKind, IntentState, Move

    world.sim.connect("sim://hv1").set_autostart("web-1", True)
    world.host_dies("hv1")
    it = new_intent(Move("web-1", "hv1", "hv2", kind=IntentKind.RESTART), "inc-1", 1, world.clock.now())
    assert create_intents(world.store, KEYS, [replace(it, state=IntentState.VERIFYING)])
    hv = world.sim.connect("sim://hv2")
    hv.define(XML)
    hv.start("web-1")  # started, not yet verified: no placement record
    world.drive(2)
    world.host_returns("hv1")
    assert world.running_on("web-1") == ["hv1", "hv2"]
    world.agents["hv1"].tick()
    assert world.running_on("web-1") == ["hv2"]
    stale = [e for e in world.sink.lines if e["event"] == "agent.stale_copy"]
    assert stale[-1]["placement"] == "hv2" and stale[-1]["actions"] == ["stopped", "autostart off", "undefined"]


def test_an_inventory_older_than_the_placement_proves_no_copy_is_the_only_one(world: World) -> None:
    """Seen on the lab: the returning host's check ran before the new host published the
    restarted VM; the owner's old inventory (not listing it) made the copy look like the
    only one and it kept running next to the new one."""
    world.sim.connect("sim://hv1").set_autostart("web-1", True)
    world.host_dies("hv1")
    world.running.discard("hv2")  # hv2's agent does not publish again before hv1 returns
    world.restart_elsewhere("web-1", "hv2")
    world.host_returns("hv1")
    world.agents["hv1"].tick()
    assert world.running_on("web-1") == ["hv2"]
    stale = [e for e in world.sink.lines if e["event"] == "agent.stale_copy"]
    assert stale[-1]["actions"] == ["stopped", "autostart off"]  # kept defined: not verified there
