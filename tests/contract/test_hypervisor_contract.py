"""One contract, two adapters: the simulated hypervisor and libvirt on the real lab.

The libvirt half boots real ticking guests under TCG and live-migrates them between two
lab hosts; it is marked `lab`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from drctl.model.errors import HostUnreachable, NoSuchDomain
from drctl.hypervisor import DomainState, Hypervisor, MigrationParams, StateReason
from drctl.hypervisor.sim import SimCluster
from drctl.lab.guest import GuestImage, domain_xml, last_tick, wait_ticking


@dataclass
class Pair:
    """Two hosts of one adapter, a way to make guest XML, and a way to see it is alive."""

    src: Hypervisor
    dst: Hypervisor
    xml: Callable[[str], str]
    booted: Callable[[str], None]  # waits until the guest runs its workload
    alive_after: Callable[[str], None]  # raises unless the guest keeps running
    dead_uri: str  # a URI where no hypervisor answers


def _sim_pair() -> Pair:
    cluster = SimCluster()
    cluster.add_host("h1")
    cluster.add_host("h2")
    image = GuestImage(Path("/k"), Path("/i"))

    def alive(name: str) -> None:
        assert cluster.where(name) == ["h2"]

    return Pair(cluster.connect("sim://h1"), cluster.connect("sim://h2"),
                lambda n: domain_xml(n, image, 128, Path(f"/c/{n}")), lambda n: None, alive, "sim://nowhere")


def _lab_pair(lab) -> Pair:  # type: ignore[no-untyped-def]
    from drctl.hypervisor.libvirt_adapter import connect
    from drctl.lab.guest import build_guest
    from drctl.lab.guests import console_path, host_uris

    uris = list(host_uris(lab).values())
    image = build_guest(lab.guest_dir)

    def xml(name: str) -> str:
        console = console_path(lab, name)
        console.write_bytes(b"")
        return domain_xml(name, image, 128, console, dirty_mib=4)

    def alive(name: str) -> None:
        console = console_path(lab, name)
        before = last_tick(console)
        assert before is not None, "guest never ticked"
        wait_ticking(console, timeout_s=30, after=before.count)

    # an address on loopback where nothing listens: refused at once
    def booted(name: str) -> None:
        wait_ticking(console_path(lab, name), timeout_s=60)

    return Pair(connect(uris[0]), connect(uris[1]), xml, booted, alive, "qemu+tcp://127.0.9.9:1/system")


@pytest.fixture(params=["sim", pytest.param("libvirt", marks=pytest.mark.lab)])
def pair(request) -> Iterator[Pair]:  # type: ignore[no-untyped-def]
    if request.param == "sim":
        yield _sim_pair()
        return
    lab = request.getfixturevalue("clean_lab")
    p = _lab_pair(lab)
    yield p
    p.src.close()
    p.dst.close()


def test_define_start_list_destroy_undefine(pair: Pair) -> None:
    info = pair.src.define(pair.xml("c-life"))
    assert info.name == "c-life" and info.memory_mib == 128 and info.state is DomainState.SHUTOFF
    pair.src.start("c-life")
    assert pair.src.domain("c-life").state is DomainState.RUNNING
    assert "c-life" in [d.name for d in pair.src.list_domains()]
    assert "<name>c-life</name>" in pair.src.domain_xml("c-life")
    pair.src.destroy("c-life")
    pair.src.destroy("c-life")  # destroying a stopped domain is not an error
    assert pair.src.domain("c-life").state is DomainState.SHUTOFF
    pair.src.undefine("c-life")
    with pytest.raises(NoSuchDomain):
        pair.src.domain("c-life")


def test_suspend_and_resume_are_idempotent(pair: Pair) -> None:
    pair.src.define(pair.xml("c-pause"))
    pair.src.start("c-pause")
    pair.src.suspend("c-pause")
    pair.src.suspend("c-pause")  # already paused: not an error
    assert pair.src.domain("c-pause").state is DomainState.PAUSED
    pair.src.resume("c-pause")
    pair.src.resume("c-pause")  # already running: not an error
    assert pair.src.domain("c-pause").state is DomainState.RUNNING
    pair.src.destroy("c-pause")
    pair.src.undefine("c-pause")


def test_autostart_and_the_reason_a_domain_stopped(pair: Pair) -> None:
    """Autostart can be switched off (drctl does so on copies it leaves behind), and a
    hard stop reads as `destroyed`: a stop somebody asked for, not a crash."""
    pair.src.define(pair.xml("c-auto"))
    try:
        assert pair.src.autostart("c-auto") is False
        pair.src.set_autostart("c-auto", True)
        assert pair.src.autostart("c-auto") is True
        pair.src.set_autostart("c-auto", False)
        assert pair.src.autostart("c-auto") is False
        pair.src.start("c-auto")
        assert pair.src.domain("c-auto").reason is StateReason.NONE
        pair.src.destroy("c-auto")
        info = pair.src.domain("c-auto")
        assert info.state is DomainState.SHUTOFF and info.reason is StateReason.DESTROYED
    finally:
        pair.src.destroy("c-auto")
        pair.src.undefine("c-auto")


def test_capacity_counts_all_memory(pair: Pair) -> None:
    cap = pair.src.capacity()
    assert cap.memory_total_mib > 0 and 0 < cap.memory_free_mib <= cap.memory_total_mib
    assert cap.cpus >= 1 and cap.hostname


def test_live_migration_moves_exactly_one_running_copy(pair: Pair) -> None:
    pair.src.define(pair.xml("c-mig"))
    pair.src.start("c-mig")
    pair.booted("c-mig")
    pair.src.migrate("c-mig", pair.dst.uri, MigrationParams(max_downtime_ms=300))
    with pytest.raises(NoSuchDomain):  # undefined on the source
        pair.src.domain("c-mig")
    dom = pair.dst.domain("c-mig")
    assert dom.state is DomainState.RUNNING and dom.persistent
    stats = pair.dst.completed_job_stats("c-mig")
    assert stats.elapsed_ms > 0
    assert stats.downtime_ms is not None and 0 <= stats.downtime_ms < 5000
    assert stats.data_processed > 0 and stats.memory_iteration >= 1
    pair.alive_after("c-mig")


def test_migration_to_unreachable_host_leaves_vm_on_source(pair: Pair) -> None:
    pair.src.define(pair.xml("c-stay"))
    pair.src.start("c-stay")
    with pytest.raises(HostUnreachable):
        pair.src.migrate("c-stay", pair.dead_uri, MigrationParams())
    assert pair.src.domain("c-stay").state is DomainState.RUNNING


def test_unknown_domain_is_no_such_domain(pair: Pair) -> None:
    with pytest.raises(NoSuchDomain):
        pair.src.domain("c-never-defined")


def test_guest_support_lists_machines_and_emulators(pair: Pair) -> None:
    support = pair.src.guest_support()
    assert "pc" in support.machines
    assert "/usr/bin/qemu-system-x86_64" in support.emulators


def test_dir_pool_is_created_once_and_listed(pair: Pair) -> None:
    assert isinstance(pair.dst.list_networks(), list)
    pair.dst.ensure_dir_pool("c-images", "/var/lib/libvirt/images")
    pair.dst.ensure_dir_pool("c-images", "/var/lib/libvirt/images")  # idempotent
    assert "c-images" in pair.dst.list_storage_pools()
