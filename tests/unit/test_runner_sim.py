"""The runner on the simulator: MemoryStore + SimCluster + SimClock, no real waiting."""
from __future__ import annotations

from pathlib import Path

import pytest

from drctl.audit import writer as audit

from drctl.control import intents
from drctl.clock import SimClock
from drctl.model.errors import MigrationFailed
from drctl.hypervisor.sim import SimCluster
from drctl.control.intents import Intent, IntentParams, new_intent
from drctl.lab.guest import GuestImage, domain_xml
from drctl.runner.migration import WatchConfig
from drctl.model.cluster import IntentKind, IntentState, Limits, Move
from drctl.model.proof import FenceProof, FenceBasis, proof_id
from drctl.runner.executor import Runner, RunnerConfig
from drctl.store import Compare
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

HOSTS = ("h1", "h2", "h3", "h4")


class World:
    def __init__(self, **cfg: object) -> None:
        self.clock = SimClock()
        self.store = MemoryStore(self.clock)
        self.cluster = SimCluster(self.clock)
        for h in HOSTS:
            self.cluster.add_host(h, memory_mib=4096)
        self.keys = Keys()
        self.sink = audit.configure("test", clock=self.clock.now, keep_in_memory=True)
        self.cfg = RunnerConfig("r1", watch=WatchConfig(poll_s=0.01), **cfg)  # type: ignore[arg-type]

    def runner(self, runner_id: str = "r1", **kw: object) -> Runner:
        cfg = RunnerConfig(runner_id, **{k: getattr(self.cfg, k) for k in ("watch", "limits", "reserved_mib")})
        return Runner(self.store, self.keys, {h: self.cluster.uri(h) for h in HOSTS}, self.cluster.connect,
                      self.clock, cfg, **kw)  # type: ignore[arg-type]

    def vm(self, name: str, host: str = "h1", memory_mib: int = 512) -> str:
        xml = domain_xml(name, GuestImage(Path("/k"), Path("/i")), memory_mib, Path(f"/c/{name}"))
        hv = self.cluster.connect(self.cluster.uri(host))
        hv.define(xml)
        hv.start(name)
        return xml

    def fence(self, host: str = "h1", incident: str = "inc-1", term: int = 7) -> str:
        """Record the fence proof the leader writes once `host` is confirmed off."""
        proof = FenceProof(proof_id(incident, term), host, incident, term, ("lease-expired", "witnesses"),
                           FenceBasis.OFF, "sim", "off")
        self.store.put(self.keys.fence_proof(host), proof.to_json())
        return proof.id

    def intent(self, vm: str, src: str = "h1", dst: str = "h2", candidates: tuple[str, ...] = ("h3",),
               kind: IntentKind = IntentKind.MIGRATE, proof: str | None = None, **params: object) -> Intent:
        if proof is None and kind is IntentKind.RESTART:
            proof = self.fence(src)  # what the controller does before any restart intent exists
        move = Move(vm, src, dst, kind=kind, reason="test", proof=proof or "")
        it = new_intent(move, "inc-1", 7, self.clock.now(),
                        IntentParams(**params), candidates)  # type: ignore[arg-type]
        assert intents.create_intents(self.store, self.keys, [it])
        got = intents.get_intent(self.store, self.keys, it.id)  # with its revision
        assert got is not None
        return got

    def events(self, name: str) -> list[dict]:
        return [e for e in self.sink.lines if e["event"] == name]

    def states(self, intent_id: str) -> list[tuple[str, str]]:
        return [(e["from"], e["to"]) for e in self.events("intent.state_changed") if e["intent"] == intent_id]


@pytest.fixture
def world() -> World:
    return World()


def test_happy_path_walks_the_state_table_and_records_placement(world: World) -> None:
    world.vm("web-1")
    it = world.intent("web-1")
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and done.attempt == 1
    assert world.cluster.where("web-1") == ["h2"]
    assert intents.placement(world.store, world.keys, "web-1") == "h2"
    assert world.states(it.id) == [("pending", "checking"), ("checking", "migrating"),
                                   ("migrating", "verifying"), ("verifying", "done")]
    for e in world.events("intent.state_changed"):
        assert e["reason"] and e["attempt"] is not None and e["term"] == 7 and e["incident"] == "inc-1"
    assert world.events("migration.completed")[0]["downtime_ms"] == 20
    assert not intents.claimed(world.store, world.keys)  # claim given back


