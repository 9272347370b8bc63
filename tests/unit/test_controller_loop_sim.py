"""The controller's shell on the in-memory store and a simulated clock: records written as
the agents write them, one tick at a time, and what lands in the store."""
from __future__ import annotations

import json

import pytest

from drctl.clock import Clock, SimClock
from drctl.control.loop import ControllerLoop, incident_from_json
from drctl.control.election import Election
from drctl.health.grading import Grade, HealthRecord, WitnessReport
from drctl.control.intents import list_intents
from drctl.model.cluster import IntentKind
from drctl.model.proof import FenceBasis, parse_proof
from drctl.policy import compile_policy
from drctl.store.memory import MemoryStore
from drctl.store.keys import Keys

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
  require: [lease-expired, witnesses]
  fence: waived
limits:
  blast_radius: {max_hosts: 1}
""",
    "sim.yaml",
)
HOSTS = ("h1", "h2", "h3")


class Cluster:
    """Writes the records three agents would write."""

    def __init__(self, clock: Clock | None = None, host_lease_ttl: int = 2) -> None:
        self.clock = clock or SimClock()
        self.store = MemoryStore(self.clock)
        self.keys = Keys("/drctl/")
        self.leases = {h: self.store.grant_lease(host_lease_ttl, keepalive=False) for h in HOSTS}
        self.seq = 0
        for h in HOSTS:
            inv = {"host": h, "uri": f"sim://{h}", "memory_total_mib": 8192, "cpus": 4, "cpu_model": "qemu64",
                   "networks": [], "storage_pools": [], "labels": {"rack": f"r{h[-1]}"}, "vms": [], "ts": 0}
            self.store.put(self.keys.inventory(h), json.dumps(inv).encode())
        for vm, host in (("web-1", "h1"), ("web-2", "h1"), ("db-1", "h2")):
            rec = {"vm": vm, "host": host, "memory_mib": 512, "vcpus": 1, "xml": f"<domain><name>{vm}</name></domain>"}
            self.store.put(self.keys.vm_definition(vm), json.dumps(rec).encode())
        self.report()

    def report(self, grades: dict[str, Grade] | None = None, down: tuple[str, ...] = ()) -> None:
        """One round of health + witness records from every live agent."""
        self.seq += 1
        now = self.clock.now()
        for h in HOSTS:
            if h in down:
                continue
            lease = self.leases[h]
            lease.refresh()
            grade = (grades or {}).get(h, Grade.HEALTHY)
            self.store.put(self.keys.health(h), HealthRecord(h, grade, f"{grade.value} (sim)", now, self.seq).to_json(),
                           lease=lease.id)
            for peer in HOSTS:
                if peer != h:
                    rep = WitnessReport(peer, h, libvirt_reachable=peer not in down, lease_seen=peer not in down, ts=now)
                    self.store.put(self.keys.witness(peer, h), rep.to_json(), lease=lease.id)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def leader(c: Cluster) -> tuple[ControllerLoop, object]:
    loop = ControllerLoop(c.store, c.keys, POLICY, "c1", clock=c.clock)
    loop.election.campaign()
    lead = loop.election.current()
    assert lead is not None
    return loop, lead


def test_degraded_host_becomes_an_incident_with_write_ahead_intents(cluster: Cluster) -> None:
    loop, lead = leader(cluster)
    assert loop.tick_once(lead) == "all 3 hosts steady; nothing to do"  # type: ignore[arg-type]
    cluster.report({"h1": Grade.DEGRADED})
    sentence = loop.tick_once(lead)  # type: ignore[arg-type]
    assert sentence.startswith("opened inc-h1-") and "wrote 2 intent(s)" in sentence
    intents = list_intents(cluster.store, cluster.keys)
    assert sorted(i.vm for i in intents) == ["web-1", "web-2"]
    assert all(i.kind is IntentKind.MIGRATE and i.src == "h1" and i.dst in ("h2", "h3") for i in intents)
    assert all(i.term == lead.term for i in intents)  # type: ignore[attr-defined]
    # the next tick neither reopens nor rewrites: it waits on the runner
    assert loop.tick_once(lead) == "waiting on 2 intent(s) in 1 incident(s)"  # type: ignore[arg-type]
    assert len(list_intents(cluster.store, cluster.keys)) == 2


def test_dead_host_restarts_only_after_lease_and_witness_evidence(cluster: Cluster) -> None:
    loop, lead = leader(cluster)
    loop.tick_once(lead)  # type: ignore[arg-type]
    # h1 stops heartbeating: its lease runs out; peers say its libvirtd does not answer
    for _ in range(3):
        cluster.clock.advance(1.0)
        cluster.report(down=("h1",))
    sentence = loop.tick_once(lead)  # type: ignore[arg-type]
    assert "opened inc-h1-" in sentence and "recover" in sentence
    # this policy waives fencing: the waiver is recorded as the proof first, then restarts
    assert "fence proof" in sentence and "waived" in sentence and not list_intents(cluster.store, cluster.keys)
    loop.tick_once(lead)  # type: ignore[arg-type]
    intents = list_intents(cluster.store, cluster.keys)
    assert sorted(i.vm for i in intents) == ["web-1", "web-2"]
    assert all(i.kind is IntentKind.RESTART for i in intents)
    kvs, _ = cluster.store.get_prefix(cluster.keys.incidents_prefix())
    inc = incident_from_json(kvs[0].value)
    assert set(inc.evidence) == {"lease-expired", "witnesses"}
    proof = parse_proof("p", cluster.store.get(cluster.keys.fence_proof("h1")).value)  # type: ignore[union-attr]
    assert proof.fence is FenceBasis.WAIVED and proof.incident == inc.id and proof.term == lead.term  # type: ignore[attr-defined]
    assert all(i.proof == proof.id for i in intents)


def test_deposed_leader_gets_no_write_accepted(cluster: Cluster) -> None:
    loop, lead = leader(cluster)
    rival = Election(cluster.store, cluster.keys, "c2", clock=cluster.clock)
    rival.campaign()
    # c1 stalls (SIGSTOP) past its lease: no more keepalives, its election key goes, c2 leads
    loop.election.lease.stop_keepalive()  # type: ignore[union-attr]
    for _ in range(3):
        cluster.clock.advance(1.0)
        rival.lease.refresh()  # type: ignore[union-attr]
        cluster.report({"h1": Grade.DEGRADED})
    assert loop.election.current() is None
    assert rival.current() is not None
    loop.tick_once(lead)  # type: ignore[arg-type]  # the stale leader acts on its old term
    assert list_intents(cluster.store, cluster.keys) == []
    kvs, _ = cluster.store.get_prefix(cluster.keys.incidents_prefix())
    assert kvs == []


# ------------------------------------------------------------------ issue 12, case 1: the restart gate

FENCED = compile_policy(
    """
