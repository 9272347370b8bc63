"""Pre-migration checks, run again at execution time (the plan may be minutes old).

Each check is named and returns a clear reason. The decisions are pure functions of facts
(`DestFacts`, the VM's domain XML); `gather` collects the facts from the destination's
hypervisor, each call under the adapter's deadline, so a hung host fails a check rather
than hanging the runner.
"""
from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

from drctl.model.errors import DrctlError
from drctl.hypervisor import GuestSupport, HostCapacity, Hypervisor
from drctl.model.cluster import Host, HostState

LIBVIRT_TCP_PORT = 16509


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class DomainNeeds:
    """What a VM's domain XML asks of a host."""

    name: str
    memory_mib: int
    cpu_xml: str  # the <cpu> element, "" = none (any CPU will do)
    machine: str
    emulator: str
    networks: frozenset[str]
    pools: frozenset[str]
    local_files: tuple[str, ...]  # file-backed disks: host-local unless storage is shared


def domain_needs(xml: str) -> DomainNeeds:
    """Parse what matters for placement out of a domain XML (pure)."""
    root = ET.fromstring(xml)
    mem = root.find("memory")
    unit = (mem.get("unit") or "KiB") if mem is not None else "KiB"
    amount = int(mem.text or 0) if mem is not None else 0
    scale = {"KiB": 1 / 1024, "k": 1 / 1024, "MiB": 1, "M": 1, "GiB": 1024, "G": 1024, "b": 1 / 2**20,
             "bytes": 1 / 2**20}
    cpu = root.find("cpu")
    os_type = root.find("os/type")
    disks = root.findall("devices/disk[@device='disk']")
    return DomainNeeds(
        name=root.findtext("name") or "",
        memory_mib=int(amount * scale.get(unit, 1 / 1024)),
        # a <cpu> without a model or features asks nothing of the host
        cpu_xml=ET.tostring(cpu, encoding="unicode") if cpu is not None and (
            cpu.find("model") is not None or cpu.find("feature") is not None) else "",
        machine=os_type.get("machine", "") if os_type is not None else "",
        emulator=root.findtext("devices/emulator") or "",
        networks=frozenset(s.get("network", "") for s in root.findall("devices/interface[@type='network']/source")),
        pools=frozenset(s.get("pool", "") for s in root.findall("devices/disk[@type='volume']/source")),
        local_files=tuple(s.get("file", "") for d in disks if d.get("type") == "file"
                          for s in d.findall("source") if s.get("file")),
    )


@dataclass(frozen=True)
class DestFacts:
    host: str
    capacity: HostCapacity
    support: GuestSupport
    networks: frozenset[str]
    pools: frozenset[str]
    cpu_compatible: bool
    state: Host | None  # the controller's view (health, maintenance); None = unknown
    reserved_mib: int = 0  # kept back on this host (host OS, other tenants)


@dataclass(frozen=True)
class CheckPolicy:
    memory_headroom_pct: float = 10.0  # of the destination's total memory, kept free
    require_known_state: bool = False  # fail when no health view is available


# ------------------------------------------------------------------ the checks (pure)


def check_state(f: DestFacts, policy: CheckPolicy) -> CheckResult:
    if f.state is None:
        ok = not policy.require_known_state
        return CheckResult("dest-healthy", ok, f"{f.host}: no health view" + ("" if ok else ", refused"))
    if f.state.maintenance:
        return CheckResult("dest-healthy", False, f"{f.host} is in maintenance")
    if f.state.state is not HostState.HEALTHY:
        return CheckResult("dest-healthy", False, f"{f.host} is {f.state.state.value}")
    return CheckResult("dest-healthy", True, f"{f.host} healthy")