def test_transient_failure_is_retried_at_the_same_destination(world: World) -> None:
    world.vm("web-2")
    world.cluster.fail_next_migrations["web-2"] = MigrationFailed
    it = world.intent("web-2")
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and done.dst == "h2" and done.attempt == 2
    assert len(world.events("retry.scheduled")) == 1
    assert ("migrating", "checking") in world.states(it.id)


def test_unreachable_destination_exhausts_retries_then_next_candidate(world: World) -> None:
    world.vm("web-3")
    world.cluster.hosts["h2"].up = False
    it = world.intent("web-3", candidates=("h3", "h4"))
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and done.dst == "h3" and done.tried == ("h2",)
    assert len(world.events("retry.scheduled")) == world.cfg.retry_attempts - 1
    assert world.events("intent.retargeted")[0]["old_dst"] == "h2"
    assert world.cluster.where("web-3") == ["h3"]


def test_hung_destination_is_given_up_and_the_vm_found_on_the_source(world: World) -> None:
    world.vm("web-4")
    world.cluster.hosts["h2"].hung = True
    it = world.intent("web-4")
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and done.dst == "h3"
    assert world.cluster.where("web-4") == ["h3"]


def test_precheck_rejects_a_full_destination_without_migrating_there(world: World) -> None:
    world.vm("big", memory_mib=2048)
    world.vm("filler", host="h2", memory_mib=3000)
    it = world.intent("big")
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and done.dst == "h3"
    assert [e["dst"] for e in world.events("migration.started")] == ["h3"]
    reasons = [e["reason"] for e in world.events("intent.state_changed") if e["to"] == "pending"]
    assert "dest-memory" in reasons[0]


def test_reservation_and_incoming_migrations_count_against_memory(world: World) -> None:
    world.cfg = RunnerConfig("r1", watch=WatchConfig(poll_s=0.01), reserved_mib={"h2": 3600})
    world.vm("web-5")
    done = world.runner().execute(world.intent("web-5").id)
    assert done is not None and done.dst == "h3"


def test_no_destination_left_fails_with_the_reason_and_vm_stays(world: World) -> None:
    world.vm("web-6")
    for h in ("h2", "h3"):
        world.cluster.hosts[h].memory_mib = 256
    it = world.intent("web-6")
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.FAILED
    assert "no destination left" in done.reason and "dest-memory" in done.reason
    assert world.cluster.where("web-6") == ["h1"]


def test_choose_next_is_asked_when_candidates_run_out(world: World) -> None:
    world.vm("web-7")
    world.cluster.hosts["h2"].memory_mib = 256
    asked: list[tuple[str, ...]] = []

    def choose(it: Intent) -> str | None:
        asked.append(it.tried)
        return "h4"

    done = world.runner(choose_next=choose).execute(world.intent("web-7", candidates=()).id)
    assert done is not None and done.state is IntentState.DONE and done.dst == "h4" and asked == [("h2",)]


def test_two_runners_never_run_one_intent_and_a_dead_runners_claim_lapses(world: World) -> None:
    world.vm("web-8")
    it = world.intent("web-8")
    dead = world.store.grant_lease(2, keepalive=False)
    assert intents.claim(world.store, world.keys, it.id, "dead-runner", dead.id)
    other = world.runner("r2")
    assert other.execute(it.id) is None  # held
    assert not intents.claim(world.store, world.keys, it.id, "r3", dead.id)
    world.clock.advance(3)  # the dead runner's lease expires: its claim goes with it
    done = other.execute(it.id)
    assert done is not None and done.state is IntentState.DONE


def test_a_runner_that_lost_its_claim_cannot_write(world: World) -> None:
    world.vm("web-9")
    it = world.intent("web-9")
    lease = world.store.grant_lease(2, keepalive=False)
    assert intents.claim(world.store, world.keys, it.id, "r1", lease.id)
    world.clock.advance(3)
    with pytest.raises(intents.IntentConflict):
        intents.transition(world.store, world.keys, it, IntentState.CHECKING, "x", world.clock.now(),
                           guards=[intents.claim_guard(world.keys, it.id, "r1", lease.id)])


def test_resumed_intent_in_migrating_looks_before_acting(world: World) -> None:
    world.vm("web-10", host="h2")  # a crashed runner's migration had completed
    it = world.intent("web-10")
    for to in (IntentState.CHECKING, IntentState.MIGRATING):
        it = intents.transition(world.store, world.keys, it, to, "before the crash", world.clock.now())
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE
    assert world.events("intent.resumed") and not world.events("migration.started")


