"""`drctl lab inject` faults that need the real lab: a libvirtd restart keeps the host's
guests running (as on a real host), and so does `drctl lab up` after a libvirtd crash
(it used to kill them, like a power cycle); etcd-kill / etcd-start."""
from __future__ import annotations

import os
import signal
import time

import pytest

from drctl.lab import cluster, faults, guests
from drctl.lab.cluster import LabConfig, LabState, pid_alive, qemu_pids

pytestmark = pytest.mark.lab


def _ticking_after(cfg: LabConfig, vm: str) -> None:
    """The guest prints a tick newer than the last one seen now (it kept running)."""
    before = guests.last_tick(guests.console_path(cfg, vm))
    assert before is not None
    after = guests.wait_ticking(guests.console_path(cfg, vm), 30, after=before.count)
    assert after.count > before.count and after.uptime_s >= before.uptime_s  # no reboot


def _runs_on(cfg: LabConfig, vm: str) -> tuple[str, ...]:
    return next((g.hosts for g in guests.locate_all(cfg) if g.name == vm), ())


def test_libvirt_restart_keeps_the_guest_running(clean_lab: LabConfig) -> None:
    cfg = clean_lab
    guests.create(cfg, "keepvm", "labhost1", memory_mib=96)
    qemu = qemu_pids(cfg, "labhost1")["keepvm"]
    old = LabState.load(cfg).hosts["labhost1"].pid
    said: list[str] = []

    faults.inject(cfg, "labhost1", "libvirt-restart", echo=said.append)

    new = LabState.load(cfg).hosts["labhost1"].pid
    assert new != old and not pid_alive(old, "libvirtd") and pid_alive(new, "libvirtd")
    assert qemu_pids(cfg, "labhost1").get("keepvm") == qemu  # the same QEMU process
    assert _runs_on(cfg, "keepvm") == ("labhost1",)  # the new libvirtd took it over: running
    _ticking_after(cfg, "keepvm")
    assert "guests running: keepvm" in said[-1]


def test_lab_up_after_a_libvirtd_crash_keeps_the_guests(clean_lab: LabConfig) -> None:
    # issue 12: `lab up` restarted a SIGKILLed libvirtd and killed the host's guests with it
    cfg = clean_lab
    guests.create(cfg, "crashvm", "labhost2", memory_mib=96)
    qemu = qemu_pids(cfg, "labhost2")["crashvm"]
    old = LabState.load(cfg).hosts["labhost2"].pid
    os.kill(old, signal.SIGKILL)
    while pid_alive(old, "libvirtd"):
        time.sleep(0.05)

    cluster.up(cfg, len(LabState.load(cfg).hosts), install=False, echo=lambda _m: None)

    assert qemu_pids(cfg, "labhost2").get("crashvm") == qemu
    assert _runs_on(cfg, "crashvm") == ("labhost2",)
    _ticking_after(cfg, "crashvm")


def test_libvirt_stop_and_cont(clean_lab: LabConfig) -> None:
    cfg = clean_lab
    rec = LabState.load(cfg).hosts["labhost3"]
    faults.inject(cfg, "labhost3", "libvirt-stop", echo=lambda _m: None)
    try:
        assert not cluster.libvirt_responds(rec.uri, 2)
    finally:
        faults.inject(cfg, "labhost3", "libvirt-cont", echo=lambda _m: None)
    assert cluster.libvirt_responds(rec.uri, 5)


def test_etcd_kill_and_start(clean_lab: LabConfig) -> None:
    cfg = clean_lab
    old = LabState.load(cfg).etcd_pid
    faults.inject(cfg, "etcd", "etcd-kill", echo=lambda _m: None)
    try:
        deadline = time.monotonic() + 5
        while pid_alive(old, "etcd") and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped by whoever started it
        assert not pid_alive(old, "etcd") and not cluster.etcd_healthy(cfg, 1)
    finally:
        faults.inject(cfg, "etcd", "etcd-start", echo=lambda _m: None)
    assert cluster.etcd_healthy(cfg) and LabState.load(cfg).etcd_pid != old
