"""VM-level recovery (issue 12, case 7): a VM found stopped on a live host when nobody
asked for it is started again. Pure: data in, decisions out.

A host that lives can still lose a guest: QEMU crashes or is killed (the OOM killer, a
SIGKILL), a start fails, libvirtd drops a domain while it reconnects after a restart. The
agent publishes each domain's state with libvirt's state reason (drctl.hypervisor
StateReason), which tells those apart from a stop somebody asked for: a guest shutdown,
`virsh shutdown` or `virsh destroy`, a save, a migration. Only the unrequested ones
(`UNREQUESTED`: crashed, failed, daemon) are drctl's to undo.

A VM qualifies when all of these hold:
- it is drctl's: it has a location (placement record, else its definition's host) and
  that host's inventory lists it stopped with an unrequested reason;
- its host is alive, not failing, not being drained, and has no open incident (an
  incident about the host decides for all its VMs);
- no move of it is in flight, and the inventory was published after the VM's last
  intent (by etcd revision: an inventory from before the last start still says stopped);
- fewer than `max_attempts` starts of it were asked for within `window_s`.

The decision is an incident of kind vm-recover (no host: it must not hold back an incident
about the host) with one `start` intent whose source and destination are the VM's host;
the runner starts the domain there after checking with libvirt that it is still stopped
for an unrequested reason and runs nowhere else. A VM past its bound is reported once per
window (`vm.recovery_exhausted`) and left to a human.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from drctl.control.tick import (CloseIncident, Decision, Incident, IncidentKind, IncidentPhase, IntentView,
                                OpenIncident, WriteIntents)
from drctl.model.cluster import HostState, IntentKind, IntentState, Move, Snapshot

# libvirt state reasons (drctl.hypervisor.StateReason values) of a stop nobody asked for;
# the hypervisor seam keeps the same set as UNREQUESTED (tests/unit/test_vm_recovery.py)
UNREQUESTED_REASONS = frozenset({"crashed", "failed", "daemon"})
STOPPED_STATES = frozenset({"shutoff", "crashed"})


@dataclass(frozen=True)
class RecoverySettings:
    max_attempts: int = 3  # starts asked for per VM within the window
    window_s: float = 600.0
    orphan_after_s: float = 30.0  # an incident whose intent was never written closes after this


@dataclass(frozen=True)
class StoppedVM:
    """A VM its host's inventory lists as stopped, and why."""

    vm: str
    host: str
    state: str
    reason: str
    inventory_revision: int = 0  # etcd revision of the inventory that said so


@dataclass(frozen=True)
class EarlierStart:
    """A start (vm-recover intent) asked for before: when, and its etcd revision."""

    vm: str
    created: float
    revision: int


@dataclass(frozen=True)
class RecoveryInput:
    snapshot: Snapshot  # hosts with state and maintenance; VMs with their host
    stopped: Sequence[StoppedVM]
    earlier: Sequence[EarlierStart]
    intents: Sequence[IntentView]  # open intents, and this module's incidents' finished ones
    incidents: Mapping[str, Incident]  # open incidents by id
    exhausted_reported: frozenset[str] = field(default_factory=frozenset)  # VMs already reported


@dataclass(frozen=True)
class RecoveryResult:
    decisions: tuple[Decision, ...]
    exhausted: tuple[tuple[str, str], ...]  # (vm, why) newly past the bound
    sentence: str


def decide(inp: RecoveryInput, now: float, settings: RecoverySettings = RecoverySettings(),
           policy_name: str = "") -> RecoveryResult:
    out: list[Decision] = []
    exhausted: list[tuple[str, str]] = []
    busy = {i.vm for i in inp.intents if not i.state.terminal}
    incident_hosts = {inc.host for inc in inp.incidents.values() if inc.host}
    started: list[str] = []
    for s in sorted(inp.stopped, key=lambda s: s.vm):
        vm = inp.snapshot.vms.get(s.vm)
        host = inp.snapshot.hosts.get(s.host)
        if vm is None or vm.host != s.host or host is None:
            continue  # not where drctl places it: a stale copy, not a lost VM
        if s.state not in STOPPED_STATES or s.reason not in UNREQUESTED_REASONS:
            continue  # running, or stopped on purpose
        if not host.state.alive or host.state is HostState.FAILING or host.maintenance:
            continue
        if s.vm in busy or s.host in incident_hosts:
            continue
        mine = [e for e in inp.earlier if e.vm == s.vm]
        if any(e.revision >= s.inventory_revision for e in mine):
            continue  # the inventory predates the last start: wait for a newer one
        recent = [e for e in mine if now - e.created < settings.window_s]
        if len(recent) >= settings.max_attempts:
            if s.vm not in inp.exhausted_reported:
                exhausted.append((s.vm, f"{s.vm} stopped on {s.host} ({s.reason}) again after {len(recent)} "
                                        f"start(s) within {settings.window_s:.0f}s: left to a human"))
            continue
        inc = Incident(id=f"inc-vm-{s.vm}-{int(now * 1000)}", kind=IncidentKind.VM_RECOVER, host="", rule="vm-recovery",
                       policy=policy_name, opened_at=now, phase=IncidentPhase.ACTING,
                       reason=f"{s.vm} found {s.state} ({s.reason}) on {s.host}, which is {host.state.value}; "
                              f"start {len(recent) + 1} of {settings.max_attempts} within {settings.window_s:.0f}s")
        move = Move(s.vm, s.host, s.host, kind=IntentKind.START, reason=inc.reason)
        out += [OpenIncident(inc), WriteIntents(inc.id, (move,))]
        started.append(f"{s.vm} on {s.host}")
    for inc in sorted(inp.incidents.values(), key=lambda i: i.id):
        if inc.kind is not IncidentKind.VM_RECOVER:
            continue
        mine_i = [i for i in inp.intents if i.incident == inc.id]
        if mine_i and all(i.state.terminal for i in mine_i):
            ok = all(i.state is IntentState.DONE for i in mine_i)
            out.append(CloseIncident(inc.id, f"{', '.join(i.vm for i in mine_i)} "
                                             f"{'started again' if ok else 'not started'}"))
        elif not mine_i and now - inc.opened_at > settings.orphan_after_s:
            out.append(CloseIncident(inc.id, "no start intent was written (deposed?); decided again if still stopped"))
    sentence = f"starting {', '.join(started)} again (stopped without a request)" if started else ""
    return RecoveryResult(tuple(out), tuple(exhausted), sentence)
