"""Issue 12, case 8 end to end on the simulators (MemoryStore + SimCluster + SimClock): the
controller loop and a runner together, the source host dying while its evacuation migrates.
Every VM of the host must run again elsewhere, once, and every intent and the incident end."""
from __future__ import annotations

import json
import time
from pathlib import Path

from drctl.audit import writer as audit
from drctl.clock import SimClock
from drctl.control import intents
from drctl.control.loop import ControllerLoop, incident_from_json
from drctl.control.tick import IncidentKind, IncidentPhase
from drctl.fencing.agents import FenceResult
from drctl.health.grading import Grade, HealthRecord, WitnessReport
from drctl.hypervisor.sim import SimCluster
from drctl.lab.guest import GuestImage, domain_xml
from drctl.model.cluster import IntentKind, IntentState
from drctl.policy import compile_policy
from drctl.runner.executor import Runner, RunnerConfig
from drctl.runner.migration import WatchConfig
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

HOSTS = ("h1", "h2", "h3")
VMS = ("web-1", "web-2")
POLICY = compile_policy(
    """
version: 1
name: sim
rules:
  - name: evacuate-degraded
    when: {state: degraded, for: 0s}
    action: live-migrate
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
evidence:
  require: [lease-expired, witnesses, fence]
  fence_agent: sim
limits:
  blast_radius: {max_hosts: 1}
""",
    "sim.yaml",
)


class World:
    def __init__(self) -> None:
        self.clock = SimClock()
        self.sink = audit.configure("test", clock=self.clock.now, keep_in_memory=True)
        self.store = MemoryStore(self.clock)
        self.keys = Keys()
        self.sim = SimCluster(self.clock)
        # h1's lease is the agents' 2 s; the others outlive the simulated time the runner's
        # backoff sleeps skip (their agents would keep them alive all along)
        self.leases = {h: self.store.grant_lease(2 if h == "h1" else 3600, keepalive=False) for h in HOSTS}
        self.down: set[str] = set()
        self.seq = 0
        for h in HOSTS:
            self.sim.add_host(h, memory_mib=4096)
            inv = {"host": h, "uri": self.sim.uri(h), "memory_total_mib": 4096, "cpus": 4, "cpu_model": "qemu64",
                   "networks": [], "storage_pools": [], "labels": {}, "vms": [], "ts": 0}
            self.store.put(self.keys.inventory(h), json.dumps(inv).encode())
        hv = self.sim.connect(self.sim.uri("h1"))
        for vm in VMS:
            xml = domain_xml(vm, GuestImage(Path("/k"), Path("/i")), 256, Path(f"/c/{vm}"))
            hv.define(xml)
            hv.start(vm)
            rec = {"vm": vm, "host": "h1", "memory_mib": 256, "vcpus": 1, "xml": xml}
            self.store.put(self.keys.vm_definition(vm), json.dumps(rec).encode())

    def report(self, grades: dict[str, Grade] | None = None) -> None:
        self.seq += 1
        now = self.clock.now()
        for h in HOSTS:
            if h in self.down:
                continue
            self.leases[h].refresh()
            grade = (grades or {}).get(h, Grade.HEALTHY)
            self.store.put(self.keys.health(h), HealthRecord(h, grade, grade.value, now, self.seq).to_json(),
                           lease=self.leases[h].id)
            for peer in HOSTS:
                if peer != h:
                    up = peer not in self.down
                    self.store.put(self.keys.witness(peer, h), WitnessReport(peer, h, up, up, now).to_json(),
                                   lease=self.leases[h].id)

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.clock.advance(1.0)
            self.report()

    def fence_off(self, host: str) -> FenceResult:
        self.sim.hosts[host].up = False
        self.sim.hosts[host].domains.clear()  # power off: its guests are gone
        return FenceResult(host, "sim", True, "off (sim)")


class SimFence:
    name = "sim"

    def __init__(self, world: World) -> None:
        self.world = world

    def off(self, host: str) -> FenceResult:
        return self.world.fence_off(host)

    def status(self, host: str):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _settle(loop: ControllerLoop) -> None:
    for _ in range(200):  # the fence runs in a thread
        if not loop.state.fencing:
            return
        time.sleep(0.01)


def test_source_dies_mid_evacuation_every_vm_runs_again_elsewhere_once() -> None:
    w = World()
    loop = ControllerLoop(w.store, w.keys, POLICY, "c1", clock=w.clock, fence_agents={"sim": SimFence(w)})
    loop.election.campaign()
    lead = loop.election.current()
    assert lead is not None
    runner = Runner(w.store, w.keys, {h: w.sim.uri(h) for h in HOSTS}, w.sim.connect, w.clock,
                    RunnerConfig("r1", watch=WatchConfig(poll_s=0.01)))
    w.report()
    loop.tick_once(lead)
    w.report({"h1": Grade.DEGRADED})
    assert "wrote 2 intent(s)" in loop.tick_once(lead)
    migrations = intents.list_intents(w.store, w.keys)
    # the runner has started both migrations when h1 loses power: nothing arrived anywhere
    for it in migrations:
        it = intents.transition(w.store, w.keys, it, IntentState.CHECKING, "sim", w.clock.now())
        intents.transition(w.store, w.keys, it, IntentState.MIGRATING, "sim", w.clock.now())
    w.down.add("h1")
    w.sim.hosts["h1"].up = False
    w.advance(4)
    loop.tick_once(lead)  # dead: the evacuation becomes a recovery and fences h1
    _settle(loop)
    incs = [incident_from_json(kv.value) for kv in w.store.get_prefix(w.keys.incidents_prefix())[0]]
    assert [i.kind for i in incs] == [IncidentKind.RECOVER] and incs[0].fenced
    assert w.sink and [e for e in w.sink.lines if e["event"] == "incident.kind_changed"]
    runner.drain(timeout_s=30)  # parked: source unknown, destination absent
    assert all(i.state is IntentState.MIGRATING for i in intents.list_intents(w.store, w.keys))
    for _ in range(80):  # time passes; the controller keeps ticking, the runner keeps looking
        w.advance(1)
        loop.tick_once(lead)
        runner.drain(timeout_s=30)
    every = intents.list_intents(w.store, w.keys, open_only=False)
    assert all(i.state.terminal for i in every), [(i.id, i.state.value, i.reason) for i in every]
    restarts = [i for i in every if i.kind is IntentKind.RESTART]
    assert sorted(i.vm for i in restarts if i.state is IntentState.DONE) == list(VMS)
    assert all(i.proof == f"{incs[0].id}@{lead.term}" and "-r" in i.id for i in restarts), [i.id for i in restarts]
    for vm in VMS:
        assert len(w.sim.where(vm)) == 1 and w.sim.where(vm)[0] != "h1", (vm, w.sim.where(vm))
    inc = incident_from_json(w.store.get(w.keys.incident(incs[0].id)).value)  # type: ignore[union-attr]
    assert inc.phase is IncidentPhase.CLOSED, inc
    assert w.store.get(w.keys.fence_proof("h1")) is None  # gone with its incident
