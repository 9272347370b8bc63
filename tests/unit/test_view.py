"""One cluster view per tick (issue 11.4): the controller loop reads etcd once per tick,
builds typed records, verdicts and snapshot from that read, and the runner of the same
process takes host URIs and states from it."""
from __future__ import annotations

import json
from typing import Any

from drctl.audit import writer as audit
from drctl.clock import SimClock
from drctl.control.view import SharedView
from drctl.model.cluster import HostState
from drctl.runner.executor import Runner, RunnerConfig
from tests.unit.test_controller_loop_sim import Cluster, leader


def _count_prefix_reads(cluster: Cluster) -> dict[str, int]:
    reads: dict[str, int] = {}
    real = cluster.store.get_prefix

    def counting(prefix: str) -> Any:
        reads[prefix] = reads.get(prefix, 0) + 1
        return real(prefix)

    cluster.store.get_prefix = counting  # type: ignore[method-assign]
    return reads


def test_a_tick_reads_the_cluster_once() -> None:
    cluster = Cluster()
    loop, lead = leader(cluster)
    reads = _count_prefix_reads(cluster)
    assert loop.tick_once(lead) == "all 3 hosts steady; nothing to do"  # type: ignore[arg-type]
    data = {p: n for p, n in reads.items() if not p.startswith(cluster.keys.leader_prefix())}
    assert data == {cluster.keys.prefix: 1}  # before: the whole prefix, then incidents/ again


def test_the_runner_reads_uris_and_host_states_from_the_loops_view() -> None:
    cluster = Cluster()
    loop, lead = leader(cluster)
    shared = loop.shared
    runner = Runner(cluster.store, cluster.keys, shared.uris, lambda uri: None, cluster.clock,  # type: ignore[arg-type,return-value]
                    RunnerConfig(runner_id="c1"), host_state=shared.host)
    loop.tick_once(lead)  # type: ignore[arg-type]
    assert dict(runner.uris) == {"h1": "sim://h1", "h2": "sim://h2", "h3": "sim://h3"}
    assert runner.host_state("h2").state is HostState.HEALTHY  # type: ignore[union-attr]
    # a host joins: its agent publishes an inventory; the runner knows it after the next tick
    cluster.store.put(cluster.keys.inventory("h4"), json.dumps({"host": "h4", "uri": "sim://h4"}).encode())
    loop.tick_once(lead)  # type: ignore[arg-type]
    assert runner.uris["h4"] == "sim://h4"


def test_an_unreadable_record_is_skipped_and_reported_once() -> None:
    cluster = Cluster()
    sink = audit.configure("test", clock=cluster.clock.now, keep_in_memory=True)
    loop, lead = leader(cluster)
    cluster.store.put(cluster.keys.inventory("h2"), b'{"host": "h2", "memory_total_mib": "lots"}')
    cluster.store.put(cluster.keys.incident("inc-x"), b"not json")
    for _ in range(3):
        assert loop.tick_once(lead).startswith("all 3 hosts steady")  # type: ignore[arg-type]
    bad = sorted((e["key"], e["field"]) for e in sink.lines if e["event"] == "record.unreadable")
    assert bad == [(cluster.keys.inventory("h2"), "memory_total_mib"), (cluster.keys.incident("inc-x"), "")]


def test_shared_view_without_a_loop() -> None:
    cluster = Cluster()
    shared = SharedView(cluster.store, cluster.keys, None)
    assert shared.uris == {} and shared.host("h1") is None
    view = shared.refresh(SimClock().now())
    assert view.ok and shared.uri("h3") == "sim://h3" and set(view.verdicts) == {"h1", "h2", "h3"}
    cluster.store.fail(True)
    assert not shared.refresh(0.0).ok  # etcd down: an empty view that says so, no exception
    assert shared.uri("h3") == "sim://h3"  # a URI once seen is kept
    assert shared.host("h3") is not None  # and the runner keeps the last view etcd gave


def test_an_unreadable_health_record_still_proves_the_lease() -> None:
    cluster = Cluster()
    loop, lead = leader(cluster)
    # a newer agent writes a grade this controller does not know; its witnesses cannot
    # reach it either: without the rule it would read as "lease gone" and be DEAD
    cluster.report(down=("h1",))
    raw = json.loads(cluster.store.get(cluster.keys.health("h2")).value)  # type: ignore[union-attr]
    cluster.store.put(cluster.keys.health("h1"), json.dumps({**raw, "host": "h1", "grade": "critical"}).encode(),
                      lease=cluster.leases["h1"].id)
    loop.tick_once(lead)  # type: ignore[arg-type]
    verdict = loop.shared.latest.verdicts["h1"]
    assert verdict.state is HostState.UNREACHABLE and verdict.lease_present and "unreadable" in verdict.reason


def test_a_fixed_quorum_the_cluster_cannot_meet_is_reported_once() -> None:
    cluster = Cluster()  # 3 hosts, each witnessed by the 2 others
    sink = audit.configure("test", clock=cluster.clock.now, keep_in_memory=True)
    loop, lead = leader(cluster)
    loop.shared.quorum = 3
    for _ in range(3):
        loop.tick_once(lead)  # type: ignore[arg-type]
    warned = [e for e in sink.lines if e["event"] == "host.quorum_unreachable"]
    assert sorted(e["host"] for e in warned) == ["h1", "h2", "h3"] and warned[0]["witnesses"] == 2
