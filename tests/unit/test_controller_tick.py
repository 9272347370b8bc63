"""The controller's pure tick: plain snapshots in, decisions and a sentence out."""
from __future__ import annotations

from dataclasses import replace

from drctl.control.tick import (
    CloseIncident,
    Freeze,
    Incident,
    IncidentKind,
    IncidentPhase,
    IntentView,
    OpenIncident,
    RequestFence,
    Resume,
    UpdateIncident,
    View,
    WriteIntents,
    tick,
)
from drctl.health.grading import HostVerdict
from drctl.model.cluster import VM, Host, HostState, IntentKind, IntentState, Snapshot
from drctl.model.proof import FenceProof, FenceBasis
from drctl.policy import compile_policy

POLICY = compile_policy(
    """
version: 1
name: test
rules:
  - name: evacuate-degraded
    when: {state: [degraded, failing], for: 10s}
    action: live-migrate
  - name: drain
    when: {maintenance: requested}
    action: live-migrate
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
    overrides:
      - vms: {tags: [pinned]}
        action: leave-alone
evidence:
  require: [lease-expired, witnesses, fence]
  fence_agent: lab
limits:
  blast_radius: {max_hosts: 1}
""",
    "test.yaml",
)
NOW = 1_800_000_000.0


def cluster(states: dict[str, HostState] | None = None, maintenance: str = "") -> Snapshot:
    states = states or {}
    hosts = {f"h{i}": Host(f"h{i}", memory_mib=8192, cpus=8, state=states.get(f"h{i}", HostState.HEALTHY),
                           maintenance=f"h{i}" == maintenance) for i in range(1, 5)}
    vms = {
        "web-1": VM("web-1", "h1", 1024, priority=5),
        "web-2": VM("web-2", "h1", 1024),
        "pin-1": VM("pin-1", "h1", 512, tags=frozenset({"pinned"})),
        "db-1": VM("db-1", "h2", 2048),
    }
    used = {h: sum(v.memory_mib for v in vms.values() if v.host == h) for h in hosts}
    return Snapshot({n: replace(h, memory_used_mib=used[n]) for n, h in hosts.items()}, vms)


def view(snap: Snapshot, held: float = 60.0, **kw) -> View:  # type: ignore[no-untyped-def]
    verdicts = kw.pop("verdicts", {n: HostVerdict(n, h.state, "") for n, h in snap.hosts.items()})
    return View(snapshot=snap, verdicts=verdicts, held_s={n: held for n in snap.hosts},
                incidents=kw.pop("incidents", {}), intents=kw.pop("intents", ()), **kw)


def test_steady_cluster_decides_nothing_and_says_so() -> None:
    r = tick(view(cluster()), POLICY, NOW)
    assert r.decisions == ()
    assert r.sentence == "all 4 hosts steady; nothing to do"


def test_degraded_host_past_hold_opens_one_incident_and_writes_intents() -> None:
    r = tick(view(cluster({"h1": HostState.DEGRADED})), POLICY, NOW)
    opened = [d for d in r.decisions if isinstance(d, OpenIncident)]
    writes = [d for d in r.decisions if isinstance(d, WriteIntents)]
    assert len(opened) == 1 and opened[0].incident.kind is IncidentKind.EVACUATE
    assert opened[0].incident.host == "h1"
    assert {m.vm for m in writes[0].moves} == {"web-1", "web-2", "pin-1"}
    assert all(m.kind is IntentKind.MIGRATE and m.dst not in ("h1",) for m in writes[0].moves)
    assert writes[0].moves[0].vm == "web-1"  # priority first
    assert r.sentence.startswith(f"opened {opened[0].incident.id} (evacuate: h1 degraded")


def test_degraded_host_within_hold_time_is_left_alone() -> None:
    r = tick(view(cluster({"h1": HostState.DEGRADED}), held=5.0), POLICY, NOW)
    assert r.decisions == ()


