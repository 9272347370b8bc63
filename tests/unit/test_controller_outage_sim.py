"""Controller replicas through an etcd outage (issue 12, case 15), on the in-memory store.

The replicas run their real loop (`ControllerLoop.run`) in threads on the system clock;
`MemoryStore.fail(True)` makes every store call raise StoreUnavailable and stops lease
keepalives, as a killed etcd does. A replica must outlive the outage, freeze while it
lasts and resume after, with both in the audit.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.clock import SystemClock
from drctl.control.loop import ControllerLoop
from drctl.store.memory import MemoryStore
from tests.unit.test_controller_loop_sim import POLICY, Cluster


class Replica:
    """One ControllerLoop.run in a thread; an exception that ends it is kept."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.loop = ControllerLoop(cluster.store, cluster.keys, POLICY, name, clock=cluster.clock,
                                   tick_interval_s=0.05)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"replica:{name}", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run(self.stop)
        except BaseException as e:  # noqa: BLE001 - the test reports what ended the replica
            self.error = e

    def alive(self) -> bool:
        return self.thread.is_alive()


@pytest.fixture
def sink() -> Iterator[audit.AuditSink]:
    yield audit.configure("test", keep_in_memory=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # the agents' records on the system clock (lease timers are real); the hosts' leases
    # outlast the test, so only the controllers' own leases feel the outage
    c = Cluster(SystemClock(), host_lease_ttl=60)
    yield c
    c.store.close()


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")


def names(sink: audit.AuditSink) -> list[str]:
    return [str(e["event"]) for e in sink.lines]


def test_replicas_outlive_an_etcd_outage_freeze_and_resume(cluster: Cluster, sink: audit.AuditSink) -> None:
    replicas = [Replica(cluster, "c1"), Replica(cluster, "c2")]
    replicas[0].thread.start()
    wait_for("c1 to lead", lambda: replicas[0].loop.leadership is not None)
    replicas[1].thread.start()
    wait_for("c2 to campaign", lambda: len(cluster.store.get_prefix(cluster.keys.leader_prefix())[0]) == 2)
    wait_for("a steady tick", lambda: "all 3 hosts steady" in replicas[0].loop.state.last_sentence)

    cluster.store.fail(True)  # etcd killed: longer than the election lease (2 s)
    time.sleep(3.0)
    for r in replicas:
        assert r.alive(), f"{r.loop.name} exited during the outage: {r.error!r}"
    cluster.store.fail(False)

    def someone_leads_again() -> bool:
        return any(r.loop.leadership is not None and "resumed" in r.loop.state.last_sentence for r in replicas)

    wait_for("a leader that resumed after the outage", someone_leads_again)
    for r in replicas:
        assert r.alive(), f"{r.loop.name} exited after the outage: {r.error!r}"
    seen = names(sink)
    froze = [e for e in sink.lines if e["event"] == events.CONTROLLER_FROZE]
    assert froze and froze[0]["reason"] == "etcd is unhealthy"
    resumed = [e for e in sink.lines if e["event"] == events.CONTROLLER_RESUMED]
    assert resumed and "etcd is unhealthy" in str(resumed[0]["reason"])
    assert seen.index(events.CONTROLLER_FROZE) < seen.index(events.CONTROLLER_RESUMED)

    # the leader that resumed stops; the other replica, which also saw etcd go, leads next:
    # the resume is on record already, it must not claim another
    first = next(r for r in replicas if r.loop.leadership is not None)
    other = next(r for r in replicas if r is not first)
    wait_for(f"{other.loop.name} to campaign again and see {first.loop.name} lead",
             lambda: other.loop.election.other_leader_rev >= first.loop.leadership.term)  # type: ignore[union-attr]
    first.stop.set()
    first.loop.wake.set()
    first.thread.join(10)
    wait_for(f"{other.loop.name} to lead and tick",
             lambda: other.loop.leadership is not None and "all 3 hosts steady" in other.loop.state.last_sentence)
    assert len([e for e in sink.lines if e["event"] == events.CONTROLLER_RESUMED]) == 1
    for r in replicas:
        r.stop.set()
        r.loop.wake.set()
    for r in replicas:
        r.thread.join(10)
        assert not r.alive() and r.error is None


def test_runner_pauses_once_and_serves_again_after_an_outage(sink: audit.AuditSink) -> None:
    from pathlib import Path

    from drctl.control import intents
    from drctl.control.service import _run_runner
    from drctl.hypervisor.sim import SimCluster
    from drctl.lab.guest import GuestImage, domain_xml
    from drctl.model.cluster import IntentState, Move
    from drctl.runner.executor import Runner, RunnerConfig
    from drctl.runner.migration import WatchConfig
    from drctl.store.keys import Keys

    clock = SystemClock()
    store, keys, sim = MemoryStore(clock), Keys(), SimCluster(clock)
    for h in ("h1", "h2"):
        sim.add_host(h, memory_mib=4096)
    hv = sim.connect(sim.uri("h1"))
    hv.define(domain_xml("web-1", GuestImage(Path("/k"), Path("/i")), 256, Path("/c/web-1")))
    hv.start("web-1")
    runner = Runner(store, keys, {h: sim.uri(h) for h in ("h1", "h2")}, sim.connect, clock,
                    RunnerConfig("r1", watch=WatchConfig(poll_s=0.01), rescan_s=0.1, lease_ttl_s=2))
    stop = threading.Event()
    thread = threading.Thread(target=_run_runner, args=(runner, stop, 0.1), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        store.fail(True)
        time.sleep(2.5)  # past the runner's lease TTL: its claims lapse, it takes a new lease
        assert thread.is_alive()
        store.fail(False)
        wait_for("runner.resumed", lambda: events.RUNNER_RESUMED in names(sink))
        assert names(sink).count(events.RUNNER_PAUSED) == 1
        it = intents.new_intent(Move("web-1", "h1", "h2", reason="test"), "inc-1", 7, clock.now(),
                                intents.IntentParams(bandwidth_mibs=256), ())
        assert intents.create_intents(store, keys, [it])

        def done() -> bool:
            got = intents.get_intent(store, keys, it.id)
            return got is not None and got.state is IntentState.DONE

        wait_for("the intent written after the outage to be done", done)
        assert sim.where("web-1") == ["h2"]
    finally:
        stop.set()
        thread.join(10)
        runner.close()
        store.close()


class SlowReads:
    """The store, with every read of the whole prefix (the tick's view) taking
    `delay_s` of the simulated clock: an overloaded etcd that still answers."""

    def __init__(self, cluster: Cluster) -> None:
        self._store, self._cluster, self.delay_s = cluster.store, cluster, 0.0

    def get_prefix(self, prefix: str) -> tuple[list, int]:  # type: ignore[type-arg]
        if prefix == self._cluster.keys.prefix and self.delay_s:
            self._cluster.clock.advance(self.delay_s)  # type: ignore[attr-defined]
        return self._store.get_prefix(prefix)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_view_older_than_stale_after_freezes_and_a_fresh_one_resumes(sink: audit.AuditSink) -> None:
    from drctl.control.tick import Settings

    c = Cluster(host_lease_ttl=60)
    slow = SlowReads(c)
    loop = ControllerLoop(slow, c.keys, POLICY, "c1", clock=c.clock,  # type: ignore[arg-type]
                          settings=Settings(stale_after_s=10.0))
    loop.election.campaign()
    lead = loop.election.current()
    assert lead is not None
    assert loop.tick_once(lead) == "all 3 hosts steady; nothing to do"
    slow.delay_s = 12.0  # the answer arrives 12 s after the read was sent
    assert loop.tick_once(lead) == "frozen: view is stale (older than 10s); decided nothing"
    assert loop.tick_once(lead) == "frozen: view is stale (older than 10s); decided nothing"
    slow.delay_s = 0.0
    c.report()
    assert loop.tick_once(lead) == "resumed (cleared: view is stale (older than 10s))"
    froze = [e for e in sink.lines if e["event"] == events.CONTROLLER_FROZE]
    assert [e["reason"] for e in froze] == ["view is stale (older than 10s)"]  # once, not every tick
    assert [e["reason"] for e in sink.lines if e["event"] == events.CONTROLLER_RESUMED] == [
        "cleared: view is stale (older than 10s)"]


def test_a_view_etcd_could_not_give_is_as_old_as_the_last_read_that_succeeded() -> None:
    from drctl.control.view import SharedView

    c = Cluster()
    shared = SharedView(c.store, c.keys, None, clock=c.clock)
    sent = c.clock.monotonic()
    first = shared.refresh(c.clock.now())
    assert first.ok and first.read_mono == sent and first.age_s(c.clock.monotonic()) == 0.0
    c.clock.advance(5.0)
    c.store.fail(True)
    down = shared.refresh(c.clock.now())
    assert not down.ok and down.read_mono == sent and down.age_s(c.clock.monotonic()) == 5.0
    c.store.fail(False)
    c.clock.advance(1.0)
    again = shared.refresh(c.clock.now())
    assert again.ok and again.age_s(c.clock.monotonic()) == 0.0
