"""Health watchers on the real lab: real etcd, real libvirtd per host, one agent per host
behind its own etcd relay. Every fault is injected with `drctl lab inject` logic and the
host's state read the way the controller reads it (drctl.health.grading.read_host_states).

Timing margins are generous (2 shared cores, other labs running): what is asserted is
the state reached and the state never reached, not how fast.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from drctl.control.view import read_host_states
from drctl.lab import faults
from drctl.lab.agents import agent_dir
from drctl.lab.cluster import LabConfig
from drctl.model.cluster import HostState
from drctl.store.etcd import EtcdStore
from drctl.store.keys import Keys
from tests.lab_fixtures import lab  # noqa: F401 - the session fixture

QUORUM = 2
HOST = "labhost2"


class Watch:
    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.store = EtcdStore([cfg.etcd_endpoint], timeout=2)

    def state(self, host: str) -> HostState | None:
        v = read_host_states(self.store, Keys(), QUORUM, time.time()).get(host)
        return v.state if v else None

    def wait(self, host: str, want: HostState, timeout_s: float) -> float:
        t0 = time.monotonic()
        seen = []
        while time.monotonic() - t0 < timeout_s:
            s = self.state(host)
            if not seen or seen[-1] != s:
                seen.append(s)
            if s is want:
                return time.monotonic() - t0
            time.sleep(0.1)
        pytest.fail(f"{host} not {want.value} within {timeout_s}s; states seen: {seen}")

    def never(self, host: str, bad: set[HostState], seconds: float) -> set[HostState | None]:
        seen: set[HostState | None] = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            s = self.state(host)
            seen.add(s)
            assert s not in bad, f"{host} became {s} (seen {seen})"
            time.sleep(0.1)
        return seen


@pytest.fixture
def watch(lab: LabConfig) -> Iterator[Watch]:  # noqa: F811
    w = Watch(lab)
    for h in ("labhost1", "labhost2", "labhost3"):
        if w.state(h) is not HostState.HEALTHY:
            faults.inject(lab, h, "clear", echo=lambda _m: None)
            w.wait(h, HostState.HEALTHY, 30)
    yield w
    try:
        faults.inject(lab, HOST, "clear", echo=lambda _m: None)
        w.wait(HOST, HostState.HEALTHY, 30)
    finally:
        w.store.close()


def inject(w: Watch, fault: str) -> None:
    faults.inject(w.cfg, HOST, fault, echo=lambda _m: None)


@pytest.mark.lab
def test_host_kill_is_dead(watch: Watch) -> None:
    inject(watch, "host-kill")
    took = watch.wait(HOST, HostState.DEAD, 15)
    assert took < 10
    assert watch.state("labhost1") is HostState.HEALTHY


@pytest.mark.lab
def test_libvirt_hang_is_failing_not_dead(watch: Watch) -> None:
    inject(watch, "libvirt-hang")
    watch.wait(HOST, HostState.FAILING, 15)
    assert watch.never(HOST, {HostState.DEAD, HostState.UNREACHABLE}, 8) == {HostState.FAILING}


@pytest.mark.lab
def test_agent_kill_is_unreachable_not_dead(watch: Watch) -> None:
    inject(watch, "agent-kill")
    watch.wait(HOST, HostState.UNREACHABLE, 15)
    watch.never(HOST, {HostState.DEAD}, 6)


@pytest.mark.lab
def test_partition_is_not_dead_and_agent_re_registers(watch: Watch) -> None:
    audit_file = agent_dir(watch.cfg, HOST) / "audit.jsonl"
    registered = audit_file.read_text().count('"agent.registered"')
    inject(watch, "partition")
    watch.wait(HOST, HostState.UNREACHABLE, 15)
    watch.never(HOST, {HostState.DEAD}, 6)
    inject(watch, "clear")
    watch.wait(HOST, HostState.HEALTHY, 30)
    text = audit_file.read_text()
    assert text.count('"agent.registered"') > registered and '"agent.lease_lost"' in text


@pytest.mark.lab
def test_memory_errors_degrade_and_clear_heals_after_hysteresis(watch: Watch) -> None:
    inject(watch, "memory-errors")
    watch.wait(HOST, HostState.DEGRADED, 15)
    v = read_host_states(watch.store, Keys(), QUORUM, time.time())[HOST]
    assert v.reason.startswith("edac 25 (threshold 1)")
    inject(watch, "clear")
    # three 1s samples must agree first: healthy comes back after the hysteresis, not at once
    took = watch.wait(HOST, HostState.HEALTHY, 30)
    assert took >= 1.5


def test_probe_configuration_error_stops_the_agent_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "agent.yaml"
    conf.write_text("etcd:\n  endpoints: [127.0.0.1:1]\nagent:\n  probes:\n    - kind: libvirt\n"
                    "      interval: 1s\n    - kind: edac\n      interval: soon\n")
    done = subprocess.run([sys.executable, "-m", "drctl.cli.main", "agent", "--host", "hv1", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{conf}:8:17: agent.probes[1].interval: not a duration: 'soon'" in done.stderr
