"""Fencing a real lab host through the production command-agent path.

The lab's controllers are configured like production replicas with fence_ipmilan
(drctl/lab/controllers.py): `type: command`, the lab's fence agent in the fence-agents
convention, one `plug=` per host. These tests read that configuration back with the
production reader, fence through `CommandFenceAgent`, and check what arrived on the
agent's stdin (its call log) and that the host went off: its libvirtd, its QEMU guests
and its agent gone.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drctl.config.settings import load_config
from drctl.control.service import fence_agents
from drctl.fencing.agents import CommandFenceAgent, PowerState
from drctl.lab import agents as lab_agents
from drctl.lab import faults, guests
from drctl.lab.cluster import LabConfig, LabState, libvirt_responds, pid_alive, qemu_pids
from drctl.lab.controllers import controller_config
from drctl.lab.fence_agent import fault_path
from tests.integration.test_controller_lab import Harness, ctl, wait_for  # noqa: F401 - ctl: a fixture

pytestmark = pytest.mark.lab


def calls(cfg: LabConfig) -> list[dict]:
    import json

    path = cfg.dir / "fence" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def production_agent(cfg: LabConfig, tmp_path: Path) -> CommandFenceAgent:
    """The `lab` fence agent exactly as a lab controller builds it from its file."""
    conf = tmp_path / "controller.yaml"
    conf.write_text(yaml.safe_dump(controller_config(cfg, "ctl-t")))
    agent = fence_agents(load_config(conf))["lab"]
    assert isinstance(agent, CommandFenceAgent)
    return agent


def host_processes_alive(cfg: LabConfig, host: str) -> dict[str, bool]:
    state = LabState.load(cfg)
    rec = state.hosts[host]
    return {
        "libvirtd": pid_alive(rec.pid, "libvirtd"),
        "agent": pid_alive(state.extra_pids.get(lab_agents.agent_key(host), 0), lab_agents.agent_marker(host)),
        "guests": bool(qemu_pids(cfg, host)),
    }


def test_command_agent_powers_a_lab_host_off_and_on(clean_lab: LabConfig, tmp_path: Path) -> None:
    cfg = clean_lab
    guests.create(cfg, "fencevm", "labhost2", memory_mib=96)  # waits for its first tick
    agent = production_agent(cfg, tmp_path)
    seen = len(calls(cfg))
    assert agent.status("labhost2") is PowerState.ON
    assert host_processes_alive(cfg, "labhost2") == {"libvirtd": True, "agent": True, "guests": True}

    result = agent.off("labhost2")

    assert result.confirmed_off, result.detail
    assert host_processes_alive(cfg, "labhost2") == {"libvirtd": False, "agent": False, "guests": False}
    assert not libvirt_responds(LabState.load(cfg).hosts["labhost2"].uri, 2)
    received = [c for c in calls(cfg)[seen:] if c["phase"] == "received"]
    assert [c["action"] for c in received] == ["status", "off", "status"]
    assert received[1]["options"] == {"lab_dir": str(cfg.dir), "plug": "labhost2", "action": "off"}
    done = [c for c in calls(cfg)[seen:] if c["phase"] == "done" and c["action"] == "off"]
    assert done[0]["exit"] == 0 and "qemu fencevm" in done[0]["detail"]
    assert host_processes_alive(cfg, "labhost1")["libvirtd"]  # only the plugged host went off

    # `on` (not used by drctl, part of the convention): libvirtd and the agent come back,
    # the guest does not - a power cycle
    r = subprocess.run([sys.executable, "-m", "drctl.lab.fence_agent"], capture_output=True, text=True,
                       input=f"action=on\nplug=labhost2\nlab_dir={cfg.dir}\n", timeout=90)
    assert r.returncode == 0, r.stderr
    assert agent.status("labhost2") is PowerState.ON
    assert libvirt_responds(LabState.load(cfg).hosts["labhost2"].uri)
    assert host_processes_alive(cfg, "labhost2") == {"libvirtd": True, "agent": True, "guests": False}


def test_controller_fences_a_hung_host_with_the_lab_agent_and_restarts_its_guest(ctl: Harness) -> None:
    # agent gone and libvirtd hung: lease and witnesses say dead, but the guest still runs
    # until the fence agent, run by the leader through CommandFenceAgent, powers the host off
    names = ctl.guests_on("labhost2", 1)
    seen = len(calls(ctl.cfg))
    faults.inject(ctl.cfg, "labhost2", "libvirt-stop", echo=lambda _m: None)
    faults.inject(ctl.cfg, "labhost2", "agent-kill", echo=lambda _m: None)
    assert qemu_pids(ctl.cfg, "labhost2")  # the guest runs on: only a fence may stop it

    wait_for(lambda: ctl.events("fence.succeeded"), 90, "the fence")
    off = [c for c in calls(ctl.cfg)[seen:] if c["action"] == "off"]
    assert off and off[0]["phase"] == "received"
    assert off[0]["options"] == {"lab_dir": str(ctl.cfg.dir), "plug": "labhost2", "action": "off"}
    assert off[-1]["phase"] == "done" and off[-1]["exit"] == 0 and "qemu" in off[-1]["detail"]
    assert not qemu_pids(ctl.cfg, "labhost2")
    wait_for(lambda: ctl.events("vm.restarted"), 120, "the restart elsewhere")
    where = wait_for(lambda: (w := ctl.where()) and all(len(w.get(n, ())) == 1 for n in names) and w,
                     60, "the guest running once")
    assert where[names[0]] != ("labhost2",)  # type: ignore[index]
    guests.wait_ticking(guests.console_path(ctl.cfg, names[0]), 60)


def test_fence_fail_makes_the_controller_ask_a_human(ctl: Harness) -> None:
    names = ctl.guests_on("labhost3", 1)
    faults.inject(ctl.cfg, "labhost3", "fence-fail", echo=lambda _m: None)
    try:
        faults.inject(ctl.cfg, "labhost3", "host-kill", echo=lambda _m: None)
        failed = wait_for(lambda: ctl.events("fence.failed"), 90, "the fence attempt")
        assert "fence device unreachable" in failed[0]["error"]  # type: ignore[index]
        wait_for(lambda: any(i["phase"] == "needs-human" for i in ctl.incidents()), 30, "needs-human")
        assert not ctl.events("vm.restarted") and not any(ctl.where().get(n) for n in names)
    finally:
        fault_path(ctl.cfg.dir, "labhost3").unlink(missing_ok=True)