def test_open_incident_is_not_reopened_while_host_flaps() -> None:
    inc = Incident("inc-h1-1", IncidentKind.EVACUATE, "h1", "evacuate-degraded", "test", NOW - 30,
                   IncidentPhase.ACTING, intents=("i1",))
    running = (IntentView("i1", "inc-h1-1", "web-1", "h1", "h2", IntentState.MIGRATING),)
    for state in (HostState.DEGRADED, HostState.HEALTHY, HostState.DEGRADED):
        r = tick(view(cluster({"h1": state}), incidents={inc.id: inc}, intents=running), POLICY, NOW)
        assert not [d for d in r.decisions if isinstance(d, OpenIncident)]
        assert r.sentence == "waiting on 1 intent(s) in 1 incident(s)"


def test_incident_closes_when_its_intents_are_finished() -> None:
    inc = Incident("inc-h1-1", IncidentKind.EVACUATE, "h1", "evacuate-degraded", "test", NOW - 30,
                   IncidentPhase.ACTING)
    done = (IntentView("i1", inc.id, "web-1", "h1", "h2", IntentState.DONE),
            IntentView("i2", inc.id, "web-2", "h1", "h3", IntentState.FAILED))
    r = tick(view(cluster({"h1": HostState.DEGRADED}), incidents={inc.id: inc}, intents=done), POLICY, NOW)
    assert r.decisions == (CloseIncident(inc.id, "1 of 2 VM(s) moved; not moved: web-2"),)


def test_dead_host_is_fenced_before_anything_restarts() -> None:
    snap = cluster({"h1": HostState.DEAD})
    verdicts = {n: HostVerdict(n, h.state, "", lease_present=h.state is not HostState.DEAD,
                           witnesses_confirm_down=h.state is HostState.DEAD) for n, h in snap.hosts.items()}
    r = tick(view(snap, verdicts=verdicts), POLICY, NOW)
    kinds = [type(d) for d in r.decisions]
    assert kinds == [OpenIncident, UpdateIncident, RequestFence]
    assert not [d for d in r.decisions if isinstance(d, WriteIntents)]
    fencing = r.decisions[1].incident  # type: ignore[union-attr]
    assert fencing.phase is IncidentPhase.FENCING and fencing.evidence == ("lease-expired", "witnesses")

    # the loop fenced it: the next tick restarts its VMs, except the pinned one
    fenced = replace(fencing, fenced=True, phase=IncidentPhase.AWAITING_EVIDENCE,
                     evidence=(*fencing.evidence, "fence"))
    proof = FenceProof(f"{fenced.id}@4", "h1", fenced.id, 4, fenced.evidence, FenceBasis.OFF, "lab")
    r2 = tick(view(snap, verdicts=verdicts, incidents={fenced.id: fenced}, proofs={"h1": proof}), POLICY, NOW + 1)
    writes = [d for d in r2.decisions if isinstance(d, WriteIntents)]
    assert len(writes) == 1
    assert {m.vm for m in writes[0].moves} == {"web-1", "web-2"}
    assert all(m.kind is IntentKind.RESTART for m in writes[0].moves)
    assert ("pin-1", "rule restart-dead leaves it alone") in writes[0].unplaced


def test_dead_host_without_witness_evidence_restarts_nothing() -> None:
    snap = cluster({"h1": HostState.DEAD})
    verdicts = {"h1": HostVerdict("h1", HostState.DEAD, "", lease_present=False, witnesses_confirm_down=False)}
    r = tick(view(snap, verdicts=verdicts), POLICY, NOW)
    assert [type(d) for d in r.decisions] == [OpenIncident]


def test_unreachable_host_is_never_restarted() -> None:
    r = tick(view(cluster({"h1": HostState.UNREACHABLE})), POLICY, NOW)
    assert not [d for d in r.decisions if isinstance(d, (WriteIntents, RequestFence))]


