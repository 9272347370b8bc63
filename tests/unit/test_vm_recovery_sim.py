"""VM-level recovery end to end, simulated (issue 12, case 7): agents publish each domain's
state and libvirt's reason for it, the leader's loop decides (drctl.control.vm_recovery),
a runner starts the VM once. Crashes are started again within a bound; stops somebody
asked for (`virsh destroy`, a guest shutdown) are left alone."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from drctl.audit import writer as audit
from drctl.clock import SimClock
from drctl.config.settings import AgentConfig
from drctl.control import vm_recovery
from drctl.control.intents import list_intents
from drctl.control.loop import ControllerLoop
from drctl.control.view import read_records
from drctl.health.agent import Agent
from drctl.health.probes import ProbeSpec
from drctl.hypervisor import UNREQUESTED, DomainState, StateReason
from drctl.hypervisor.sim import SimCluster
from drctl.lab.guest import GuestImage, domain_xml
from drctl.model.cluster import IntentKind, IntentState
from drctl.policy import compile_policy
from drctl.runner.executor import Runner, RunnerConfig
from drctl.runner.migration import WatchConfig
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

HOSTS = ("hv1", "hv2", "hv3")
KEYS = Keys()
POLICY = compile_policy(
    """
version: 1
name: sim
rules:
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
evidence:
  require: [lease-expired, witnesses]
  fence: waived  # no fence agent in this test; dropping the fence must be said (issue 12, case 2)
""",
    "sim.yaml",
)


class World:
    def __init__(self, settings: vm_recovery.RecoverySettings) -> None:
        self.clock = SimClock()
        self.sink = audit.configure("test", clock=self.clock.now, keep_in_memory=True)
        self.store = MemoryStore(self.clock)
        self.sim = SimCluster(self.clock)
        self.agents: dict[str, Agent] = {}
        for h in HOSTS:
            self.sim.add_host(h, memory_mib=4096)
            probes = (ProbeSpec("libvirt", "libvirt", 1.0, 1.0, None, None, {"uri": ""}),)
            cfg = AgentConfig(host=h, libvirt_uri=SimCluster.uri(h), probes=probes, inventory_interval_s=1.0)
            self.agents[h] = Agent(cfg, self.store, KEYS, lambda uri, _t: self.sim.connect(uri), self.clock,
                                   background=False)
        hv = self.sim.connect("sim://hv1")
        hv.define(domain_xml("web-1", GuestImage(Path("/k"), Path("/i")), 256, Path("/c/web-1")))
        hv.start("web-1")
        self.loop = ControllerLoop(self.store, KEYS, POLICY, "c1", clock=self.clock, vm_recovery_settings=settings)
        self.loop.election.campaign()
        self.lead = self.loop.election.current()
        assert self.lead is not None
        self.runner = Runner(self.store, KEYS, {h: SimCluster.uri(h) for h in HOSTS}, self.sim.connect, self.clock,
                             RunnerConfig("r1", watch=WatchConfig(poll_s=0.01)))

    def drive(self, seconds: float, dt: float = 0.05) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            for h in HOSTS:
                if self.clock.monotonic() >= self.agents[h].next_due():
                    self.agents[h].tick()
            self.clock.advance(dt)

    def round(self) -> None:
        """A few seconds of the cluster: agents publish, the leader ticks, a runner works."""
        for _ in range(4):
            self.drive(0.6)
            self.loop.tick_once(self.lead)  # type: ignore[arg-type]
            for it in list_intents(self.store, KEYS):
                if not it.state.terminal:
                    self.runner.execute(it.id)

    def state(self, host: str = "hv1") -> DomainState:
        return self.sim.hosts[host].domains["web-1"].state

    def events(self, name: str) -> list[dict]:
        return [e for e in self.sink.lines if e["event"] == name]

    def starts(self) -> list:
        return [i for i in list_intents(self.store, KEYS, open_only=False) if i.kind is IntentKind.START]


@pytest.fixture
def world() -> Iterator[World]:
    w = World(vm_recovery.RecoverySettings(max_attempts=2, window_s=600.0))
    w.round()
    assert w.sim.where("web-1") == ["hv1"] and not w.starts()
    yield w
    w.store.close()


def test_crashed_vm_on_a_live_host_is_started_again_once(world: World) -> None:
    """The lab saw a guest left stopped on a healthy host, with nothing starting it again."""
    world.sim.crash("hv1", "web-1")
    world.round()
    assert world.sim.where("web-1") == ["hv1"], "nothing started the crashed VM again"
    starts = world.starts()
    assert [(i.src, i.dst, i.state) for i in starts] == [("hv1", "hv1", IntentState.DONE)]
    assert world.events("vm.stopped_unrequested")[0]["vm"] == "web-1"
    assert world.events("vm.started_again")[0]["host"] == "hv1"
    world.round()
    assert len(world.starts()) == 1  # the inventory from before the start is not read as a new crash
    records = read_records(world.store, KEYS)
    assert all(inc.phase.value == "closed" for inc in records.incidents)
    assert records.placements["web-1"].host == "hv1"


def test_starts_are_bounded_within_the_window_and_reported(world: World) -> None:
    for _ in range(2):
        world.sim.crash("hv1", "web-1")
        world.round()
        assert world.state() is DomainState.RUNNING
    world.sim.crash("hv1", "web-1")
    world.round()
    world.round()
    assert world.state() is DomainState.SHUTOFF and len(world.starts()) == 2
    exhausted = world.events("vm.recovery_exhausted")
    assert len(exhausted) == 1 and exhausted[0]["vm"] == "web-1"  # once, not every tick


@pytest.mark.parametrize("reason", [StateReason.DESTROYED, StateReason.SHUTDOWN])
def test_a_stop_somebody_asked_for_is_left_alone(world: World, reason: StateReason) -> None:
    """`virsh destroy` (an operator's hard stop) and a guest shutdown are requests."""
    world.sim.connect("sim://hv1").destroy("web-1")
    world.sim.hosts["hv1"].domains["web-1"].reason = reason
    world.round()
    world.round()
    assert world.state() is DomainState.SHUTOFF and not world.starts()


def test_the_runner_asks_libvirt_again_before_starting(world: World) -> None:
    """Decided on a crash, but an operator destroyed it meanwhile: not started."""
    world.sim.crash("hv1", "web-1")
    world.drive(1.5)
    runner, world.runner = world.runner, None  # type: ignore[assignment]
    try:
        world.loop.tick_once(world.lead)  # type: ignore[arg-type]
    finally:
        world.runner = runner
    (it,) = [i for i in world.starts() if not i.state.terminal]
    world.sim.hosts["hv1"].domains["web-1"].reason = StateReason.DESTROYED
    done = world.runner.execute(it.id)
    assert done is not None and done.state is IntentState.FAILED and "stopped on request" in done.reason
    assert world.state() is DomainState.SHUTOFF


def test_the_decision_and_the_seam_agree_on_what_nobody_asked_for() -> None:
    assert {r.value for r in UNREQUESTED} == vm_recovery.UNREQUESTED_REASONS
