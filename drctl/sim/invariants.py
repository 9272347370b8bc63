"""The product's promises, checked against the simulated world after every step.

I1  no VM has more than one running or paused copy (an incoming migration's paused
    target does not count while its migration runs);
I2  every VM runs somewhere, or has been down for less than the recovery bound, or is
    reported as needing a human (its incident in needs-human, its intent failed, or the
    controller frozen);
I3  no intent is executed twice (the same intent and attempt started twice, or a move
    started for an intent already finished);
I4  no write of a deposed leader is accepted: every store write, libvirt change and
    fence a controller loop makes lands while its election key is the lowest;
I5  no VM is started on a new host without proof that its old copy is gone: the old host
    was fenced (or its fence agent said off) after the VM last ran there, or its libvirtd answers and holds no live copy;
I6  after the faults stop, every incident ends or is marked needs-human within the bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drctl.audit import events
from drctl.control.intents import parse_intent
from drctl.control.tick import Incident, IncidentPhase
from drctl.control.view import parse_incident
from drctl.hypervisor import DomainState
from drctl.model.cluster import IntentState
from drctl.model.records import RecordError
from drctl.sim.daemons import leader_key_of
from drctl.sim.sched import Process
from drctl.sim.world import World
from drctl.store.keys import Keys


@dataclass(frozen=True)
class Violation:
    invariant: str
    at: float  # seconds since the start of the run
    detail: str

    def line(self) -> str:
        return f"{self.invariant} at {self.at:.3f}s: {self.detail}"


class Checker:
    def __init__(self, world: World, keys: Keys, vms: list[str], recovery_bound_s: float, t0: float) -> None:
        self.world, self.keys, self.vms = world, keys, vms
        self.bound = recovery_bound_s
        self.t0 = t0
        self.violations: list[Violation] = []
        self._seen: set[tuple[str, str]] = set()
        self._down_since: dict[str, float] = {}
        self._dup: set[str] = set()
        self._started: dict[tuple[str, int, str], str] = {}
        self._terminal: set[str] = set()
        self.frozen = False
        self.dirty = True

    def _flag(self, inv: str, key: str, detail: str) -> None:
        if (inv, key) in self._seen:
            return
        self._seen.add((inv, key))
        self.violations.append(Violation(inv, self.world.sched.now() - self.t0, detail))

    # ------------------------------------------------------------------ world events
    def observe(self, kind: str, d: dict[str, Any]) -> None:
        self.dirty = True
        if kind == "started":
            self._check_start(d["vm"], d["host"], d["by"])
        elif kind in ("store_write", "libvirt_write", "fence"):
            self._check_leader(kind, d)

    def _check_start(self, vm: str, host: str, by: str) -> None:
        w = self.world
        facts = w.vm_facts.get(vm)
        old = facts.last_host if facts else ""
        if not old or old == host:
            return
        node, h = w.nodes[old], w.cluster.hosts[old]
        fenced = w.fenced_at.get(old, -1.0) >= facts.ran_at.get(old, 0.0) if facts else False
        copy = h.domains.get(vm)
        answers_gone = (node.powered and not node.frozen and node.libvirtd == "up"
                        and (copy is None or copy.state not in (DomainState.RUNNING, DomainState.PAUSED)))
        if not fenced and not answers_gone:
            state = ("powered off, never fenced" if not node.powered else "frozen" if node.frozen
                     else f"libvirtd {node.libvirtd}" if node.libvirtd != "up" else f"copy {copy.state.value}"
                     if copy else "?")
            self._flag("I5", f"{vm}@{host}@{w.sched.now():.3f}",
                       f"{vm} started on {host} by {by} without proof its copy on {old} is gone ({old}: {state})")

    def _check_leader(self, kind: str, d: dict[str, Any]) -> None:
        actor = self.world.sched.actor()
        proc: Process = d["proc"]
        if actor is None or actor.role != "loop" or proc.role != "loop":
            return
        if kind == "store_write" and not any(k.startswith((self.keys.incidents_prefix(), self.keys.intents_prefix()))
                                             and not k.startswith(self.keys.intent_claims_prefix())
                                             for k in d["keys"]):
            return
        mine = leader_key_of(proc)
        lowest = self.leader_key()
        if mine != lowest:
            what = {"store_write": f"wrote {', '.join(d.get('keys', []))[:120]}",
                    "libvirt_write": f"{d.get('what')} {d.get('vm')} on {d.get('host')}",
                    "fence": f"fenced {d.get('host')}"}[kind]
            self._flag("I4", f"{proc.name}@{self.world.sched.now():.3f}",
                       f"{proc.name} {what} while not leading (its key {mine or 'none'}, leader {lowest or 'none'})")

    def leader_key(self) -> str:
        store = self.world.store
        with store._lock:
            if not store._failed:
                store._expire_due()
            keys = [kv for k, kv in store._data.items() if k.startswith(self.keys.leader_prefix())]
        return min(keys, key=lambda kv: kv.create_revision).key if keys else ""

    # ------------------------------------------------------------------ audit events
    def audit(self, ev: dict[str, Any]) -> None:
        name = ev.get("event")
        if name in (events.MIGRATION_STARTED, events.VM_RESTARTED):
            intent, attempt = str(ev.get("intent")), int(ev.get("attempt") or 0)
            key = (intent, attempt, str(name))
            if intent in self._terminal:
                self._flag("I3", intent, f"{name} for intent {intent} after it finished")
            elif key in self._started:
                self._flag("I3", f"{intent}#{attempt}",
                           f"intent {intent} attempt {attempt}: {name} twice ({self._started[key]} and {ev.get('proc')})")
            self._started[key] = str(ev.get("proc"))
        elif name == events.INTENT_STATE_CHANGED and _terminal(ev.get("to")):
            self._terminal.add(str(ev.get("intent")))
        elif name == events.CONTROLLER_FROZE:
            self.frozen = True
        elif name == events.CONTROLLER_RESUMED:
            self.frozen = False

    # ------------------------------------------------------------------ after every step
    def check(self) -> None:
        now = self.world.sched.now()
        if self.dirty:
            self.dirty = False
            for vm in self.vms:
                copies = self.world.copies(vm)
                if len(copies) > 1:
                    if vm not in self._dup:
                        self._dup.add(vm)
                        self._flag("I1", f"{vm}@{now:.3f}", f"{vm} has {len(copies)} copies: "
                                   + ", ".join(f"{h} {s.value}" for h, s in copies))
                else:
                    self._dup.discard(vm)
                if self.world.serving(vm):
                    self._down_since.pop(vm, None)
                else:
                    self._down_since.setdefault(vm, now)
        for vm, since in list(self._down_since.items()):
            if now - since > self.bound and not self.needs_human(vm):
                self._flag("I2", f"{vm}@{since:.3f}", f"{vm} down since {since - self.t0:.1f}s, for more than "
                           f"{self.bound:.0f}s, and nobody was told a human must look")

    def needs_human(self, vm: str) -> bool:
        if self.frozen:
            return True
        facts = self.world.vm_facts.get(vm)
        host = facts.last_host if facts else ""
        for inc in self._incidents():
            if inc.phase is IncidentPhase.NEEDS_HUMAN and inc.host == host:
                return True
        for k, kv in list(self.world.store._data.items()):
            if k.startswith(self.keys.intents_prefix()) and not k.startswith(self.keys.intent_claims_prefix()):
                try:
                    it = parse_intent(k, kv.value)
                except RecordError:
                    continue
                # a failure reported since the VM went down (an older one says nothing about it)
                if it.vm == vm and it.state is IntentState.FAILED and it.updated >= self._down_since.get(vm, 0.0):
                    return True
        return False

    def _incidents(self) -> list[Incident]:
        """Every incident record the store holds, parsed as the controller parses it
        (unreadable ones are left out: the controller skips them too)."""
        out = []
        for k, kv in sorted(self.world.store._data.items()):
            if k.startswith(self.keys.incidents_prefix()):
                try:
                    out.append(parse_incident(k, kv.value))
                except RecordError:
                    continue
        return out

    def at_end(self, faults_stopped: float, settle_s: float) -> None:
        """I6: once the faults stopped `settle_s` ago, no incident may still be open."""
        now = self.world.sched.now()
        if now < faults_stopped + settle_s or self.frozen:
            return  # a frozen controller has asked for a human already
        for inc in self._incidents():
            if inc.phase not in (IncidentPhase.CLOSED, IncidentPhase.NEEDS_HUMAN):
                self._flag("I6", inc.id, f"incident {inc.id} ({inc.kind.value} of {inc.host or 'cluster'}) still "
                           f"{inc.phase.value} {now - faults_stopped:.0f}s after the faults stopped")


def _terminal(state: object) -> bool:
    try:
        return IntentState(state).terminal
    except ValueError:
        return False