def test_more_hosts_failing_than_blast_radius_freezes_then_resumes() -> None:
    snap = cluster({"h1": HostState.DEAD, "h2": HostState.DEAD, "h3": HostState.DEAD})
    r = tick(view(snap), POLICY, NOW)
    assert len(r.decisions) == 1 and isinstance(r.decisions[0], Freeze)
    assert "3 hosts in trouble at once" in r.decisions[0].reason and "blast radius of 1" in r.decisions[0].reason
    assert r.sentence.startswith("frozen:")
    # still frozen next tick: no repeated Freeze decision, still nothing done
    again = tick(view(snap, frozen=r.frozen), POLICY, NOW + 1)
    assert again.decisions == () and again.frozen == r.frozen
    healed = tick(view(cluster(), frozen=r.frozen), POLICY, NOW + 2)
    assert isinstance(healed.decisions[0], Resume)


def test_unhealthy_etcd_or_stale_view_freezes() -> None:
    assert tick(view(cluster(), etcd_healthy=False), POLICY, NOW).frozen == "etcd is unhealthy"
    assert "stale" in tick(view(cluster(), age_s=60), POLICY, NOW).frozen


def test_maintenance_request_drains_the_host() -> None:
    r = tick(view(cluster(maintenance="h2")), POLICY, NOW)
    opened = [d for d in r.decisions if isinstance(d, OpenIncident)]
    assert opened[0].incident.kind is IncidentKind.DRAIN
    writes = [d for d in r.decisions if isinstance(d, WriteIntents)]
    assert [m.vm for m in writes[0].moves] == ["db-1"]


def test_dry_run_policy_marks_intents_as_not_to_be_acted_on() -> None:
    dry = replace(POLICY, dry_run=True)
    r = tick(view(cluster({"h1": HostState.DEGRADED})), dry, NOW)
    assert all(d.dry_run for d in r.decisions if isinstance(d, WriteIntents))
    assert "would write" in r.sentence


# ------------------------------------------------------------------ issue 12, case 16: blast radius window


def test_host_dead_for_long_plus_one_new_failure_does_not_freeze() -> None:
    """Only hosts that BECAME troubled within the blast-radius window count: a host dead for
    an hour plus one fresh failure is one failure at once, not two."""
    snap = cluster({"h1": HostState.DEAD, "h2": HostState.DEAD})
    window = POLICY.blast_radius.window_s
    v = replace(view(snap), troubled_for_s={"h1": window + 3600.0, "h2": 5.0})
    r = tick(v, POLICY, NOW)
    assert not r.frozen, r.frozen
    # two fresh failures within the window are still two at once: freeze
    both = replace(view(snap), troubled_for_s={"h1": 30.0, "h2": 5.0})
    assert "2 hosts in trouble" in tick(both, POLICY, NOW).frozen


# ------------------------------------------------------------------ issue 12, case 1: the restart gate

DR_POLICY = compile_policy(
    """
version: 1
name: dr
rules:
  - name: drain  # before the dead rule, as in deploy/lab/lab-policy.yaml
    when: {maintenance: requested}
    action: live-migrate
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
  - name: drain-unreachable
    when: {state: unreachable, for: 0s}
    action: live-migrate
evidence:
  require: [lease-expired, witnesses, fence]
  fence_agent: lab
""",
    "dr.yaml",
)


def _restarts(r) -> list:  # type: ignore[no-untyped-def]
    return [m for d in r.decisions if isinstance(d, WriteIntents) for m in d.moves if m.kind is IntentKind.RESTART]


def test_live_migrate_rule_on_an_unreachable_host_never_restarts() -> None:
    """disaster-recovery.yaml's drain-unreachable rule says live-migrate: its VMs may still run."""
    r = tick(view(cluster({"h1": HostState.UNREACHABLE})), DR_POLICY, NOW)
    assert [d for d in r.decisions if isinstance(d, OpenIncident)], r.sentence
    assert _restarts(r) == []


def test_drain_of_a_dead_host_restarts_nothing_without_a_fence() -> None:
    """A drain requested for a host whose agent died: its VMs wait for the recovery path."""
    snap = cluster({"h2": HostState.DEAD}, maintenance="h2")
    r = tick(view(snap), DR_POLICY, NOW)
    assert _restarts(r) == []
    assert not [d for d in r.decisions if isinstance(d, WriteIntents) and d.moves]


