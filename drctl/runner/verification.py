"""Where does a VM actually run, and is it healthy there?

libvirt is the truth for running VMs. After every migration (and whenever its outcome is
unknown: a hung peer, an abort that itself hung) the runner asks each host involved,
each under a deadline; a host that does not answer counts as "unknown", never as "absent".
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Mapping, Protocol

from drctl.model.errors import DrctlError, HostUnreachable, HypervisorTimeout, NoSuchDomain
from drctl.hypervisor import DomainState, Hypervisor


class Where(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"  # e.g. the source at the end of a migration, or an incoming destination
    STOPPED = "stopped"  # defined but not running
    ABSENT = "absent"
    UNKNOWN = "unknown"  # the host did not answer


def probe(hv_for: Callable[[str], Hypervisor], host: str, vm: str) -> Where:
    """One host's view of one VM; never raises for host trouble."""
    try:
        hv = hv_for(host)
    except (HostUnreachable, HypervisorTimeout):
        return Where.UNKNOWN
    try:
        state = hv.domain(vm).state
    except NoSuchDomain:
        return Where.ABSENT
    except (HostUnreachable, HypervisorTimeout):
        return Where.UNKNOWN
    finally:
        close_quietly(hv)
    if state is DomainState.RUNNING:
        return Where.RUNNING
    if state is DomainState.PAUSED:
        return Where.PAUSED
    return Where.STOPPED


def close_quietly(hv: Hypervisor) -> None:
    """Close in the background: closing a connection to a hung libvirtd can block."""
    import threading

    threading.Thread(target=lambda: _close(hv), daemon=True, name="close-conn").start()


def _close(hv: Hypervisor) -> None:
    try:
        hv.close()
    except DrctlError:
        pass


def locate(hv_for: Callable[[str], Hypervisor], hosts: list[str], vm: str) -> dict[str, Where]:
    return {h: probe(hv_for, h, vm) for h in dict.fromkeys(hosts)}


class Resolution(str, Enum):
    SOURCE = "source"
    DESTINATION = "destination"
    ELSEWHERE = "elsewhere"  # running on a host that is neither (an earlier attempt's destination)
    NOWHERE = "nowhere"  # every host answered and none runs it
    UNKNOWN = "unknown"  # cannot tell yet: ask again later
    DUPLICATED = "duplicated"  # runs on two hosts: a human must look


def resolve(where: Mapping[str, Where], src: str, dst: str) -> tuple[Resolution, str]:
    """Where a VM is after a migration attempt, from every involved host's answer (pure).

    A destination runs a migrated VM (not paused) only after the source confirmed the
    hand-over, so "running on dst" means it arrived even if the source did not answer.
    A paused source with an unanswering destination may be mid hand-over: unknown.
    """
    running = sorted(h for h, w in where.items() if w is Where.RUNNING)
    detail = ", ".join(f"{h}={w.value}" for h, w in sorted(where.items()))
    if len(running) > 1:
        return Resolution.DUPLICATED, detail
    if running == [dst]:
        return Resolution.DESTINATION, detail
    if running == [src]:
        return Resolution.SOURCE, detail
    if running:
        return Resolution.ELSEWHERE, detail
    if any(w in (Where.UNKNOWN, Where.PAUSED) for w in where.values()):
        return Resolution.UNKNOWN, detail
    return Resolution.NOWHERE, detail


# ------------------------------------------------------------------ guest health


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


class GuestHealth(Protocol):
    """Is the guest alive after a move? `mark` is called before the move, `check` after."""

    def mark(self, vm: str) -> object: ...

    def check(self, vm: str, host: str, hv: Hypervisor, mark: object, timeout_s: float) -> Health: ...


class DomainRunning:
    """Production default: the domain is RUNNING on the host. A guest agent ping or an
    application probe would be better; plug one in through GuestHealth."""

    def mark(self, vm: str) -> object:
        return None

    def check(self, vm: str, host: str, hv: Hypervisor, mark: object, timeout_s: float) -> Health:
        state = hv.domain(vm).state
        return Health(state is DomainState.RUNNING, f"{vm} on {host} is {state.value}")
