"""A leader change while a fence is under way (issue 12, case 10), on the in-memory store.

The leader asks a slow fence agent to power a dead host off and is deposed before the
agent answers; its result can no longer be written (the write is guarded by its term).
The new leader must find the incident in the fencing phase and finish the fence itself:
ask the agent's `status` first, `off` again only if the host is not off, then restart the
host's VMs once.
"""
from __future__ import annotations

import threading
import time

import pytest

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.control.election import Leadership
from drctl.control.intents import list_intents
from drctl.control.loop import ControllerLoop, incident_from_json
from drctl.control.tick import IncidentPhase
from drctl.fencing.agents import FenceResult, PowerState
from drctl.model.cluster import IntentKind
from drctl.policy import compile_policy
from tests.unit.test_controller_loop_sim import Cluster

POLICY = compile_policy(
    """
version: 1
name: sim-fence
rules:
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
evidence:
  require: [lease-expired, witnesses, fence]
  fence_agent: slow
limits:
  blast_radius: {max_hosts: 1}
""",
    "sim-fence.yaml",
)


class SlowAgent:
    """A fence agent whose `off` waits until the test lets it finish."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.power = PowerState.ON
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def off(self, host: str) -> FenceResult:
        with self._lock:
            self.calls.append(f"off {host}")
        assert self.release.wait(30), "the test never released the fence agent"
        self.power = PowerState.OFF
        return FenceResult(host, self.name, True, f"{host} powered off")

    def status(self, host: str) -> PowerState:
        with self._lock:
            self.calls.append(f"status {host}")
        return self.power


def lead(loop: ControllerLoop) -> Leadership:
    loop.election.campaign()
    got = loop.election.current()
    assert got is not None
    return got


def fences_done(timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(t.name.startswith("fence:") for t in threading.enumerate()):
        if time.monotonic() > deadline:
            pytest.fail("a fence thread is still running")
        time.sleep(0.01)


def the_incident(c: Cluster):  # type: ignore[no-untyped-def]
    kvs, _ = c.store.get_prefix(c.keys.incidents_prefix())
    assert len(kvs) == 1
    return incident_from_json(kvs[0].value)


@pytest.mark.parametrize("fenced_meanwhile", [False, True], ids=["host-still-on", "host-already-off"])
def test_new_leader_resumes_a_fence_its_predecessor_started(fenced_meanwhile: bool) -> None:
    c = Cluster()
    sink = audit.configure("test", clock=c.clock.now, keep_in_memory=True)
    agent = SlowAgent()
    old = ControllerLoop(c.store, c.keys, POLICY, "c1", fence_agents={"slow": agent}, clock=c.clock)
    old_lead = lead(old)
    new = ControllerLoop(c.store, c.keys, POLICY, "c2", fence_agents={"slow": agent}, clock=c.clock)
    new.election.campaign()
    old.tick_once(old_lead)
    for _ in range(3):  # h1 dies: its lease runs out, its witnesses confirm
        c.clock.advance(1.0)
        c.report(down=("h1",))
    sentence = old.tick_once(old_lead)
    assert "requested fencing of h1" in sentence
    assert the_incident(c).phase is IncidentPhase.FENCING

    # the old leader is SIGKILLed while the agent works: no keepalive, its key lapses
    old.election.lease.stop_keepalive()  # type: ignore[union-attr]
    for _ in range(3):
        c.clock.advance(1.0)
        new.election.lease.refresh()  # type: ignore[union-attr]
        c.report(down=("h1",))
    new_lead = new.election.current()
    assert new_lead is not None and old.election.current() is None
    if fenced_meanwhile:
        agent.power = PowerState.OFF  # the old leader's `off` got through before it died
    agent_calls_before = len(agent.calls)

    new.tick_once(new_lead)  # finds the incident in fencing
    agent.release.set()  # both leaders' `off` (if any) return now
    fences_done()
    for _ in range(3):
        new.tick_once(new_lead)
    calls = agent.calls[agent_calls_before:]
    assert calls[:1] == ["status h1"], "the new leader asks the agent's status first"
    assert calls[1:] == ([] if fenced_meanwhile else ["off h1"])
    inc = the_incident(c)
    assert inc.fenced and inc.phase is IncidentPhase.ACTING
    restarts = list_intents(c.store, c.keys)
    assert sorted(i.vm for i in restarts) == ["web-1", "web-2"]
    assert all(i.kind is IntentKind.RESTART and i.term == new_lead.term for i in restarts)
    resumed = [e for e in sink.lines if e["event"] == events.FENCE_REQUESTED and e.get("resumed")]
    assert [e["term"] for e in resumed] == [new_lead.term]
    # the fence is recorded once, by the new leader (the old one's result, if its agent
    # still answered, finds its term gone)
    assert new_lead.term in {e["term"] for e in sink.lines if e["event"] == events.FENCE_SUCCEEDED}
    recorded = [e for e in sink.lines if e["event"] == events.EVIDENCE_RECORDED and e["kind"] == events.EvidenceSource.FENCE]
    assert len(recorded) == 1


def test_a_fence_result_etcd_could_not_take_is_resumed_not_handed_to_a_human() -> None:
    c = Cluster()
    sink = audit.configure("test", clock=c.clock.now, keep_in_memory=True)
    agent = SlowAgent()
    loop = ControllerLoop(c.store, c.keys, POLICY, "c1", fence_agents={"slow": agent}, clock=c.clock)
    leadership = lead(loop)
    loop.tick_once(leadership)
    for _ in range(3):
        c.clock.advance(1.0)
        c.report(down=("h1",))
    assert "requested fencing of h1" in loop.tick_once(leadership)
    c.store.fail(True)  # etcd goes away while the agent works
    agent.release.set()
    fences_done()
    c.store.fail(False)
    assert the_incident(c).phase is IncidentPhase.FENCING  # not needs-human: the fence did not fail
    calls_before = len(agent.calls)
    loop.tick_once(leadership)  # resumes: the host is off already
    fences_done()
    loop.tick_once(leadership)
    assert agent.calls[calls_before:] == ["status h1"]
    inc = the_incident(c)
    assert inc.fenced and inc.phase is IncidentPhase.ACTING
    assert sorted(i.vm for i in list_intents(c.store, c.keys)) == ["web-1", "web-2"]
    assert not [e for e in sink.lines if e["event"] == events.FENCE_FAILED]
