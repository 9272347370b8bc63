"""The lab's fence agent (drctl/lab/fence_agent.py): the fence-agents convention (options
on stdin, actions, exit codes), driven as a real command, and through the production
command-agent path (`make_agent` from a `type: command` configuration).

The lab here is a directory with a lab.json naming stand-in processes for one host's
libvirtd, QEMU guest, agent and relay (plain sleepers whose command lines carry the
markers the lab checks), so "power" can be switched off for real without root or libvirt;
tests/integration/test_fence_agent_lab.py does the same to a real lab host.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from drctl.fencing.agents import CommandFenceAgent, PowerState, make_agent
from drctl.lab import fence_agent as fa
from drctl.lab.agents import agent_key, agent_marker, relay_key, relay_marker
from drctl.lab.cluster import HostRecord, LabConfig, LabState, pid_alive
from drctl.lab.faults import inject
from drctl.model.errors import ConfigError

AGENT = [sys.executable, "-m", "drctl.lab.fence_agent"]


class FakeHost:
    """One lab host whose processes are sleepers carrying the lab's command-line markers."""

    def __init__(self, lab_dir: Path, name: str = "labhost1") -> None:
        self.cfg = LabConfig(dir=lab_dir)
        self.name = name
        rec = HostRecord(name, 1, "127.0.9.1", "qemu+tcp://127.0.9.1:16509/system", "u-1")
        self.procs: list[subprocess.Popen[bytes]] = []
        rec.pid = self._sleeper("libvirtd")
        state = LabState(hosts={name: rec})
        state.extra_pids[agent_key(name)] = self._sleeper(*agent_marker(name).split())
        state.extra_pids[relay_key(name)] = self._sleeper(*relay_marker(self.cfg, rec).split())
        state.save(self.cfg)
        qemu = lab_dir / "hosts" / name / "run" / "qemu"
        qemu.mkdir(parents=True)
        (qemu / "vm1.pid").write_text(f"{self._sleeper('qemu-system-x86_64', 'vm1')}\n")
        self.state = state

    def _sleeper(self, *marker: str) -> int:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *marker])
        self.procs.append(p)
        return p.pid

    def alive(self) -> list[bool]:
        for p in self.procs:
            p.poll()  # reap what was killed: a zombie is not running
        return [pid_alive(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    h = FakeHost(tmp_path / "lab")
    yield h
    h.stop()


def agent(stdin: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(AGENT, input=stdin, capture_output=True, text=True, timeout=timeout)


def calls(lab_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (lab_dir / "fence" / "calls.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ parsing


def test_options_are_name_value_lines_comments_and_blanks_skipped_later_lines_win() -> None:
    text = "# from drctl\n\naction=status\nplug = labhost2 \naction=off\npassword=s3=cret\n"
    assert fa.parse_options(text) == {"action": "off", "plug": "labhost2", "password": "s3=cret"}


def test_a_line_without_equals_is_refused_with_its_line_number() -> None:
    with pytest.raises(fa.Usage, match="stdin line 2: expected name=value"):
        fa.parse_options("action=off\nlabhost1\n")


@pytest.mark.parametrize("opts, want", [
    ({"action": "off", "plug": "h1"}, ("off", "h1")),
    ({"option": "status", "port": "h2"}, ("status", "h2")),  # old spellings fence-agents accept
    ({"action": "reboot", "nodename": "h3", "ipaddr": "10.0.0.1"}, ("reboot", "h3")),
    ({"action": "monitor"}, ("monitor", "")),
])
def test_request_reads_action_and_plug_under_every_spelling(opts: dict, want: tuple) -> None:
    req = fa.request(opts, {"DRCTL_LAB_DIR": "/srv/lab"})
    assert (req.action, req.plug, req.lab_dir) == (*want, Path("/srv/lab"))


@pytest.mark.parametrize("opts, message", [
    ({"plug": "h1"}, "action='': expected one of off, on, reboot, status, monitor, list"),
    ({"action": "destroy", "plug": "h1"}, "action='destroy'"),
    ({"action": "off"}, "action=off needs plug="),
])
def test_bad_requests_are_refused(opts: dict, message: str) -> None:
    with pytest.raises(fa.Usage, match=message):
        fa.request(opts, {})


def test_passwords_are_masked_in_the_log() -> None:
    assert fa.masked({"login": "admin", "password": "x", "passwd": "y"}) == {
        "login": "admin", "password": "***", "passwd": "***"}


# ------------------------------------------------------------------ the command, exit codes


def test_usage_errors_exit_1_with_one_line_on_stderr() -> None:
    r = agent("action=off\n")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "drctl-lab-fence: action=off needs plug= (the lab host, e.g. labhost1)"]


def test_no_lab_is_a_failure(tmp_path: Path) -> None:
    r = agent(f"action=status\nplug=labhost1\nlab_dir={tmp_path}\n")
    assert r.returncode == 1 and "no lab at" in r.stderr


def test_status_off_status_on_and_the_call_log(host: FakeHost) -> None:
    lab = host.cfg.dir
    assert agent(f"action=status\nplug=labhost1\nlab_dir={lab}\n").returncode == fa.ON
    assert agent(f"action=status\nplug=labhost9\nlab_dir={lab}\n").returncode == fa.FAILURE  # not a lab host
    r = agent(f"action=off\nplug=labhost1\nlab_dir={lab}\nlogin=admin\npassword=secret\n")
    assert r.returncode == fa.SUCCESS, r.stderr
    assert "killed qemu vm1, libvirtd, agent, relay" in r.stdout
    assert host.alive() == [False] * 4  # libvirtd, agent, relay, guest: all gone
    assert agent(f"action=status\nplug=labhost1\nlab_dir={lab}\n").returncode == fa.OFF
    # off again is still success (fencing is idempotent) and kills nothing
    r = agent(f"action=off\nplug=labhost1\nlab_dir={lab}\n")
    assert r.returncode == fa.SUCCESS and "nothing (already off)" in r.stdout
    log = calls(lab)
    off = [c for c in log if c["action"] == "off"]
    assert off[0]["phase"] == "received" and off[0]["options"] == {
        "action": "off", "plug": "labhost1", "lab_dir": str(lab), "login": "admin", "password": "***"}
    assert off[1]["phase"] == "done" and off[1]["exit"] == 0
    assert "secret" not in (lab / "fence" / "calls.jsonl").read_text()


def test_monitor_and_list(host: FakeHost) -> None:
    lab = host.cfg.dir
    assert agent(f"action=monitor\nlab_dir={lab}\n").returncode == 0
    r = agent(f"action=list\nlab_dir={lab}\n")
    assert r.returncode == 0 and r.stdout.splitlines() == ["labhost1,"]


def test_the_relay_alone_does_not_count_as_power(host: FakeHost) -> None:
    # the relay is the host's network; with libvirtd, guests and agent gone the host is off
    for p in host.procs[:2] + host.procs[3:]:
        p.kill()
        p.wait()
    assert host.alive() == [False, False, True, False]
    assert agent(f"action=status\nplug=labhost1\nlab_dir={host.cfg.dir}\n").returncode == fa.OFF


# ------------------------------------------------------------------ injected agent faults


def test_fence_fail_fails_every_action_and_leaves_the_host_on(host: FakeHost) -> None:
    inject(host.cfg, "labhost1", "fence-fail", echo=lambda _m: None)
    lab = host.cfg.dir
    for action in ("status", "off"):
        r = agent(f"action={action}\nplug=labhost1\nlab_dir={lab}\n")
        assert r.returncode == 1 and "fence device unreachable" in r.stderr
    assert all(host.alive())


def test_fence_slow_delays_off_but_not_status(host: FakeHost) -> None:
    lab = host.cfg.dir
    # status is never delayed: with a 600 s delay in force it still answers within the
    # subprocess timeout (a bound on a delay, not a speed measurement, so load cannot fail it)
    inject(host.cfg, "labhost1", "fence-slow", echo=lambda _m: None, seconds=600)
    assert agent(f"action=status\nplug=labhost1\nlab_dir={lab}\n", timeout=60).returncode == fa.ON
    inject(host.cfg, "labhost1", "fence-slow", echo=lambda _m: None, seconds=1.5)
    t0 = time.monotonic()
    assert agent(f"action=off\nplug=labhost1\nlab_dir={lab}\n").returncode == fa.SUCCESS
    assert time.monotonic() - t0 >= 1.5
    assert host.alive() == [False] * 4


def test_inject_refuses_seconds_for_other_faults_and_unknown_hosts(host: FakeHost) -> None:
    with pytest.raises(ConfigError, match="fence-fail takes no SECONDS"):
        inject(host.cfg, "labhost1", "fence-fail", echo=lambda _m: None, seconds=3)
    with pytest.raises(ConfigError, match="unknown lab host 'etcd'"):
        inject(host.cfg, "etcd", "fence-fail", echo=lambda _m: None)
    assert not fa.fault_path(host.cfg.dir, "labhost1").exists()


# ------------------------------------------------------------------ the production path


def test_the_production_command_agent_fences_a_lab_host(host: FakeHost) -> None:
    # exactly what `drctl lab up --controllers N` configures (drctl/lab/controllers.py)
    from drctl.lab.controllers import fence_agent_config

    spec = fence_agent_config(host.cfg, ["labhost1"])
    spec["timeout_s"] = 30.0
    lab_agent = make_agent("lab", spec)
    assert isinstance(lab_agent, CommandFenceAgent)
    assert lab_agent.status("labhost1") is PowerState.ON
    result = lab_agent.off("labhost1")
    assert result.confirmed_off, result.detail
    assert lab_agent.status("labhost1") is PowerState.OFF
    assert host.alive() == [False] * 4
    received = [c for c in calls(host.cfg.dir) if c["phase"] == "received"]
    assert [c["action"] for c in received] == ["status", "off", "status", "status"]
    assert received[1]["options"] == {"lab_dir": str(host.cfg.dir), "plug": "labhost1", "action": "off"}


def test_the_production_command_agent_reports_a_failing_lab_agent(host: FakeHost) -> None:
    from drctl.lab.controllers import fence_agent_config

    inject(host.cfg, "labhost1", "fence-fail", echo=lambda _m: None)
    result = make_agent("lab", fence_agent_config(host.cfg, ["labhost1"])).off("labhost1")
    assert not result.confirmed_off and "off exited 1" in result.detail
    assert "fence device unreachable" in result.detail


def test_run_in_process_prints_list_lines(host: FakeHost) -> None:
    out, err = io.StringIO(), io.StringIO()
    rc = fa.run(io.StringIO(f"action=list\nlab_dir={host.cfg.dir}\n"), out, err, {})
    assert rc == 0 and out.getvalue() == "labhost1,\n" and err.getvalue() == ""


def test_the_agent_powers_a_host_on_with_the_labs_own_ports(tmp_path: Path) -> None:
    # Found by a full lab run: `on` rebuilt the lab's configuration from its directory alone,
    # so the test lab's host came back with a relay to etcd's default port 2379 instead of
    # the lab's 23791, stayed unreachable, and froze every later test on the blast radius.
    from drctl.lab.cluster import LabConfig, LabState, lab_config_of

    cfg = LabConfig(dir=tmp_path, etcd_port=23791, etcd_peer_port=23801, addr_prefix="127.0.2",
                    migration_port_base=50152)
    LabState().save(cfg)
    assert lab_config_of(tmp_path) == cfg
    assert fa.Lab(tmp_path).cfg == cfg
