"""`drctl lab up/status/down` and bad-input handling of the CLI, run as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requires import skip_unless

from drctl.lab.cluster import LabState, LabConfig, pid_alive

DRCTL = [sys.executable, "-m", "drctl.cli.main"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DRCTL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, names", [
    (["check", "--libvirt", "qemu+tcp://127.0.9.9/system"], "qemu+tcp://127.0.9.9/system"),
    (["check", "--etcd", "127.0.0.1:1"], "127.0.0.1:1"),
])
def test_unreachable_endpoint_is_one_clear_line(argv: list[str], names: str) -> None:
    r = run(*argv, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert names in lines[0] and "unreachable" in lines[0]
    assert "Traceback" not in r.stderr


def _lab_processes(lab_dir: Path) -> list[int]:
    """Every process on the machine whose command line or cwd mentions the lab dir, plus
    the lab's recorded daemons (their command lines don't name the dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(lab_dir) in cmd and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@pytest.mark.lab
def test_lab_up_twice_status_down(tmp_path: Path) -> None:
    skip_unless(os.geteuid() == 0, "the lab needs root")
    lab = ["--dir", str(tmp_path / "lab"), "--etcd-port", "23795", "--etcd-peer-port", "23805",
           "--addr-prefix", "127.0.5", "--migration-port-base", "55152"]
    try:
        first = run("lab", "up", "--hosts", "3", "--no-install", *lab)
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("started labhost") == 3
        cfg = LabConfig(dir=tmp_path / "lab", etcd_port=23795)
        pids = {n: h.pid for n, h in LabState.load(cfg).hosts.items()}

        second = run("lab", "up", "--hosts", "3", "--no-install", *lab)
        assert second.returncode == 0, second.stderr
        assert "started" not in second.stdout and second.stdout.count("kept labhost") == 3
        assert {n: h.pid for n, h in LabState.load(cfg).hosts.items()} == pids  # nothing changed

        # a dead daemon is restarted by the next `up`
        os.kill(pids["labhost2"], 9)
        third = run("lab", "up", "--hosts", "3", "--no-install", *lab)
        assert "started labhost2" in third.stdout and third.stdout.count("kept labhost") == 2

        st = run("lab", "status", "--json", *lab)
        assert st.returncode == 0, st.stdout + st.stderr
        status = json.loads(st.stdout)
        assert status["etcd"]["healthy"] is True
        assert [h["name"] for h in status["hosts"] if h["responds"]] == ["labhost1", "labhost2", "labhost3"]
        all_pids = [h["pid"] for h in status["hosts"]] + [LabState.load(cfg).etcd_pid]
    finally:
        down = run("lab", "down", *lab)
    assert down.returncode == 0, down.stderr
    assert not [p for p in all_pids if pid_alive(p)]
    assert _lab_processes(tmp_path / "lab") == []
    st = run("lab", "status", *lab)
    assert st.returncode == 1