def test_transitions_are_checked_and_compare_and_swapped(world: World) -> None:
    it = world.intent("nobody")
    with pytest.raises(ValueError):
        intents.transition(world.store, world.keys, it, IntentState.DONE, "skip", 0.0)
    intents.transition(world.store, world.keys, it, IntentState.CHECKING, "first", 0.0)
    with pytest.raises(intents.IntentConflict):  # stale revision
        intents.transition(world.store, world.keys, it, IntentState.CHECKING, "second", 0.0)


def test_create_is_guarded_by_the_leader_key(world: World) -> None:
    world.store.put("/drctl/leader/1", b"c1")
    kv = world.store.get("/drctl/leader/1")
    assert kv is not None
    it = new_intent(Move("v", "h1", "h2"), "inc", 3, 0.0)
    assert not intents.create_intents(world.store, world.keys, [it], [Compare.created_at(kv.key, 999)])
    assert intents.create_intents(world.store, world.keys, [it], [Compare.created_at(kv.key, kv.create_revision)])
    got = intents.get_intent(world.store, world.keys, it.id)
    assert got is not None and got.to_json() == it.to_json()
    assert not intents.create_intents(world.store, world.keys, [it])  # ids are unique


def test_restart_starts_exactly_once(world: World) -> None:
    xml = world.vm("db-1")
    world.store.put(world.keys.vm_definition("db-1"), xml.encode())
    world.cluster.hosts["h1"].domains.clear()
    world.cluster.hosts["h1"].up = False  # fenced
    it = world.intent("db-1", kind=IntentKind.RESTART)
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and world.cluster.where("db-1") == ["h2"]
    assert len(world.events("vm.restarted")) == 1
    # a second intent for the same VM (a retry after a crash) must not start a second copy
    again = world.intent("db-1", kind=IntentKind.RESTART, dst="h3", candidates=())
    done2 = world.runner().execute(again.id)
    assert done2 is not None and done2.state is IntentState.FAILED and "already runs on h2" in done2.reason
    assert world.cluster.where("db-1") == ["h2"] and len(world.events("vm.restarted")) == 1


def test_restart_retry_after_start_does_not_start_twice(world: World) -> None:
    xml = world.vm("db-2", host="h2")  # the earlier attempt started it on h2, then the runner died
    world.store.put(world.keys.vm_definition("db-2"), xml.encode())
    world.cluster.hosts["h1"].up = False
    it = world.intent("db-2", kind=IntentKind.RESTART)
    it = intents.transition(world.store, world.keys, it, IntentState.CHECKING, "before the crash", 0.0)
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.DONE and not world.events("vm.restarted")


def test_restart_survives_losing_the_stored_definition_after_a_failed_start(world: World) -> None:
    """A start on h2 times out; the half-started copy is undefined there, and h2's agent
    removes the definition record it had published for it. The retry on h3 must still
    have the definition (kept in the intent), or the VM would stay down."""
    from drctl.model.errors import HypervisorTimeout

    xml = world.vm("db-4")
    world.store.put(world.keys.vm_definition("db-4"), xml.encode())
    world.cluster.hosts["h1"].domains.clear()
    world.cluster.hosts["h1"].up = False  # fenced

    def connect(uri: str):  # type: ignore[no-untyped-def]
        hv = world.cluster.connect(uri)
        if uri.endswith("h2"):
            def start(name: str) -> None:
                world.store.delete(world.keys.vm_definition(name))  # what h2's agent does next
                raise HypervisorTimeout(f"{uri}: start {name}: no answer within 5s")
            hv.start = start  # type: ignore[method-assign]
        return hv

    it = world.intent("db-4", kind=IntentKind.RESTART, dst="h2", candidates=("h3",))
    runner = Runner(world.store, world.keys, {h: world.cluster.uri(h) for h in HOSTS}, connect, world.clock,
                    RunnerConfig("r1", watch=WatchConfig(poll_s=0.01)))
    done = runner.execute(it.id)
    assert done is not None and done.state is IntentState.DONE, done and done.reason
    assert world.cluster.where("db-4") == ["h3"]
    assert [e["dst"] for e in world.events("vm.restarted")] == ["h3"]


def test_restart_refuses_when_the_source_still_runs_it(world: World) -> None:
    xml = world.vm("db-3")
    world.store.put(world.keys.vm_definition("db-3"), xml.encode())
    done = world.runner().execute(world.intent("db-3", kind=IntentKind.RESTART).id)
    assert done is not None and done.state is IntentState.FAILED and "still runs on h1" in done.reason
    assert world.cluster.where("db-3") == ["h1"]


