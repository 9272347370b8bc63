"""Issue 12 on the simulator: never twice, never stuck (cases 5, 6 and 14).

Each test reproduces a way the runner broke "exactly one copy" or left an intent parked for
ever, on MemoryStore + SimCluster + SimClock; `SimCluster.duplicates_seen` records every
moment a VM ran on two hosts, not only the end state.
"""
from __future__ import annotations

import pytest

from drctl.control import intents
from drctl.control.intents import Intent
from drctl.hypervisor import DomainState
from drctl.model.cluster import IntentKind, IntentState
from drctl.runner.executor import Runner, RunnerConfig
from drctl.runner.verification import Health
from tests.unit.test_runner_sim import HOSTS, World, world  # noqa: F401 - the fixture

S = IntentState


def runner(world: World, runner_id: str = "r1", **kw: object) -> Runner:
    cfg_fields = {k: kw.pop(k) for k in list(kw) if k in RunnerConfig.__dataclass_fields__}
    cfg = RunnerConfig(runner_id, watch=world.cfg.watch, **cfg_fields)  # type: ignore[arg-type]
    return Runner(world.store, world.keys, {h: world.cluster.uri(h) for h in HOSTS}, world.cluster.connect,
                  world.clock, cfg, **kw)  # type: ignore[arg-type]


def advance_to(world: World, t: float) -> None:
    if world.clock.now() < t:
        world.clock.advance(t - world.clock.now())


def copies(world: World, vm: str) -> dict[str, str]:
    """Every host that holds `vm` in any state (a paused or stopped copy counts too)."""
    return {h.name: h.domains[vm].state.value for h in world.cluster.hosts.values() if vm in h.domains}


# ------------------------------------------------------------------ case 6: a given-up migration


def test_hung_destination_resuming_its_incoming_copy_never_runs_the_vm_twice(world: World) -> None:
    """The lab observation "A VM ran twice": the destination's libvirtd stops at the
    hand-over and comes back 40 s later; the source's libvirt gave up and resumed the VM
    after 30 s, and the resumed destination runs its incoming copy too."""
    world.vm("web-20")
    world.cluster.stall_handover("h2", source_gives_up_s=30)
    cont_at = world.clock.now() + 40
    world.clock.call_at(cont_at, lambda: world.cluster.resume_host("h2"))
    done = runner(world).execute(world.intent("web-20").id)
    advance_to(world, cont_at + 5)
    assert world.cluster.duplicates_seen == []
    assert copies(world, "web-20") == {"h3": "running"}
    assert done is not None and done.state is S.DONE and done.dst == "h3" and done.tried == ("h2",)
    held = world.events("migration.source_held")
    removed = world.events("migration.incoming_removed")
    released = world.events("migration.source_released")
    assert held and held[0]["src"] == "h1" and removed and removed[0]["host"] == "h2" and released
    assert world.events("migration.started")[-1]["dst"] == "h3"


def test_destination_that_never_answers_keeps_the_source_held_until_it_is_fenced(world: World) -> None:
    world.vm("web-21")
    world.cluster.stall_handover("h2", source_gives_up_s=30)
    it = world.intent("web-21")
    parked = runner(world, contain_timeout_s=60).execute(it.id)
    # parked, the source held: the VM runs nowhere rather than possibly twice
    assert parked is not None and parked.state is S.MIGRATING
    assert copies(world, "web-21") == {"h1": "paused", "h2": "paused"}
    assert world.events("intent.outcome_unknown")
    # a later pass, the destination still silent: still held
    again = runner(world, "r2", contain_timeout_s=10).execute(it.id)
    assert again is not None and again.state is S.MIGRATING and copies(world, "web-21")["h1"] == "paused"
    # the destination host is fenced: its copy cannot run; the source runs again and moves on
    done = runner(world, "r3", fenced=lambda h: h == "h2").execute(it.id)
    assert done is not None and done.state is S.DONE and done.dst == "h3"
    assert world.cluster.where("web-21") == ["h3"] and world.cluster.duplicates_seen == []
    assert world.events("migration.source_released")[0]["reason"] == "h2: fenced"


