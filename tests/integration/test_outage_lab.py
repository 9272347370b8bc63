"""etcd outages and leader changes mid-incident on the real lab (issue 12, cases 15 and 10;
acceptance tests e and b).

Same lab and harness as test_controller_lab.py: real etcd, three libvirt hosts with their
agents, TCG guests that tick on their consoles, two controller replicas as processes.
Each test checks afterwards, with libvirt on every host, that every guest runs exactly
once and still ticks, and that every intent is terminal.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from drctl.lab import faults, guests
from drctl.lab.agents import agent_key
from drctl.lab.cluster import LabState, pid_alive
from drctl.lab.controllers import controller_key
from tests.integration.test_controller_lab import HOSTS, Harness, ctl, wait_for  # noqa: F401 - ctl: fixture

pytestmark = pytest.mark.lab
REPLICAS = ("ctl-1", "ctl-2")


def quiet(_msg: str) -> None:
    pass


def daemons(h: Harness) -> dict[str, int]:
    """pid of every controller replica and health agent the lab started."""
    pids = LabState.load(h.cfg).extra_pids
    keys = [controller_key(n) for n in REPLICAS] + [agent_key(host) for host in HOSTS]
    return {k: pids.get(k, 0) for k in keys}


def assert_alive(pids: dict[str, int]) -> None:
    dead = [k for k, pid in pids.items() if not pid_alive(pid)]
    assert dead == [], f"exited: {dead}"


def assert_all_settled(h: Harness, names: list[str]) -> dict[str, str]:
    """Every guest on exactly one host (libvirt on every host), ticking; every intent terminal."""
    where = h.assert_each_runs_once(names)
    for name in names:
        console = guests.console_path(h.cfg, name)
        last = guests.last_tick(console)
        guests.wait_ticking(console, 60, after=last.count if last else 0)
    open_ = [(i["id"], i["state"]) for i in h.intents() if i["state"] not in ("done", "failed")]
    assert open_ == []
    return where


def test_etcd_killed_mid_evacuation_no_replica_exits_and_the_incident_completes(ctl: Harness) -> None:
    names = ctl.guests_on("labhost1", 3, memory=96, dirty=1)
    pids = daemons(ctl)
    assert_alive(pids)
    faults.inject(ctl.cfg, "labhost1", "memory-errors", echo=quiet)
    wait_for(lambda: any(i["state"] in ("migrating", "verifying", "done") for i in ctl.intents()), 120,
             "the first migration to start")
    faults.inject(ctl.cfg, "etcd", "etcd-kill", echo=quiet)
    time.sleep(10)
    assert_alive(pids)  # nobody exits while etcd is away
    faults.inject(ctl.cfg, "etcd", "etcd-start", echo=quiet)
    wait_for(lambda: ctl.events("incident.closed"), 300, "the evacuation to finish after etcd returned")
    wait_for(lambda: ctl.intents() and all(i["state"] in ("done", "failed") for i in ctl.intents()), 120,
             "every intent to end")
    assert_alive(pids)
    where = assert_all_settled(ctl, names)
    assert "labhost1" not in where.values()
    assert sorted(i["vm"] for i in ctl.intents() if i["state"] == "done") == sorted(names)
    # the outage is in the trail: replicas saw it, the leader froze, and decisions resumed
    outage = [e for e in ctl.audit() if e["event"] == "controller.store_unavailable"]
    assert {e["name"] for e in outage} == set(REPLICAS)
    froze = [e for e in ctl.events("controller.froze") if e["reason"] == "etcd is unhealthy"]
    resumed = [e for e in ctl.events("controller.resumed") if "etcd is unhealthy" in e["reason"]]
    assert froze and resumed and resumed[-1]["ts"] > froze[0]["ts"]
    closed = ctl.events("incident.closed")
    assert len(closed) == 1 and closed[0]["outcome"] == "resolved"


def test_leader_killed_while_the_fence_agent_is_slow_new_leader_resumes_restarts_once(ctl: Harness) -> None:
    names = ctl.guests_on("labhost2", 2)
    faults.inject(ctl.cfg, "labhost2", "fence-slow", echo=quiet, seconds=10)
    first = ctl.leader()
    assert first is not None
    faults.inject(ctl.cfg, "labhost2", "host-kill", echo=quiet)
    wait_for(lambda: ctl.events("fence.requested"), 60, "the leader to ask for the fence")
    os.kill(ctl.controller_pid(first), signal.SIGKILL)  # the agent is still in its 10 s wait
    new = wait_for(lambda: ctl.leader() not in (None, first) and ctl.leader(), 30, "a new leader")
    resumed = wait_for(lambda: [e for e in ctl.events("fence.requested") if e.get("resumed")], 60,
                       "the new leader to resume the fence")
    assert resumed[0]["component"] == f"controller:{new}"  # type: ignore[index]
    wait_for(lambda: ctl.events("incident.closed"), 240, "recovery to finish")
    where = assert_all_settled(ctl, names)
    assert "labhost2" not in where.values()
    restarts = ctl.events("vm.restarted")
    assert sorted(e["vm"] for e in restarts) == sorted(names)  # exactly once each
    assert [e["host"] for e in ctl.events("evidence.recorded") if e["kind"] == "fence"] == ["labhost2"]
    intents = ctl.intents()
    assert sorted(i["vm"] for i in intents) == sorted(names) and all(i["state"] == "done" for i in intents)