def test_scheduler_respects_concurrency_and_drains_everything(world: World) -> None:
    world.cfg = RunnerConfig("r1", watch=WatchConfig(poll_s=0.01),
                             limits=Limits(max_concurrent=2, max_per_source=2, max_per_destination=1))
    ids = []
    for i in range(4):
        world.vm(f"v{i}")
        ids.append(world.intent(f"v{i}", dst="h2" if i % 2 else "h3", candidates=("h4",)).id)
    runner = world.runner()
    first = runner.run_pending()
    assert len(first) == 2  # max_concurrent; and one per destination
    final = {i.id: i for i in runner.drain(timeout_s=60)}
    runner.close()
    assert all(final[i].state is IntentState.DONE for i in ids)
    assert all(len(world.cluster.where(f"v{i}")) == 1 for i in range(4))


def test_restarts_booting_take_no_slot_so_a_dead_hosts_vms_all_start_at_once(world: World) -> None:
    from dataclasses import replace

    world.cfg = RunnerConfig("r1", limits=Limits(max_concurrent=3, max_per_destination=2))
    runner = world.runner()
    restart = [world.intent(f"v{i}", dst="h2", kind=IntentKind.RESTART) for i in range(5)]
    booting = [replace(i, state=IntentState.VERIFYING) for i in restart[:3]]
    assert runner._admits(restart[3], booting)  # three guests booting hold no slot
    starting = [replace(i, state=IntentState.MIGRATING) for i in restart[:2]]
    assert not runner._admits(restart[3], [*booting, *starting])  # h2 starts two already
    migrating = [replace(world.intent(f"m{i}", dst="h3"), state=IntentState.MIGRATING) for i in range(3)]
    assert not runner._admits(restart[4], [*booting, *migrating])  # live moves do take slots
    assert runner._pool._max_workers >= 64  # the pool is no tighter limit than _admits
    runner.close()


def test_stall_detector_fires_when_dirty_memory_stops_shrinking() -> None:
    from drctl.runner.convergence import StallDetector, next_step
    from drctl.hypervisor import JobStats

    d = StallDetector(k_iterations=2, stall_s=1000, deadline_s=1000)
    t = 0.0
    verdict = None
    for it, rem in [(1, 100), (2, 50), (3, 40), (4, 45), (5, 44), (6, 46), (7, 47)]:
        t += 1
        verdict = d.observe(JobStats(active=True, memory_iteration=it, memory_remaining=rem << 20), t) or verdict
    assert verdict and "not shrinking" in verdict
    d2 = StallDetector(k_iterations=2, stall_s=1000, deadline_s=1000)
    for i, rem in enumerate([100, 50, 25, 12, 6, 3], start=1):
        assert d2.observe(JobStats(active=True, memory_iteration=i, memory_remaining=rem), float(i)) is None
    from drctl.model.cluster import EscalationStep as Step

    assert next_step(("raise-downtime", "post-copy"), [Step.RAISE_DOWNTIME], False) is Step.POST_COPY
    assert next_step(("raise-downtime",), [Step.RAISE_DOWNTIME], False) is Step.ABORT
    assert next_step(("bogus", "post-copy"), [], False) is Step.POST_COPY  # unknown names are skipped
    assert next_step(("post-copy",), [Step.POST_COPY], True) is None  # wait: never abort a post-copy


def test_resolve_where_a_vm_runs() -> None:
    from drctl.runner.verification import Resolution, Where, resolve

    R, W = Resolution, Where
    assert resolve({"a": W.RUNNING, "b": W.UNKNOWN}, "a", "b")[0] is R.SOURCE
    assert resolve({"a": W.UNKNOWN, "b": W.RUNNING}, "a", "b")[0] is R.DESTINATION
    assert resolve({"a": W.PAUSED, "b": W.UNKNOWN}, "a", "b")[0] is R.UNKNOWN
    assert resolve({"a": W.RUNNING, "b": W.RUNNING}, "a", "b")[0] is R.DUPLICATED
    assert resolve({"a": W.ABSENT, "b": W.STOPPED}, "a", "b")[0] is R.NOWHERE


