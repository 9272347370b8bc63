"""Configuration errors name file, line and field; probes read the paths they are given."""
from __future__ import annotations

from pathlib import Path

import pytest

from drctl.config.settings import load_config, parse_config
from drctl.model.errors import ConfigError
from drctl.health.grading import Grade
from drctl.health.probes import (CommandProbe, DiskProbe, EdacProbe, KINDS, MceProbe, MemoryProbe, NicProbe, ProbeSpec)


def err(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "agent.yaml")
    return str(e.value)


def test_unknown_probe_names_file_line_and_field() -> None:
    assert err("agent:\n  probes:\n    - kind: edca\n") == \
        "agent.yaml:3:13: agent.probes[0].kind: unknown value 'edca' (did you mean 'edac'?)"


def test_bad_interval_and_missing_field() -> None:
    msg = err("agent:\n  probes:\n    - kind: load\n      interval: 0s\n    - kind: command\n")
    assert "agent.yaml:4:17: agent.probes[0].interval: must be more than 0s" in msg
    assert "agent.yaml:5:7: agent.probes[1].command: missing (required by probe kind 'command')" in msg
    assert "agent.yaml:3:7: agent.probes[0].kind: missing" in err("agent:\n  probes:\n    - interval: 1s\n")


def test_unknown_section_suggests_nearest() -> None:
    assert err("etdc:\n  prefix: /x/\n") == "agent.yaml:1:1: etdc: unknown key (did you mean 'etcd'?)"


def test_lease_ttl_below_etcd_minimum() -> None:
    assert "agent.lease_ttl: must be whole seconds, at least 2s" in err("agent:\n  lease_ttl: 1s\n")


def test_full_config_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("""
etcd: {endpoints: [127.0.0.1:2379, 127.0.0.2:2379], prefix: /x/, timeout: 2s}
agent:
  host: hv1
  libvirt_uri: qemu+tcp://127.0.1.1/system
  lease_ttl: 3s
  peers: [{name: hv2, uri: qemu+tcp://127.0.1.2/system}]
  hysteresis: 2
  labels: {rack: r1}
  probes:
    - {kind: edac, root: /tmp/edac, degraded: 5, failing: null, window: 10m}
    - {kind: command, name: ping-gw, command: [ping, -c1, gw], interval: 30s, timeout: 2s}
""")
    cfg = load_config(p)
    assert cfg.etcd.endpoints == ("127.0.0.1:2379", "127.0.0.2:2379") and cfg.etcd.timeout_s == 2
    a = cfg.agent
    assert a is not None and a.host == "hv1" and a.lease_ttl_s == 3 and a.hysteresis == 2
    assert a.peers is not None and a.peers[0].name == "hv2" and a.labels == {"rack": "r1"}
    edac, cmd = a.probes
    assert (edac.degraded, edac.failing, edac.options["window"]) == (5.0, None, 600.0)
    assert cmd.name == "ping-gw" and cmd.options["command"] == ("ping", "-c1", "gw") and cmd.timeout_s == 2


def spec(kind: str, **options: object) -> ProbeSpec:
    k = KINDS[kind]
    opts = {o: d for o, (_, d) in k.options.items()}
    return ProbeSpec(kind, kind, k.interval_s, k.timeout_s, k.degraded, k.failing, {**opts, **options})


def test_edac_counts_new_errors_and_resets(tmp_path: Path) -> None:
    mc = tmp_path / "mc" / "mc0"
    mc.mkdir(parents=True)
    (mc / "ce_count").write_text("4\n")
    (mc / "ue_count").write_text("0\n")
    probe = EdacProbe(spec("edac", root=str(tmp_path)))
    assert probe.sample(0).grade is Grade.HEALTHY
    (mc / "ce_count").write_text("14\n")
    s = probe.sample(1)
    assert (s.grade, s.value, s.threshold) == (Grade.DEGRADED, 10, 1)
    (mc / "ue_count").write_text("1\n")
    assert probe.sample(2).grade is Grade.FAILING
    (mc / "ce_count").write_text("0\n")
    (mc / "ue_count").write_text("0\n")
    assert probe.sample(3).grade is Grade.HEALTHY  # counters reset (lab `clear`, reboot)
    assert EdacProbe(spec("edac", root=str(tmp_path / "none"))).sample(0).detail.startswith("not exposed")


def test_memory_mce_nic_disk_probes(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 20 kB\n")
    s = MemoryProbe(spec("memory", path=str(tmp_path / "meminfo"))).sample(0)
    assert (s.grade, s.value, s.threshold) == (Grade.FAILING, 2.0, 3.0)
    (tmp_path / "interrupts").write_text("CPU0 CPU1\nMCE: 0 0 Machine check exceptions\n")
    mce = MceProbe(spec("mce", path=str(tmp_path / "interrupts")))
    assert mce.sample(0).grade is Grade.HEALTHY
    (tmp_path / "interrupts").write_text("CPU0 CPU1\nMCE: 1 2 Machine check exceptions\n")
    assert mce.sample(1).grade is Grade.DEGRADED
    net = tmp_path / "net" / "eth0"
    net.mkdir(parents=True)
    (net / "operstate").write_text("up\n")
    (net / "carrier").write_text("0\n")
    assert NicProbe(spec("nic", root=str(tmp_path / "net"))).sample(0).detail == "down: eth0"
    dev = tmp_path / "block" / "vda" / "device"
    dev.mkdir(parents=True)
    (dev / "state").write_text("running\n")
    disk = DiskProbe(spec("disk", root=str(tmp_path / "block")))
    assert disk.sample(0).grade is Grade.HEALTHY
    (dev / "state").write_text("offline\n")
    assert disk.sample(1).detail == "vda state offline"


def test_command_probe_exit_codes_and_timeout() -> None:
    def run(argv: list[str], timeout: float = 5.0) -> tuple[Grade, str]:
        s = CommandProbe(ProbeSpec("command", "c", 10, timeout, 1, 2, {"command": argv})).sample(0)
        return s.grade, s.detail

    assert run(["sh", "-c", "echo fine"]) == (Grade.HEALTHY, "exit 0: fine")
    assert run(["sh", "-c", "echo warn; exit 1"])[0] is Grade.DEGRADED
    assert run(["sh", "-c", "exit 2"])[0] is Grade.FAILING
    grade, detail = run(["sleep", "5"], timeout=0.2)
    assert grade is Grade.FAILING and "did not exit within 0.2s" in detail
