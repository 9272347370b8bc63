"""Issue 12 case 0 on the lab: five hosts, the shipped witness setting (2 per agent), two
controller replicas, one guest, host-kill. Before the quorum was defined over a host's own
witnesses the controller said `only 2 witnesses confirm, quorum is 3` and never restarted
the guest. The test grows the lab to five hosts and shrinks it back to the session's size
(hosts, agents, relays and their etcd records), so the tests after it see the lab as before."""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from drctl.lab import cluster, faults, guests
from drctl.lab.agents import agent_key, relay_key
from drctl.lab.cluster import LabConfig, LabState, stop_host, stop_pid
from drctl.lab.guest import last_tick
from drctl.lab.controllers import forget_decisions, reset_controller_state, start_controllers, stop_controllers
from drctl.store.keys import Keys
from tests.integration.test_controller_lab import Harness, wait_for
from tests.lab_fixtures import LAB_HOSTS

pytestmark = pytest.mark.lab
KEYS = Keys()
HOSTS = 5


def _shrink(cfg: LabConfig, harness: Harness, keep: int) -> None:
    """Stop the hosts above `keep` with their agents and relays; forget their records."""
    state = LabState.load(cfg)
    for name, rec in sorted(state.hosts.items()):
        if rec.n <= keep:
            continue
        for key in (agent_key(name), relay_key(name)):
            pid = state.extra_pids.pop(key, 0)
            if pid:
                stop_pid(pid)
        stop_host(cfg, rec)
        del state.hosts[name]
        harness.store.delete_prefix(KEYS.host_prefix(name))
    state.save(cfg)


@pytest.fixture
def five(clean_lab: LabConfig) -> Iterator[Harness]:
    cfg = clean_lab
    cluster.up(cfg, HOSTS, install=False, echo=lambda _m: None)
    h = Harness(cfg)
    reset_controller_state(cfg)
    start_controllers(cfg, LabState.load(cfg), 2, echo=lambda _m: None)
    wait_for(h.leader, 30, "a leader")
    try:
        yield h
    finally:
        try:
            stop_controllers(cfg)
            faults.inject(cfg, "labhost1", "clear", echo=lambda _m: None)
            cluster.up(cfg, HOSTS, install=False, echo=lambda _m: None)  # the killed host back, to delete on it
            for name in [g.name for g in guests.locate_all(cfg)]:
                guests.delete(cfg, name)
        finally:
            _shrink(cfg, h, LAB_HOSTS)
            forget_decisions(cfg)
            h.close()


def test_five_hosts_a_killed_host_is_declared_dead_and_its_guest_restarted(five: Harness) -> None:
    (name,) = five.guests_on("labhost1", 1)
    killed = time.monotonic()
    faults.inject(five.cfg, "labhost1", "host-kill", echo=lambda _m: None)
    wait_for(lambda: [e for e in five.events("host.state_changed") if e["host"] == "labhost1" and e["to"] == "dead"],
             30, "labhost1 to be declared dead")
    dead_after = time.monotonic() - killed
    wait_for(lambda: five.where().get(name, ()) and "labhost1" not in five.where()[name], 120,
             f"{name} to run again on another host")
    running_after = time.monotonic() - killed
    five.assert_each_runs_once([name])
    console = guests.console_path(five.cfg, name)

    def ticks_since_restart() -> bool:  # a fresh boot: its uptime is shorter than the time since the kill
        t = last_tick(console)
        return t is not None and t.uptime_s < time.monotonic() - killed

    wait_for(ticks_since_restart, 120, f"{name} to tick after its restart")
    assert [e["vm"] for e in five.events("vm.restarted")] == [name]
    print(f"labhost1 dead after {dead_after:.1f}s, {name} running elsewhere after {running_after:.1f}s")