def test_prechecks_name_each_failure() -> None:
    from drctl.hypervisor import GuestSupport, HostCapacity
    from drctl.model.cluster import Host, HostState
    from drctl.runner.prechecks import CheckPolicy, DestFacts, domain_needs, check_destination, summary

    xml = domain_xml("p", GuestImage(Path("/k"), Path("/i")), 1024, Path("/c"),
                     cpu_xml="<cpu mode='custom'><model>Skylake</model></cpu>")
    needs = domain_needs(xml)
    assert needs.memory_mib == 1024 and needs.machine == "pc" and "Skylake" in needs.cpu_xml
    facts = DestFacts("h2", HostCapacity(4096, 2000, 4, "qemu64", "h2"), GuestSupport(frozenset({"q35"}), frozenset()),
                      frozenset(), frozenset(), False, Host("h2", 4096, 4, state=HostState.DEGRADED))
    text = summary(check_destination(facts, needs, incoming_mib=600, policy=CheckPolicy()))
    for name in ("dest-healthy", "dest-memory", "cpu-compatible", "machine-type"):
        assert name in text
    assert "incoming 600" in text


# ------------------------------------------------------------------ issue 12: the restart gate


def test_paused_copy_on_another_host_blocks_a_restart(world: World) -> None:
    """Case 4: a paused (or incoming, mid-migration) copy counts as a copy: resuming it
    later would run the VM twice."""
    from drctl.hypervisor import DomainState

    xml = world.vm("db-5", host="h3")
    world.cluster.hosts["h3"].domains["db-5"].state = DomainState.PAUSED
    world.store.put(world.keys.vm_definition("db-5"), xml.encode())
    world.cluster.hosts["h1"].up = False  # fenced
    it = world.intent("db-5", kind=IntentKind.RESTART, dst="h2", candidates=())
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.FAILED, done and done.reason
    assert "paused on h3" in done.reason
    assert "db-5" not in world.cluster.hosts["h2"].domains and not world.events("vm.restarted")


def test_restart_without_a_recorded_fence_proof_starts_nothing(world: World) -> None:
    """Case 1: the runner re-reads the source's fence proof right before define/start."""
    xml = world.vm("db-6")
    world.store.put(world.keys.vm_definition("db-6"), xml.encode())
    world.cluster.hosts["h1"].domains.clear()
    world.cluster.hosts["h1"].up = False  # down, but nobody fenced it: it may come back running
    it = world.intent("db-6", kind=IntentKind.RESTART, proof="")
    done = world.runner().execute(it.id)
    assert done is not None and done.state is IntentState.FAILED and "restart refused" in done.reason
    assert world.cluster.where("db-6") == [] and not world.events("vm.restarted")
    assert world.events("restart.refused")


def test_restart_whose_proof_was_replaced_or_removed_starts_nothing(world: World) -> None:
    xml = world.vm("db-7")
    world.store.put(world.keys.vm_definition("db-7"), xml.encode())
    world.cluster.hosts["h1"].domains.clear()
    world.cluster.hosts["h1"].up = False
    stale = world.intent("db-7", kind=IntentKind.RESTART)  # names inc-1@7
    world.fence("h1", incident="inc-2", term=9)  # a newer incident of h1 fenced it again
    done = world.runner().execute(stale.id)
    assert done is not None and done.state is IntentState.FAILED and "inc-2@9" in done.reason
    world.store.delete(world.keys.fence_proof("h1"))  # the incident closed: its proof went with it
    again = world.intent("db-7", kind=IntentKind.RESTART, proof="inc-1@7", candidates=())
    done2 = world.runner().execute(again.id)
    assert done2 is not None and done2.state is IntentState.FAILED and "no fence proof" in done2.reason
    assert world.cluster.where("db-7") == [] and not world.events("vm.restarted")


def test_parked_migration_whose_source_died_escalates_after_its_deadline(world: World) -> None:
    """Case 8: source unknown + destination absent parks the intent; past the deadline it
    fails with an audit event, so the VM is not held by a migration that will never end
    (the controller's recovery of the dead host restarts it)."""
    world.vm("web-9")
    it = world.intent("web-9")
    it = intents.transition(world.store, world.keys, it, IntentState.CHECKING, "test", world.clock.now())
    it = intents.transition(world.store, world.keys, it, IntentState.MIGRATING, "test", world.clock.now())
    world.cluster.hosts["h1"].up = False  # the source died mid-migration; nothing arrived on h2
    first = world.runner().execute(it.id)
    assert first is not None and first.state is IntentState.MIGRATING  # parked: cannot tell yet
    world.clock.advance(world.cfg.park_deadline_s + 1)
    later = world.runner().execute(it.id)
    assert later is not None and later.state is IntentState.FAILED, later and later.reason
    assert "parked" in later.reason and world.events("intent.park_expired")
    assert world.cluster.where("web-9") == ["h1"]  # the sim keeps the dead host's domain; no other copy
