"""Issue 12 on the real lab: the restart gate (case 1) and a source that dies under its
evacuation (case 8). Real etcd, libvirt hosts with agents, TCG guests, two controller
replicas as processes. Each test checks afterwards, with libvirt on every host, that every
guest runs exactly once and still ticks, and that every intent is terminal.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from drctl.lab import faults, guests
from drctl.lab.cluster import LabConfig, LabState
from drctl.lab.controllers import LAB_POLICY, forget_decisions, reset_controller_state, start_controllers, stop_controllers
from tests.integration.test_controller_lab import HOSTS, KEYS, Harness, wait_for

pytestmark = pytest.mark.lab
TERMINAL = ("done", "failed", "aborted")


def _start(cfg: LabConfig, policy: Path = LAB_POLICY) -> Harness:
    for host in HOSTS:
        faults.inject(cfg, host, "clear", echo=lambda _m: None)
    h = Harness(cfg)
    reset_controller_state(cfg)
    start_controllers(cfg, LabState.load(cfg), 2, echo=lambda _m: None, policy=policy)
    wait_for(h.leader, 30, "a leader")
    return h


def _stop(cfg: LabConfig, h: Harness) -> None:
    stop_controllers(cfg)
    for host in HOSTS:
        faults.inject(cfg, host, "clear", echo=lambda _m: None)
    forget_decisions(cfg)
    h.close()


@pytest.fixture
def ctl(clean_lab: LabConfig) -> Iterator[Harness]:
    h = _start(clean_lab)
    yield h
    _stop(clean_lab, h)


def _all_terminal(ctl: Harness) -> bool:
    its = ctl.intents()
    return bool(its) and all(i["state"] in TERMINAL for i in its)


def _ticking(ctl: Harness, names: list[str]) -> None:
    for name in names:
        console = guests.console_path(ctl.cfg, name)
        last = guests.last_tick(console)
        guests.wait_ticking(console, 60, after=last.count if last else 0)


def _restarts_only_after_their_fence(ctl: Harness, host: str) -> None:
    fenced = [e for e in ctl.events("fence.succeeded") if e["host"] == host]
    proofs = [e for e in ctl.events("fence.proof_recorded") if e["host"] == host]
    restarts = [e for e in ctl.events("vm.restarted") if e["src"] == host]
    if restarts:
        assert fenced and proofs, "a restart without a fence"
        assert min(e["ts"] for e in restarts) > min(e["ts"] for e in proofs)
    created = [i for i in ctl.intents() if i["kind"] == "restart"]
    assert all(i.get("proof") for i in created), created


def test_hung_host_with_dead_agent_and_a_drain_request_restarts_nothing_unfenced(ctl: Harness) -> None:
    """(c) agent killed and libvirtd hung (its guests keep running), then a maintenance
    request. The lab policy lists `drain` before `restart-dead`: before the gate, the drain
    planned restarts of guests still running on the hung host (two copies)."""
    names = ctl.guests_on("labhost1", 2)
    faults.inject(ctl.cfg, "labhost1", "agent-kill", echo=lambda _m: None)
    faults.inject(ctl.cfg, "labhost1", "libvirt-stop", echo=lambda _m: None)
    ctl.store.put(KEYS.maintenance("labhost1"),
                  json.dumps({"host": "labhost1", "reason": "test", "requested_by": "test", "ts": time.time()}).encode())
    wait_for(lambda: ctl.events("fence.succeeded") or ctl.events("fence.failed"), 120, "a fence of labhost1")
    wait_for(lambda: _all_terminal(ctl) and all(ctl.where().get(n) for n in names), 300,
             "every guest to run again and every intent to end")
    _restarts_only_after_their_fence(ctl, "labhost1")
    where = ctl.assert_each_runs_once(names)
    assert "labhost1" not in where.values()
    _ticking(ctl, names)


def test_source_killed_during_a_slow_live_evacuation_every_vm_runs_again_once(clean_lab: LabConfig,
                                                                             tmp_path: Path) -> None:
    """(a) host-kill of the source while its (slowed) live evacuation migrates: before,
    the intents stayed `migrating` for ever and nothing was fenced or restarted."""
    policy = tmp_path / "slow.yaml"
    policy.write_text(LAB_POLICY.read_text().replace("bandwidth: {per_migration: 64MiB/s, total: 256MiB/s}",
                                                     "bandwidth: {per_migration: 4MiB/s, total: 16MiB/s}"))
    assert "4MiB/s" in policy.read_text()
    ctl = _start(clean_lab, policy)
    try:
        names = ctl.guests_on("labhost2", 3, memory=128, dirty=1)
        faults.inject(ctl.cfg, "labhost2", "memory-errors", echo=lambda _m: None)
        wait_for(lambda: ctl.events("migration.started"), 120, "the first migration to start", poll_s=0.1)
        time.sleep(0.7)
        faults.inject(ctl.cfg, "labhost2", "host-kill", echo=lambda _m: None)
        wait_for(lambda: ctl.events("incident.kind_changed"), 60, "the evacuation to become a recovery")
        wait_for(lambda: _all_terminal(ctl) and all(ctl.where().get(n) for n in names), 420,
                 "every guest to run again and every intent to end")
        _restarts_only_after_their_fence(ctl, "labhost2")
        where = ctl.assert_each_runs_once(names)
        assert "labhost2" not in where.values()
        _ticking(ctl, names)
        wait_for(lambda: all(i["phase"] == "closed" for i in ctl.incidents()), 120, "the incident to close")
    finally:
        _stop(clean_lab, ctl)


def test_two_drains_at_once_both_empty_their_hosts(ctl: Harness) -> None:
    """Case 9 / the lab observation "two drains at once": the first drain sends a guest to
    the host whose drain the controller has not seen yet. The second drain must plan again
    while its host holds VMs, so both hosts end empty and both incidents close."""
    # labhost2 and labhost3 hold one guest each: the first drain's placement spreads its two
    # guests over both (equal scores go by name), so one lands on the host drained next
    names = (ctl.guests_on("labhost1", 2, memory=96) + ctl.guests_on("labhost2", 1, memory=96)
             + ctl.guests_on("labhost3", 1, memory=96))

    def drain(host: str) -> None:
        ctl.store.put(KEYS.maintenance(host),
                      json.dumps({"host": host, "reason": "test", "requested_by": "test", "ts": time.time()}).encode())

    drain("labhost1")
    wait_for(lambda: [i for i in ctl.intents() if i["src"] == "labhost1"], 60, "the first drain's intents",
             poll_s=0.1)
    drain("labhost2")

    def settled() -> bool:
        where = ctl.where()
        empty = all(h not in ("labhost1", "labhost2") for n in names for h in where.get(n, ()))
        incs = ctl.incidents()
        return empty and _all_terminal(ctl) and len(incs) >= 2 and all(i["phase"] == "closed" for i in incs)

    wait_for(settled, 420, "both drained hosts to be empty and both incidents closed")
    where = ctl.assert_each_runs_once(names)
    assert set(where.values()) == {"labhost3"}
    its = ctl.intents()
    assert all(i["kind"] == "migrate" for i in its)
    # Whether the first drain's plan sent a guest to labhost2 before the second request was
    # seen depends on timing (it did in the helper's runs, not in a run at load ~6); when it
    # did, a later round moved that guest on: every guest is on labhost3, once, above.
    assert [i for i in its if i["src"] == "labhost2" and i["id"].endswith(("-r2", "-r3", "-r4"))], its
    _ticking(ctl, names)


def test_unreachable_rule_of_the_disaster_recovery_policy_migrates_live_never_restarts(clean_lab: LabConfig,
                                                                                      tmp_path: Path) -> None:
    """(c), second half: policies/disaster-recovery.yaml's `drain-unreachable` rule says
    live-migrate. Agent killed, libvirtd alive (the guests run): the VMs are moved live,
    nothing is fenced or restarted (before the gate they were planned as restarts)."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "policies" / "disaster-recovery.yaml").read_text()
    text = (text.replace("fence_agent: ipmi", "fence_agent: lab")  # the lab's power switch
                .replace("when: {state: unreachable, for: 60s}", "when: {state: unreachable, for: 3s}"))
    assert "fence_agent: lab" in text and "for: 3s" in text
    policy = tmp_path / "dr.yaml"
    policy.write_text(text)
    ctl = _start(clean_lab, policy)
    try:
        names = ctl.guests_on("labhost3", 2, memory=96)
        faults.inject(ctl.cfg, "labhost3", "agent-kill", echo=lambda _m: None)
        wait_for(lambda: _all_terminal(ctl) and len(ctl.intents()) == len(names), 240,
                 "the live evacuation of labhost3 to end")
        its = ctl.intents()
        assert all(i["kind"] == "migrate" and i["state"] == "done" for i in its), its
        assert not ctl.events("vm.restarted") and not ctl.events("fence.requested")
        where = ctl.assert_each_runs_once(names)
        assert "labhost3" not in where.values()
        _ticking(ctl, names)
    finally:
        _stop(clean_lab, ctl)