class TickHealth:
    """Console-tick health in miniature, as blind as the real one (drctl/lab/console_health.py):
    `mark` notes the tick count, `check` is satisfied by any newer tick, whichever copy
    printed it (one console file per guest)."""

    def __init__(self, world: World, alive_on: str = "") -> None:
        self.world, self.alive_on = world, alive_on  # a host whose copy ticks while checked
        self.ticks: dict[str, list[tuple[int, str]]] = {}  # vm -> (count, host) printed
        self.marks: list[object] = []
        self.checked: list[object] = []

    def tick(self, vm: str, host: str) -> None:
        seen = self.ticks.setdefault(vm, [])
        seen.append((len(seen) + 1, host))

    def mark(self, vm: str) -> object:
        self.marks.append(len(self.ticks.get(vm, [])))
        return self.marks[-1]

    def check(self, vm: str, host: str, hv: object, mark: object, timeout_s: float) -> Health:
        self.checked.append(mark)
        if host == self.alive_on:
            self.tick(vm, host)
        newer = [h for n, h in self.ticks.get(vm, []) if n > int(mark)]  # type: ignore[call-overload]
        return Health(bool(newer), f"new tick (printed on {newer[-1]})" if newer else "no new tick")


def test_verification_after_a_given_up_attempt_needs_a_tick_from_the_new_host(world: World) -> None:
    """The lab failure of test_hung_destination_...: verification on H3 passed on ticks the
    source printed after the first (given-up) attempt, because the mark was taken once per
    intent. A guest that never ticked on its new host was called alive."""
    world.vm("web-22")
    health = TickHealth(world)
    world.cluster.stall_handover("h2", source_gives_up_s=30)
    # the source ticks on while the runner holds nothing yet (libvirt resumed it)
    world.clock.call_at(world.clock.now() + 31, lambda: health.tick("web-22", "h1"))
    world.clock.call_at(world.clock.now() + 40, lambda: world.cluster.resume_host("h2"))
    done = runner(world, health=health).execute(world.intent("web-22").id)
    # no tick was printed on h3: the arrival must not be called healthy
    assert done is not None and done.dst == "h3"
    assert done.state is S.FAILED and "guest unhealthy" in done.reason, done.reason
    assert health.checked == [health.marks[-1]]  # the mark taken on arrival


def test_ticks_printed_by_the_source_during_the_copy_do_not_verify_the_arrival(world: World) -> None:
    """A live migration copies for seconds while the guest runs on the source: its ticks
    then say nothing about the copy on the destination."""
    world.vm("web-26")  # 512 MiB at the intent's 64 MiB/s: an 8 s copy on the simulated clock
    health = TickHealth(world)
    world.clock.call_at(world.clock.now() + 1, lambda: health.tick("web-26", "h1"))
    done = runner(world, health=health).execute(world.intent("web-26").id)
    assert done is not None and done.state is S.FAILED and "guest unhealthy" in done.reason, done.reason
    # the same with a guest that ticks on its new host while it is checked: healthy
    world.vm("web-27")
    alive = TickHealth(world, alive_on="h2")
    world.clock.call_at(world.clock.now() + 1, lambda: alive.tick("web-27", "h1"))
    done = runner(world, health=alive).execute(world.intent("web-27").id)
    assert done is not None and done.state is S.DONE, done.reason


# ------------------------------------------------------------------ case 14: a resumed restart


def fence_h1(world: World) -> None:
    """h1 was fenced (powered off): its guests are off and its libvirt never answers."""
    for d in world.cluster.hosts["h1"].domains.values():
        d.state = DomainState.SHUTOFF
    world.cluster.hosts["h1"].up = False


def restart_intent(world: World, vm: str, xml: str) -> Intent:
    fence_h1(world)
    it = world.intent(vm, dst="h2", candidates=(), kind=IntentKind.RESTART)
    it = intents.transition(world.store, world.keys, it, S.CHECKING, "before the crash", world.clock.now())
    return intents.transition(world.store, world.keys, it, S.MIGRATING, "restarting (then the runner died)",
                              world.clock.now(), attempt=1, definition=xml)