def test_recover_restarts_only_with_this_incidents_fence_proof() -> None:
    snap = cluster({"h1": HostState.DEAD})
    verdicts = {n: HostVerdict(n, h.state, "", lease_present=h.state is not HostState.DEAD,
                               witnesses_confirm_down=h.state is HostState.DEAD) for n, h in snap.hosts.items()}
    inc = Incident("inc-h1-1", IncidentKind.RECOVER, "h1", "restart-dead", "dr", NOW - 5,
                   IncidentPhase.AWAITING_EVIDENCE, evidence=("fence", "lease-expired", "witnesses"), fenced=True)
    # the incident says "fenced", but no proof record backs it: fence again, restart nothing
    r = tick(view(snap, verdicts=verdicts, incidents={inc.id: inc}), DR_POLICY, NOW)
    assert _restarts(r) == [] and [d for d in r.decisions if isinstance(d, RequestFence)]
    # a proof from an older incident of the same host backs nothing either
    old = FenceProof("inc-h1-0@3", "h1", "inc-h1-0", 3, ("lease-expired",), FenceBasis.OFF, "lab")
    r = tick(view(snap, verdicts=verdicts, incidents={inc.id: inc}, proofs={"h1": old}), DR_POLICY, NOW)
    assert _restarts(r) == []
    proof = FenceProof("inc-h1-1@4", "h1", inc.id, 4, ("lease-expired", "witnesses"), FenceBasis.OFF, "lab")
    r = tick(view(snap, verdicts=verdicts, incidents={inc.id: inc}, proofs={"h1": proof}), DR_POLICY, NOW)
    moves = _restarts(r)
    assert {m.vm for m in moves} == {"web-1", "web-2", "pin-1"}
    assert all(m.proof == proof.id for m in moves)


# ------------------------------------------------------------------ issue 12, cases 8 and 9: incidents never stuck


def _dead_verdicts(snap):  # type: ignore[no-untyped-def]
    return {n: HostVerdict(n, h.state, "", lease_present=h.state is not HostState.DEAD,
                           witnesses_confirm_down=h.state is HostState.DEAD) for n, h in snap.hosts.items()}


def test_evacuation_whose_host_dies_turns_into_recovery() -> None:
    """Case 8: the source died mid-evacuation; its migrations are parked (source unknown,
    destination absent). The incident must become a recovery: evidence, fence, restart."""
    snap = cluster({"h1": HostState.DEAD})
    inc = Incident("inc-h1-1", IncidentKind.EVACUATE, "h1", "evacuate-degraded", "test", NOW - 30,
                   IncidentPhase.ACTING, intents=("i1", "i2"), rounds=1, planned_at=NOW - 30)
    parked = (IntentView("i1", inc.id, "web-1", "h1", "h2", IntentState.MIGRATING),
              IntentView("i2", inc.id, "web-2", "h1", "h3", IntentState.MIGRATING))
    r = tick(view(snap, verdicts=_dead_verdicts(snap), incidents={inc.id: inc}, intents=parked), POLICY, NOW)
    updates = [d for d in r.decisions if isinstance(d, UpdateIncident)]
    assert updates and updates[0].incident.kind is IncidentKind.RECOVER, r.sentence
    assert updates[0].incident.rule == "restart-dead"
    assert [d for d in r.decisions if isinstance(d, RequestFence)]


def test_recovery_restarts_the_vms_whose_migrations_were_given_up_on() -> None:
    """Case 8: once the parked migrations escalate (failed), the fenced recovery restarts
    every VM still on the host, on its next round."""
    snap = cluster({"h1": HostState.DEAD})
    inc = Incident("inc-h1-1", IncidentKind.RECOVER, "h1", "restart-dead", "test", NOW - 100,
                   IncidentPhase.ACTING, evidence=("fence", "lease-expired", "witnesses"), fenced=True,
                   intents=("i1",), rounds=1, planned_at=NOW - 100)
    proof = FenceProof(f"{inc.id}@4", "h1", inc.id, 4, ("lease-expired", "witnesses"), FenceBasis.OFF, "lab")
    failed = (IntentView("i1", inc.id, "web-1", "h1", "h2", IntentState.FAILED),)
    r = tick(view(snap, verdicts=_dead_verdicts(snap), incidents={inc.id: inc}, intents=failed,
                  proofs={"h1": proof}), POLICY, NOW)
    moves = _restarts(r)
    assert {m.vm for m in moves} == {"web-1", "web-2"} and all(m.proof == proof.id for m in moves)
    assert not [d for d in r.decisions if isinstance(d, CloseIncident)]


