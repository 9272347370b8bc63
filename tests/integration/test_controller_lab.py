"""The controller on the real lab: real etcd, libvirt hosts with their agents, real TCG
guests, two controller replicas as processes (`drctl controller`), faults injected the
way `drctl lab inject` does.

Each test asserts the outcome the product promises (every VM runs exactly once, nothing
restarted without proof, nothing moved while frozen) and reads the audit trail for what
the controller decided; timing margins are generous for 2 shared cores under TCG.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from drctl.lab import faults, guests
from drctl.lab.cluster import LabConfig, LabState
from drctl.lab.controllers import (
    LAB_POLICY,
    controller_dir,
    controller_key,
    forget_decisions,
    guest_health_config,
    reset_controller_state,
    start_controllers,
    stop_controllers,
)
from drctl.store.etcd import EtcdStore
from drctl.store.keys import Keys

pytestmark = pytest.mark.lab
KEYS = Keys()
HOSTS = ("labhost1", "labhost2", "labhost3")


def wait_for(pred: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.25) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


class Harness:
    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.store = EtcdStore([cfg.etcd_endpoint], timeout=3)

    # ------------------------------------------------------------ state
    def audit(self) -> list[dict]:
        lines = []
        for f in sorted((self.cfg.dir / "controllers").glob("ctl-*/audit.jsonl")):
            for line in f.read_text().splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return sorted(lines, key=lambda e: e["ts"])

    def events(self, name: str) -> list[dict]:
        return [e for e in self.audit() if e.get("event") == name]

    def where(self) -> dict[str, tuple[str, ...]]:
        return {g.name: g.hosts for g in guests.locate_all(self.cfg)}

    def defined(self) -> dict[str, tuple[str, ...]]:
        return {g.name: g.defined_on for g in guests.locate_all(self.cfg)}

    def intents(self) -> list[dict]:
        kvs, _ = self.store.get_prefix(KEYS.intents_prefix())
        return [json.loads(kv.value) for kv in kvs]

    def incidents(self) -> list[dict]:
        kvs, _ = self.store.get_prefix(KEYS.incidents_prefix())
        return [json.loads(kv.value) for kv in kvs]

    def leader(self) -> str | None:
        kvs, _ = self.store.get_prefix(KEYS.leader_prefix())
        if not kvs:
            return None
        return json.loads(min(kvs, key=lambda kv: kv.create_revision).value)["name"]

    def controller_pid(self, name: str) -> int:
        return LabState.load(self.cfg).extra_pids.get(controller_key(name), 0)

    def guests_on(self, host: str, n: int, memory: int = 128, dirty: int = 1) -> list[str]:
        names = [f"{host[-1]}vm{i}" for i in range(1, n + 1)]
        for name in names:
            guests.create(self.cfg, name, host, memory_mib=memory, dirty_mib=dirty, wait=False)
        for name in names:
            guests.wait_ticking(guests.console_path(self.cfg, name), timeout_s=120)
        wait_for(lambda: all(self._published(n) for n in names), 60, "agents to publish the new VMs")
        return names

    def _published(self, vm: str) -> bool:
        return self.store.get(KEYS.vm_definition(vm)) is not None

    def assert_each_runs_once(self, names: list[str]) -> dict[str, str]:
        where = self.where()
        for name in names:
            assert len(where.get(name, ())) == 1, f"{name} runs on {where.get(name)}"
        return {n: where[n][0] for n in names}

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def ctl(clean_lab: LabConfig) -> Iterator[Harness]:
    """The lab with every host healthy, no guests, no controller state, two replicas."""
    cfg = clean_lab
    for host in HOSTS:
        faults.inject(cfg, host, "clear", echo=lambda _m: None)
    h = Harness(cfg)
    reset_controller_state(cfg)
    state = LabState.load(cfg)
    start_controllers(cfg, state, 2, echo=lambda _m: None)
    wait_for(h.leader, 30, "a leader")
    yield h
    stop_controllers(cfg)
    for host in HOSTS:
        faults.inject(cfg, host, "clear", echo=lambda _m: None)
    forget_decisions(cfg)
    h.close()


def test_degraded_host_is_evacuated_live_and_the_incident_closes(ctl: Harness) -> None:
    names = ctl.guests_on("labhost1", 2)
    faults.inject(ctl.cfg, "labhost1", "memory-errors", echo=lambda _m: None)
    wait_for(lambda: ctl.events("incident.closed"), 180, "the evacuation to finish")
    where = ctl.assert_each_runs_once(names)
    assert "labhost1" not in where.values()
    done = [i for i in ctl.intents() if i["state"] == "done"]
    assert sorted(i["vm"] for i in done) == names
    assert all(i["kind"] == "migrate" for i in done)
    for name in names:
        guests.wait_ticking(guests.console_path(ctl.cfg, name), 30,
                            after=guests.last_tick(guests.console_path(ctl.cfg, name)).count)  # type: ignore[union-attr]


def test_leader_killed_mid_evacuation_new_leader_finishes_no_intent_twice(ctl: Harness) -> None:
    names = ctl.guests_on("labhost1", 6, memory=96, dirty=1)
    first = ctl.leader()
    assert first is not None
    faults.inject(ctl.cfg, "labhost1", "memory-errors", echo=lambda _m: None)
    wait_for(lambda: any(i["state"] in ("migrating", "verifying", "done") for i in ctl.intents()), 120,
             "the first migration to start")
    os.kill(ctl.controller_pid(first), signal.SIGKILL)
    wait_for(lambda: ctl.leader() not in (None, first), 30, "a new leader")
    wait_for(lambda: len(ctl.intents()) == 6 and all(i["state"] in ("done", "failed") for i in ctl.intents()),
             400, "every intent to finish")
    where = ctl.assert_each_runs_once(names)
    assert "labhost1" not in where.values()
    # no intent ran twice: one pending->checking... per destination attempt, and exactly
    # one arrival (vm.verified ok) per VM
    verified = [e for e in ctl.events("vm.verified") if e.get("ok")]
    assert sorted(e["vm"] for e in verified) == sorted(names)
    ids = [i["id"] for i in ctl.intents()]
    assert len(ids) == len(set(ids)) == 6  # adopted, not re-planned


def test_dead_host_restarted_elsewhere_once_and_never_again_on_its_return(ctl: Harness) -> None:
    names = ctl.guests_on("labhost2", 2)
    faults.inject(ctl.cfg, "labhost2", "host-kill", echo=lambda _m: None)
    wait_for(lambda: ctl.events("incident.closed"), 240, "recovery to finish")
    where = ctl.assert_each_runs_once(names)
    assert "labhost2" not in where.values()
    fenced = ctl.events("fence.succeeded")
    assert [e["host"] for e in fenced] == ["labhost2"]
    restarts = ctl.events("vm.restarted")
    assert sorted(e["vm"] for e in restarts) == names  # exactly once each
    # the host comes back: its old, fenced copies must not run there, and are undefined
    faults.inject(ctl.cfg, "labhost2", "clear", echo=lambda _m: None)
    wait_for(lambda: all("labhost2" not in ctl.defined().get(n, ()) for n in names), 90,
             "the stale copies on labhost2 to be removed")
    assert ctl.assert_each_runs_once(names) == where


def test_host_only_cut_off_from_etcd_is_not_restarted(ctl: Harness) -> None:
    names = ctl.guests_on("labhost3", 1)
    before = ctl.where()
    faults.inject(ctl.cfg, "labhost3", "partition", echo=lambda _m: None)
    time.sleep(15)  # well past the lease TTL (2 s): the agent's records are gone
    assert not ctl.events("vm.restarted") and not ctl.events("fence.requested")
    assert ctl.where() == before
    ctl.assert_each_runs_once(names)


def test_failing_fence_agent_restarts_nothing_and_asks_a_human(ctl: Harness, tmp_path: Path) -> None:
    # a replica whose only fence agent always fails, alone (the good replicas stopped)
    stop_controllers(ctl.cfg)
    wait_for(lambda: ctl.leader() is None, 30, "the replicas' election keys to lapse")
    bad = tmp_path / "fence_fail"
    bad.write_text("#!/bin/sh\ncat >/dev/null\necho 'BMC unreachable' >&2\nexit 1\n")
    bad.chmod(0o755)
    policy = tmp_path / "policy.yaml"
    policy.write_text(LAB_POLICY.read_text().replace("fence_agent: lab", "fence_agent: ipmi"))
    conf = tmp_path / "ctl.yaml"
    conf.write_text(json.dumps({
        "etcd": {"endpoints": [ctl.cfg.etcd_endpoint], "prefix": "/drctl/"},
        "controller": {"name": "ctl-x", "policy": str(policy), "lease_ttl": "2s",
                       "audit_file": str(controller_dir(ctl.cfg, "ctl-x") / "audit.jsonl"),
                       "guest_health": guest_health_config(ctl.cfg),
                       "fence_agents": {"ipmi": {"type": "command", "command": [str(bad)]}}},
    }))
    controller_dir(ctl.cfg, "ctl-x").mkdir(parents=True, exist_ok=True)
    names = ctl.guests_on("labhost2", 1)
    proc = subprocess.Popen([sys.executable, "-m", "drctl.cli.main", "controller", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: ctl.leader() == "ctl-x", 30, "ctl-x to lead")
        faults.inject(ctl.cfg, "labhost2", "host-kill", echo=lambda _m: None)
        failed = wait_for(lambda: ctl.events("fence.failed"), 60, "the fence attempt")
        assert "BMC unreachable" in failed[0]["error"]  # type: ignore[index]
        wait_for(lambda: any(i["phase"] == "needs-human" for i in ctl.incidents()), 10, "needs-human")
        time.sleep(5)
        assert not ctl.events("vm.restarted") and ctl.intents() == []
        assert not any(ctl.where().get(n) for n in names)  # still down, not run elsewhere
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_two_hosts_in_trouble_at_once_freeze_with_blast_radius_one(ctl: Harness) -> None:
    names = ctl.guests_on("labhost1", 1) + ctl.guests_on("labhost2", 1)
    before = ctl.where()
    for host in ("labhost1", "labhost2"):
        faults.inject(ctl.cfg, host, "partition", echo=lambda _m: None)
    froze = wait_for(lambda: ctl.events("controller.froze"), 60, "the freeze")
    assert "blast radius of 1" in froze[0]["reason"]  # type: ignore[index]
    time.sleep(5)
    assert ctl.intents() == [] and not ctl.events("fence.requested")
    assert ctl.where() == before
    for host in ("labhost1", "labhost2"):
        faults.inject(ctl.cfg, host, "clear", echo=lambda _m: None)
    wait_for(lambda: ctl.events("controller.resumed"), 60, "the controller to resume")
    ctl.assert_each_runs_once(names)


def test_drain_empties_host_with_live_migrations_and_undrain_reopens_it(ctl: Harness) -> None:
    names = ctl.guests_on("labhost3", 4, memory=96, dirty=1)
    base = [sys.executable, "-m", "drctl.cli.main"]
    r = subprocess.run([*base, "drain", "labhost3", "--etcd", ctl.cfg.etcd_endpoint, "--timeout", "400"],
                       capture_output=True, text=True, timeout=450)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "labhost3 is empty" in r.stdout
    where = ctl.assert_each_runs_once(names)
    assert "labhost3" not in where.values()
    assert all(i["kind"] == "migrate" and i["state"] == "done" for i in ctl.intents())
    r = subprocess.run([*base, "undrain", "labhost3", "--etcd", ctl.cfg.etcd_endpoint],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "maintenance ended" in r.stdout
    # eligible again: a degraded labhost1 now evacuates onto labhost3 too
    faults.inject(ctl.cfg, "labhost1", "memory-errors", echo=lambda _m: None)
    wait_for(lambda: [i for i in ctl.intents() if i["src"] == "labhost1" and i["state"] == "done"], 240,
             "labhost1 evacuated")
    dsts = {i["dst"] for i in ctl.intents() if i["src"] == "labhost1"}
    assert "labhost3" in dsts


def test_deposed_leader_paused_past_its_lease_gets_no_write_accepted(ctl: Harness) -> None:
    names = ctl.guests_on("labhost1", 1)
    old = ctl.leader()
    assert old is not None
    old_pid = ctl.controller_pid(old)
    os.kill(old_pid, signal.SIGSTOP)  # frozen mid-whatever, its lease runs out
    try:
        new = wait_for(lambda: ctl.leader() not in (None, old) and ctl.leader(), 30, "a new leader")
        # while the old leader is frozen, a host degrades: the new leader acts on it
        faults.inject(ctl.cfg, "labhost1", "memory-errors", echo=lambda _m: None)
        wait_for(lambda: ctl.intents(), 60, "the new leader's intents")
    finally:
        os.kill(old_pid, signal.SIGCONT)
    wait_for(lambda: [e for e in ctl.events("controller.deposed") if e["component"] == f"controller:{old}"], 30,
             "the old leader to notice it was deposed")
    wait_for(lambda: ctl.events("incident.closed"), 180, "the evacuation to finish")
    terms = {e["term"] for e in ctl.events("controller.elected") if e["component"] == f"controller:{new}"}
    assert {i["term"] for i in ctl.intents()} <= terms  # every intent written under the new term
    stale = [e for e in ctl.audit() if e["component"] == f"controller:{old}"
             and e["event"] in ("incident.opened", "intent.created", "incident.closed")]
    assert stale == []  # the old leader wrote nothing after (or before) its pause
    ctl.assert_each_runs_once(names)