def test_restart_resumed_after_its_runner_died_before_the_start_starts_the_vm_once(world: World) -> None:
    xml = world.vm("db-1")
    it = restart_intent(world, "db-1", xml)
    done = runner(world).execute(it.id)
    assert done is not None and done.state is S.DONE, done and done.reason
    assert world.cluster.where("db-1") == ["h2"] and len(world.events("vm.restarted")) == 1


def test_restart_resumed_after_its_runner_died_after_the_start_does_not_start_again(world: World) -> None:
    xml = world.vm("db-2")
    it = restart_intent(world, "db-2", xml)
    hv = world.cluster.connect(world.cluster.uri("h2"))
    hv.define(xml)
    hv.start("db-2")  # the dead runner's start went through
    done = runner(world).execute(it.id)
    assert done is not None and done.state is S.DONE
    assert world.cluster.where("db-2") == ["h2"] and not world.events("vm.restarted")


def test_resumed_restart_waits_while_a_live_host_does_not_answer(world: World) -> None:
    xml = world.vm("db-3")
    it = restart_intent(world, "db-3", xml)
    world.cluster.hosts["h3"].hung = True  # could hold a copy: no start yet
    parked = runner(world).execute(it.id)
    assert parked is not None and parked.state is S.MIGRATING and world.cluster.where("db-3") == []
    world.cluster.hosts["h3"].hung = False
    done = runner(world).execute(it.id)
    assert done is not None and done.state is S.DONE and world.cluster.where("db-3") == ["h2"]


# ------------------------------------------------------------------ case 5: claims bound to the lease


def test_a_replica_with_the_same_name_that_lost_its_claim_does_not_migrate(world: World) -> None:
    """Runner A's lease lapsed (paused process) and a second replica with the same name
    claimed the intent; A wakes right before the migration: it must not migrate."""
    world.vm("web-23")
    it = world.intent("web-23")
    other = world.store.grant_lease(30, keepalive=False)

    def takeover(_addr: str, _timeout: float):  # type: ignore[no-untyped-def]
        world.store.delete(world.keys.intent_claim(it.id))  # A's lease lapsed
        assert intents.claim(world.store, world.keys, it.id, "r1", other.id)  # the twin claims
        from drctl.runner.prechecks import CheckResult
        return CheckResult("address", True, "")

    got = runner(world, reachable=takeover).execute(it.id)
    assert not world.events("migration.started")
    assert world.cluster.where("web-23") == ["h1"]
    assert got is not None and got.state is S.CHECKING  # left for the twin that holds it
    assert world.events("runner.gave_up")


def test_a_replica_with_the_same_name_that_lost_its_claim_does_not_start_a_restart(world: World) -> None:
    xml = world.vm("db-4")
    fence_h1(world)
    it = world.intent("db-4", dst="h2", candidates=(), kind=IntentKind.RESTART)
    other = world.store.grant_lease(30, keepalive=False)

    def definitions(vm: str) -> str:
        world.store.delete(world.keys.intent_claim(it.id))
        assert intents.claim(world.store, world.keys, it.id, "r1", other.id)
        return xml

    got = runner(world, definitions=definitions).execute(it.id)
    assert world.cluster.where("db-4") == [] and not world.events("vm.restarted")
    assert got is not None and got.state is S.CHECKING


def test_claim_guard_compares_the_lease_not_only_the_name(world: World) -> None:
    world.vm("web-24")
    it = world.intent("web-24")
    mine = world.store.grant_lease(2, keepalive=False)
    assert intents.claim(world.store, world.keys, it.id, "r1", mine.id)
    world.clock.advance(3)
    twin = world.store.grant_lease(30, keepalive=False)
    assert intents.claim(world.store, world.keys, it.id, "r1", twin.id)
    assert intents.claimed(world.store, world.keys) == {it.id: "r1"}
    assert not intents.holds_claim(world.store, world.keys, it.id, "r1", mine.id)
    assert intents.holds_claim(world.store, world.keys, it.id, "r1", twin.id)
    with pytest.raises(intents.IntentConflict):
        intents.transition(world.store, world.keys, it, S.CHECKING, "x", world.clock.now(),
                           guards=[intents.claim_guard(world.keys, it.id, "r1", mine.id)])