def test_drain_is_replanned_with_back_off_while_the_host_holds_vms() -> None:
    """Case 9: a drain whose migration failed (or whose VM was unplaced) tries again."""
    snap = cluster(maintenance="h2")
    inc = Incident("inc-h2-1", IncidentKind.DRAIN, "h2", "drain", "test", NOW - 20, IncidentPhase.ACTING,
                   intents=("i1",), rounds=1, planned_at=NOW - 1)
    failed = (IntentView("i1", inc.id, "db-1", "h2", "h3", IntentState.FAILED),)
    soon = tick(view(snap, incidents={inc.id: inc}, intents=failed), POLICY, NOW)
    assert soon.decisions == ()  # backing off
    later = tick(view(snap, incidents={inc.id: inc}, intents=failed), POLICY, NOW + 60)
    writes = [d for d in later.decisions if isinstance(d, WriteIntents)]
    assert writes and [m.vm for m in writes[0].moves] == ["db-1"] and writes[0].round == 2
    bumped = [d.incident for d in later.decisions if isinstance(d, UpdateIncident)]
    assert bumped and bumped[0].rounds == 2 and bumped[0].planned_at == NOW + 60


def test_drain_gives_up_after_its_rounds_and_says_what_is_left() -> None:
    snap = cluster(maintenance="h2")
    inc = Incident("inc-h2-1", IncidentKind.DRAIN, "h2", "drain", "test", NOW - 900, IncidentPhase.ACTING,
                   intents=("i1",), rounds=99, planned_at=NOW - 600)
    failed = (IntentView("i1", inc.id, "db-1", "h2", "h3", IntentState.FAILED),)
    r = tick(view(snap, incidents={inc.id: inc}, intents=failed), POLICY, NOW)
    closes = [d for d in r.decisions if isinstance(d, CloseIncident)]
    assert closes and "db-1" in closes[0].outcome


def test_undrain_closes_the_drain_incident() -> None:
    snap = cluster()  # the maintenance request is gone
    inc = Incident("inc-h2-1", IncidentKind.DRAIN, "h2", "drain", "test", NOW - 20, IncidentPhase.ACTING,
                   intents=("i1",), rounds=1, planned_at=NOW - 20)
    failed = (IntentView("i1", inc.id, "db-1", "h2", "h3", IntentState.FAILED),)
    r = tick(view(snap, incidents={inc.id: inc}, intents=failed), POLICY, NOW)
    closes = [d for d in r.decisions if isinstance(d, CloseIncident)]
    assert closes and "undrain" in closes[0].outcome


def test_drain_does_not_close_while_a_vm_is_still_arriving_on_its_host() -> None:
    """Two drains at once: the first drain's migration to the second drained host is still
    verifying; the host looks empty, but the drain must wait and move that VM on too."""
    snap = cluster(maintenance="h2")
    snap = replace(snap, vms={n: v for n, v in snap.vms.items() if v.host != "h2"})  # db-1 already moved off
    inc = Incident("inc-h2-1", IncidentKind.DRAIN, "h2", "drain", "test", NOW - 20, IncidentPhase.ACTING,
                   intents=("i1",), rounds=1, planned_at=NOW - 20)
    mine = IntentView("i1", inc.id, "db-1", "h2", "h3", IntentState.DONE)
    arriving = IntentView("i9", "inc-h1-1", "web-1", "h1", "h2", IntentState.VERIFYING)
    r = tick(view(snap, incidents={inc.id: inc}, intents=(mine, arriving)), POLICY, NOW)
    assert not [d for d in r.decisions if isinstance(d, CloseIncident)], r.sentence