version: 1
name: fenced
rules:
  - name: drain
    when: {maintenance: requested}
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
    "fenced.yaml",
)


class OffAgent:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def off(self, host: str):  # type: ignore[no-untyped-def]
        from drctl.fencing.agents import FenceResult

        self.calls.append(host)
        return FenceResult(host, "sim", True, "power off confirmed (sim)")

    def status(self, host: str):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _kill_h1(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.clock.advance(1.0)
        cluster.report(down=("h1",))


def test_restart_intents_exist_only_with_the_fence_proof_they_name(cluster: Cluster) -> None:
    import time

    agent = OffAgent()
    loop = ControllerLoop(cluster.store, cluster.keys, FENCED, "c1", clock=cluster.clock, fence_agents={"sim": agent})
    loop.election.campaign()
    lead = loop.election.current()
    assert lead is not None
    loop.tick_once(lead)
    _kill_h1(cluster)
    assert "requested fencing of h1" in loop.tick_once(lead)
    assert list_intents(cluster.store, cluster.keys) == []  # nothing before the fence answered
    for _ in range(100):  # the fence runs in the background
        if not loop.state.fencing:
            break
        time.sleep(0.01)
    proof = parse_proof("p", cluster.store.get(cluster.keys.fence_proof("h1")).value)  # type: ignore[union-attr]
    assert proof.fence is FenceBasis.OFF and proof.term == lead.term and proof.agent == "sim"
    loop.tick_once(lead)
    intents = list_intents(cluster.store, cluster.keys)
    assert sorted(i.vm for i in intents) == ["web-1", "web-2"]
    assert all(i.kind is IntentKind.RESTART and i.proof == proof.id for i in intents)


def test_drain_of_a_host_that_died_writes_no_restart(cluster: Cluster) -> None:
    """The lab policy lists `drain` before `restart-dead`: a drain requested for a dead host
    opened a drain incident that restarted its VMs with nobody fencing it."""
    loop = ControllerLoop(cluster.store, cluster.keys, FENCED, "c1", clock=cluster.clock, fence_agents={})
    loop.election.campaign()
    lead = loop.election.current()
    assert lead is not None
    loop.tick_once(lead)
    cluster.store.put(cluster.keys.maintenance("h1"), b'{"host": "h1", "reason": "test"}')
    _kill_h1(cluster)
    loop.tick_once(lead)
    assert not [i for i in list_intents(cluster.store, cluster.keys) if i.kind is IntentKind.RESTART]


def test_incident_rounds_survive_the_record() -> None:
    """Re-planning counts rounds in the incident record: they must read back (case 9)."""
    from drctl.control.loop import incident_to_json
    from drctl.control.tick import Incident, IncidentKind, IncidentPhase

    inc = Incident("inc-h1-1", IncidentKind.DRAIN, "h1", "drain", "p", 1.0, IncidentPhase.ACTING,
                   rounds=3, planned_at=42.5)
    assert incident_from_json(incident_to_json(inc)) == inc
