"""Issue 12 cases 6 and 12 on the controller's side: copies of a VM found on live hosts.

The controller loop on the memory store, its libvirt calls going to a SimCluster: a copy is
undefined only where the VM is verified running elsewhere, and a VM running twice has its
non-authoritative copy stopped at once."""
from __future__ import annotations

import json

import pytest

from drctl.control import intents
from drctl.control.intents import IntentParams, new_intent
from drctl.control.loop import ControllerLoop
from drctl.hypervisor import DomainState
from drctl.hypervisor.sim import SimCluster
from drctl.model.cluster import IntentState, Move
from drctl.model.records import PlacementRecord
from drctl.policy import compile_policy
from tests.unit.test_controller_loop_sim import HOSTS, POLICY, Cluster

XML = "<domain><name>{}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu></domain>"
DRY = compile_policy("""
version: 1
name: sim-dry
dry_run: true
rules:
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
evidence:
  require: [lease-expired, witnesses]
  fence: waived  # no fence agent in this test; dropping the fence must be said (issue 12, case 2)
""", "dry.yaml")


class World:
    def __init__(self) -> None:
        self.c = Cluster()
        self.sim = SimCluster(self.c.clock)
        for h in HOSTS:
            self.sim.add_host(h)

    def copy(self, vm: str, host: str, running: bool) -> None:
        hv = self.sim.connect(self.sim.uri(host))
        hv.define(XML.format(vm))
        if running:
            hv.start(vm)

    def publish(self) -> None:
        """Each agent's inventory, as libvirt shows it now, newer than any move."""
        self.c.clock.advance(1.0)
        for h in HOSTS:
            vms = [{"name": d.name, "state": d.state.value, "memory_mib": d.memory_mib, "vcpus": d.vcpus}
                   for d in self.sim.hosts[h].domains.values()]
            inv = {"host": h, "uri": self.sim.uri(h), "memory_total_mib": 8192, "cpus": 4, "cpu_model": "qemu64",
                   "networks": [], "storage_pools": [], "labels": {}, "vms": vms, "ts": self.c.clock.now()}
            self.c.store.put(self.c.keys.inventory(h), json.dumps(inv).encode())
        self.c.report()

    def place(self, vm: str, host: str) -> None:
        rec = PlacementRecord(vm, host, "", "", True, self.c.clock.now())
        self.c.store.put(self.c.keys.vm(vm), rec.to_json())

    def tick(self, policy=POLICY) -> ControllerLoop:  # type: ignore[no-untyped-def]
        loop = ControllerLoop(self.c.store, self.c.keys, policy, "c1", clock=self.c.clock, connect=self.sim.connect)
        loop.election.campaign()
        lead = loop.election.current()
        assert lead is not None
        loop.tick_once(lead)
        return loop

    def states(self, vm: str) -> dict[str, str]:
        return {h: hs.domains[vm].state.value for h, hs in self.sim.hosts.items() if vm in hs.domains}


@pytest.fixture
def world() -> World:
    from drctl.audit import writer as audit

    w = World()
    w.sink = audit.configure("test", clock=w.c.clock.now, keep_in_memory=True)  # type: ignore[attr-defined]
    return w


def events(world: World, name: str) -> list[dict]:
    return [e for e in world.sink.lines if e["event"] == name]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ case 12


def test_stale_copy_removal_never_removes_the_only_copy(world: World) -> None:
    """The placement record names h2, but the VM runs nowhere: h1's shut-off copy is the
    only one left and must stay."""
    world.copy("app-1", "h1", running=False)
    world.place("app-1", "h2")
    world.publish()
    world.tick()
    assert world.states("app-1") == {"h1": "shutoff"}
    assert not events(world, "vm.stale_copy_removed")


def test_stale_copy_is_removed_once_the_vm_is_verified_running_on_its_placed_host(world: World) -> None:
    world.copy("app-2", "h1", running=False)
    world.copy("app-2", "h2", running=True)
    world.place("app-2", "h2")
    world.publish()
    world.tick()
    assert world.states("app-2") == {"h2": "running"}
    assert events(world, "vm.stale_copy_removed")[0]["host"] == "h1"


def test_stale_copy_is_kept_in_a_dry_run(world: World) -> None:
    world.copy("app-3", "h1", running=False)
    world.copy("app-3", "h2", running=True)
    world.place("app-3", "h2")
    world.publish()
    world.tick(DRY)
    assert world.states("app-3") == {"h1": "shutoff", "h2": "running"}


# ------------------------------------------------------------------ case 6, the controller's half


def finished_move(world: World, vm: str, src: str, dst: str, to: IntentState) -> str:
    it = new_intent(Move(vm, src, dst, reason="test"), "inc-x", 1, world.c.clock.now(), IntentParams())
    assert intents.create_intents(world.c.store, world.c.keys, [it])
    got = intents.get_intent(world.c.store, world.c.keys, it.id)
    assert got is not None
    path = [IntentState.CHECKING, IntentState.MIGRATING] + ([IntentState.VERIFYING] if to is IntentState.DONE else [])
    for state in [*path, to]:
        got = intents.transition(world.c.store, world.c.keys, got, state, "test", world.c.clock.now())
    return it.id


def test_duplicate_is_stopped_where_it_is_not_authoritative(world: World) -> None:
    """A move to h2 completed; a copy also runs on h1 (the given-up incoming copy of the lab
    observation, the other way round): h1's copy is stopped at once, with the incident."""
    world.copy("app-4", "h1", running=True)
    world.copy("app-4", "h2", running=True)
    world.place("app-4", "h2")
    iid = finished_move(world, "app-4", "h1", "h2", IntentState.DONE)
    world.publish()
    world.tick()
    assert world.sim.where("app-4") == ["h2"]
    stopped = events(world, "vm.duplicate_stopped")
    assert stopped and stopped[0]["host"] == "h1" and stopped[0]["kept"] == "h2"
    assert stopped[0]["intent"] == iid and stopped[0]["incident"] == "inc-x"


def test_duplicate_after_a_failed_move_keeps_the_placed_copy(world: World) -> None:
    world.copy("app-5", "h1", running=True)
    world.copy("app-5", "h2", running=True)
    world.place("app-5", "h1")
    finished_move(world, "app-5", "h1", "h2", IntentState.FAILED)
    world.publish()
    world.tick()
    assert world.sim.where("app-5") == ["h1"]
    assert world.sim.hosts["h2"].domains["app-5"].state is DomainState.SHUTOFF


def test_duplicate_during_a_move_in_flight_is_left_to_the_runner(world: World) -> None:
    world.copy("app-6", "h1", running=True)
    world.copy("app-6", "h2", running=True)
    world.place("app-6", "h1")
    it = new_intent(Move("app-6", "h1", "h2", reason="test"), "inc-y", 1, world.c.clock.now(), IntentParams())
    assert intents.create_intents(world.c.store, world.c.keys, [it])
    world.publish()
    world.tick()
    assert world.sim.where("app-6") == ["h1", "h2"]
    assert events(world, "vm.duplicate_detected") and not events(world, "vm.duplicate_stopped")