def check_memory(f: DestFacts, needs: DomainNeeds, incoming_mib: int, policy: CheckPolicy) -> CheckResult:
    headroom = int(f.capacity.memory_total_mib * policy.memory_headroom_pct / 100)
    room = f.capacity.memory_free_mib - headroom - f.reserved_mib - incoming_mib
    detail = (f"{f.host}: free {f.capacity.memory_free_mib} MiB - headroom {headroom} - reserved "
              f"{f.reserved_mib} - incoming {incoming_mib} = {room} MiB for {needs.memory_mib} MiB")
    return CheckResult("dest-memory", room >= needs.memory_mib, detail)


def check_cpu(f: DestFacts, needs: DomainNeeds) -> CheckResult:
    if not needs.cpu_xml:
        return CheckResult("cpu-compatible", True, "VM asks for no CPU model or feature")
    return CheckResult("cpu-compatible", f.cpu_compatible,
                       f"{f.host}: VM CPU {'is' if f.cpu_compatible else 'is NOT'} runnable here")


def check_machine(f: DestFacts, needs: DomainNeeds) -> CheckResult:
    if needs.machine and needs.machine not in f.support.machines:
        return CheckResult("machine-type", False, f"{f.host} lacks machine type {needs.machine}")
    if needs.emulator and needs.emulator not in f.support.emulators:
        return CheckResult("machine-type", False, f"{f.host} lacks emulator {needs.emulator}")
    return CheckResult("machine-type", True, f"{f.host} has {needs.machine or 'default machine'}")


def check_networks_storage(f: DestFacts, needs: DomainNeeds) -> CheckResult:
    missing = sorted(needs.networks - f.networks)
    if missing:
        return CheckResult("networks-storage", False, f"{f.host} lacks networks {', '.join(missing)}")
    missing = sorted(needs.pools - f.pools)
    if missing:
        return CheckResult("networks-storage", False, f"{f.host} lacks storage pools {', '.join(missing)}")
    return CheckResult("networks-storage", True, f"{f.host} has the VM's networks and pools")


def check_destination(f: DestFacts, needs: DomainNeeds, incoming_mib: int, policy: CheckPolicy) -> list[CheckResult]:
    return [check_state(f, policy), check_memory(f, needs, incoming_mib, policy), check_cpu(f, needs),
            check_machine(f, needs), check_networks_storage(f, needs)]


# ------------------------------------------------------------------ facts (I/O)


def gather(host: str, dst: Hypervisor, needs: DomainNeeds, state: Host | None, reserved_mib: int = 0) -> DestFacts:
    """Ask the destination; adapter errors (HostUnreachable, timeouts) propagate."""
    return DestFacts(
        host=host, capacity=dst.capacity(), support=dst.guest_support(),
        networks=frozenset(dst.list_networks()), pools=frozenset(dst.list_storage_pools()),
        cpu_compatible=dst.compare_cpu(needs.cpu_xml) if needs.cpu_xml else True,
        state=state, reserved_mib=reserved_mib,
    )


Reachable = Callable[[str, float], CheckResult]


def tcp_reachable(uri: str, timeout_s: float = 2.0) -> CheckResult:
    """Connect to the destination's libvirt port: peer-to-peer migration starts there.

    Runs where the runner runs; with the runner on the source host (or on the same
    network) that is the source's view. Non-TCP URIs (sim://) pass.
    """
    u = urlparse(uri)
    if not u.scheme.endswith("+tcp") or not u.hostname:
        return CheckResult("migration-address", True, f"{uri}: not a TCP URI, not checked")
    port = u.port or LIBVIRT_TCP_PORT
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout_s):
            return CheckResult("migration-address", True, f"{u.hostname}:{port} reachable")
    except OSError as e:
        return CheckResult("migration-address", False, f"{u.hostname}:{port} unreachable: {e}")


def failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


def summary(results: list[CheckResult]) -> str:
    bad = failed(results)
    if bad:
        return "; ".join(f"{r.name}: {r.reason}" for r in bad)
    return "prechecks passed (" + ", ".join(r.name for r in results) + ")"


def unreachable(host: str, err: DrctlError) -> CheckResult:
    return CheckResult("dest-reachable", False, f"{host}: {type(err).__name__}: {err}")
