"""Issue 12 on the real lab: a fenced host that returns (cases 3 and 11, acceptance test d)
and a guest that dies on a healthy host (case 7, the lab observation "a guest left stopped
on a healthy host").

Each test checks afterwards, with libvirt on every host, that every guest runs exactly
once and still ticks, and that every intent is terminal.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from drctl.hypervisor.libvirt_adapter import connect
from drctl.lab import cluster, faults, guests
from drctl.lab.cluster import LabConfig
from drctl.lab.guest import last_tick
from drctl.model.records import parse_definition
from tests.integration.test_controller_lab import Harness, ctl, wait_for  # noqa: F401 - ctl is a fixture

pytestmark = pytest.mark.lab


def _quiet(_m: str) -> None:
    pass


@pytest.fixture
def own_agents(clean_lab: LabConfig) -> LabConfig:
    """Agents running this tree's code (a lab kept from an earlier run keeps its agents):
    the tests need agents that publish the state reason and check copies on start-up."""
    for host in sorted(guests.host_uris(clean_lab)):
        faults.inject(clean_lab, host, "agent-kill", echo=_quiet)
    cluster.up(clean_lab, 3, install=False, echo=_quiet)
    return clean_lab


def _all_terminal(h: Harness) -> bool:
    return all(i["state"] in ("done", "failed", "cancelled") for i in h.intents())


def _check_end_state(h: Harness, names: list[str], since: float) -> dict[str, str]:
    """Every guest once on libvirt of every host, ticking after `since`; every intent terminal."""
    wait_for(lambda: _all_terminal(h), 120, "every intent to be terminal")
    where = h.assert_each_runs_once(names)
    for name in names:
        console = guests.console_path(h.cfg, name)
        before = last_tick(console)
        assert before is not None, f"{name} never ticked"
        guests.wait_ticking(console, timeout_s=60, after=before.count)
    assert not [i for i in h.intents() if i["state"] not in ("done", "failed", "cancelled")]
    return where


def _agent_events(h: Harness, host: str, name: str) -> list[dict]:
    import json

    from drctl.lab.agents import agent_dir

    path = agent_dir(h.cfg, host) / "audit.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == name:
            out.append(e)
    return out


def _definition_host(h: Harness, vm: str) -> str | None:
    from drctl.store.keys import Keys

    kv = h.store.get(Keys().vm_definition(vm))
    return None if kv is None else parse_definition(kv.key, kv.value, vm).host


def test_returned_host_then_new_host_dies_second_restart_succeeds_no_duplicate(own_agents: LabConfig,
                                                                               ctl: Harness) -> None:  # noqa: F811
    """(d): labhost2's guests are restarted elsewhere; labhost2 returns (one guest with
    autostart set, so libvirtd starts its stale copy at once); then the host the first guest
    now runs on dies: it is restarted again (its definition survived the return)."""
    h = ctl
    t0 = time.monotonic()
    names = h.guests_on("labhost2", 2)
    uri2 = guests.host_uris(h.cfg)["labhost2"]
    hv = connect(uri2, timeout_s=10)
    try:
        hv.set_autostart(names[0], True)
        assert hv.autostart(names[0])
    finally:
        hv.close()
    faults.inject(h.cfg, "labhost2", "host-kill", echo=_quiet)
    wait_for(lambda: sorted(e["vm"] for e in h.events("vm.restarted")) == names, 240, "both guests restarted")
    wait_for(lambda: all(h.where().get(n) for n in names), 60, "both guests running")
    first = h.assert_each_runs_once(names)
    assert "labhost2" not in first.values()

    # labhost2 returns: libvirtd autostarts names[0]'s stale copy, its fresh agent stops it
    cluster.up(h.cfg, 3, install=False, echo=_quiet)
    wait_for(lambda: all("labhost2" not in h.defined().get(n, ()) for n in names), 120,
             "the stale copies on labhost2 to be removed")
    assert h.assert_each_runs_once(names) == first  # no duplicate left, nothing moved
    stale = [e for e in _agent_events(h, "labhost2", "agent.stale_copy") if e["vm"] == names[0]]
    assert stale and "autostart off" in stale[-1]["actions"], stale
    print(f"stale copy of {names[0]} on labhost2: {stale[-1]['state']}, {stale[-1]['actions']}")
    for n in names:  # the returned host did not delete the records (the new host's agent may
        assert _definition_host(h, n) is not None, f"{n}: no stored definition"  # not have published yet)
    time.sleep(12)  # past one inventory round of every agent, the returned one included
    for n in names:
        assert _definition_host(h, n) == first[n], f"{n}: definition record names {_definition_host(h, n)}"

    # the host names[0] now runs on dies: the second restart needs the stored definition
    victim = first[names[0]]
    restarted_before = len(h.events("vm.restarted"))
    wait_for(lambda: not [i for i in h.incidents() if i["phase"] != "closed"], 120, "the first incident to close")
    faults.inject(h.cfg, victim, "host-kill", echo=_quiet)
    wait_for(lambda: len(h.events("vm.restarted")) > restarted_before, 240, f"{names[0]} restarted again")
    wait_for(lambda: h.where().get(names[0]) and victim not in h.where()[names[0]], 60, f"{names[0]} running again")
    failures = [i for i in h.intents() if i["state"] == "failed"]
    assert not failures, failures
    cluster.up(h.cfg, 3, install=False, echo=_quiet)  # the victim returns too: still no duplicate
    wait_for(lambda: all(victim not in h.defined().get(n, ()) or h.where().get(n) == (victim,) for n in names), 120,
             f"the stale copies on {victim} to be removed")
    where = _check_end_state(h, names, t0)
    assert victim not in where[names[0]]


def test_guest_whose_qemu_dies_on_a_healthy_host_is_started_again_once(own_agents: LabConfig,
                                                                       ctl: Harness) -> None:  # noqa: F811
    """Case 7 / the lab observation: a guest shut off on a healthy host, nobody asked for
    it (QEMU SIGKILLed: libvirt says `crashed`), is started again there, once."""
    h = ctl
    names = h.guests_on("labhost1", 2)
    victim = names[0]
    pid = cluster.qemu_pids(h.cfg, "labhost1")[victim]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: h.events("vm.started_again"), 90, f"{victim} to be started again")
    console = guests.console_path(h.cfg, victim)

    def fresh_boot() -> bool:
        t = last_tick(console)
        return t is not None and t.uptime_s < time.monotonic() - killed

    wait_for(fresh_boot, 120, f"{victim} to tick after its start")
    where = _check_end_state(h, names, killed)
    assert where == {n: "labhost1" for n in names}
    starts = [i for i in h.intents() if i["kind"] == "start"]
    assert [(i["vm"], i["dst"], i["state"]) for i in starts] == [(victim, "labhost1", "done")]
    assert [e["vm"] for e in h.events("vm.stopped_unrequested")] == [victim]
    assert not h.events("vm.restarted")  # not treated as a dead host
    # an operator's `virsh destroy` is a request: left stopped
    hv = connect(guests.host_uris(h.cfg)["labhost1"], timeout_s=10)
    try:
        hv.destroy(names[1])
    finally:
        hv.close()
    time.sleep(25)  # two inventory rounds and many ticks
    assert [i["vm"] for i in h.intents() if i["kind"] == "start"] == [victim]
    assert h.where().get(names[1]) in (None, ())
