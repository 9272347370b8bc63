"""The controller's imperative shell: election, one view per tick, decisions carried out.

    campaign -> lead (term) -> adopt open intents -> loop:
        read etcd at one revision -> View -> tick() -> apply decisions (guarded) -> sentence

Every write a decision makes is a transaction guarded by the leader's election key
(`Leadership.guard()`), so a deposed leader (its lease expired while it was paused)
changes nothing. Ticks are driven by a watch on the whole prefix (a change wakes the
loop at once) and by a periodic resync, so a missed notification costs at most one
interval.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from drctl.audit import writer as audit

from drctl.audit import events
from drctl.clock import Clock, SystemClock
from drctl.control.view import (ClusterRecords, ClusterView, SharedView, configured_quorum, parse_incident,
                                short_of_quorum)
from drctl.control.tick import (
    ETCD_UNHEALTHY,
    CloseIncident,
    Decision,
    Freeze,
    Incident,
    IncidentKind,
    IncidentPhase,
    IntentView,
    OpenIncident,
    RecordProof,
    RequestFence,
    Resume,
    TROUBLED,
    Settings,
    UpdateIncident,
    View,
    WriteIntents,
    tick,
)
from drctl.control import vm_recovery
from drctl.control.election import Election, Leadership
from drctl.model.errors import DrctlError, HostUnreachable, StoreError, StoreUnavailable
from drctl.control.copies import IntentFacts, authoritative_copy
from drctl.hypervisor import Hypervisor
from drctl.fencing.agents import FenceAgent, FenceResult, PowerState
from drctl.health.grading import HostVerdict
from drctl.control.intents import IntentParams, create_intents, new_intent, proof_guard, read_proof
from drctl.model.cluster import HostState, IntentKind, IntentState, Snapshot
from drctl.model.proof import FenceBasis, FenceProof, proof_id, proof_problem
from drctl.model.records import InventoryRecord
from drctl.policy import EvidenceKind, Policy
from drctl.store import Compare, Delete, Put, Store
from drctl.store.keys import Keys

OUTAGE_POLL_MAX_S = 2.0  # how often, at most, a replica asks an absent etcd whether it is back

HypervisorFor = Callable[[str], object]  # host -> Hypervisor (connect by the inventory's URI)


def incident_to_json(inc: Incident) -> bytes:
    d = {k: (v.value if hasattr(v, "value") else v) for k, v in inc.__dict__.items()}
    d["evidence"], d["intents"] = list(inc.evidence), list(inc.intents)
    return json.dumps(d, sort_keys=True).encode()


def incident_from_json(raw: bytes, key: str = "") -> Incident:
    """drctl.control.view.parse_incident, for callers that hold only the value."""
    return parse_incident(key, raw)


@dataclass
class LoopState:
    """What the loop remembers between ticks (never needed for correctness after a
    failover: a new leader starts with empty memory and re-derives it)."""

    state_since: dict[str, tuple[HostState, float]]
    frozen: str = ""
    last_sentence: str = ""
    fencing: set[str] | None = None
    duplicates: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)  # reported once each
    short_of_quorum: dict[str, int] = field(default_factory=dict)  # host -> witnesses, reported once
    recovery_exhausted: set[str] = field(default_factory=set)  # VMs past their start bound, reported once
    troubled_since: dict[str, float] = field(default_factory=dict)  # host -> when it became troubled


class ControllerLoop:
    def __init__(self, store: Store, keys: Keys, policy: Policy, name: str,
                 fence_agents: Mapping[str, FenceAgent] | None = None, clock: Clock | None = None,
                 lease_ttl: int = 2, tick_interval_s: float = 0.5, settings: Settings = Settings(),
                 quorum: int | None = None, echo: Callable[[str], None] | None = None,
                 on_leading: Callable[[Leadership], None] | None = None, shared: SharedView | None = None,
                 connect: Callable[[str], Hypervisor] | None = None,
                 vm_recovery_settings: vm_recovery.RecoverySettings = vm_recovery.RecoverySettings()) -> None:
        self.store = store
        self.keys = keys
        self.policy = policy
        self.name = name
        self.fence_agents = dict(fence_agents or {})
        self.clock = clock or SystemClock()
        self.tick_interval_s = tick_interval_s
        self.settings = settings
        self.vm_recovery = vm_recovery_settings
        # the view this loop builds once per tick, shared with the runner of this process
        self.shared = shared or SharedView(store, keys, configured_quorum(quorum, policy), clock=self.clock)
        self.echo = echo or (lambda _s: None)
        self.on_leading = on_leading
        self.connect = connect or _libvirt_connect
        self.election = Election(store, keys, name, ttl=lease_ttl, clock=self.clock, on_deposed=self._deposed)
        self.wake = threading.Event()
        self.state = LoopState(state_since={}, fencing=set())
        self.leadership: Leadership | None = None
        self._lost = threading.Event()
        # after an etcd outage this replica waited out, until its next leadership: the
        # store revision it had last seen before (0: no outage pending)
        self._outage_rev = 0

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, campaign again, until `stop`. An etcd outage never ends the
        replica (issue 12, case 15): it is waited out here, and the replica campaigns
        again once etcd answers. While it lasts nobody decides: a leader's ticks freeze on
        the unreadable view until its election lease lapses, candidates cannot campaign."""
        while not stop.is_set():
            try:
                lead = self.election.wait_for_leadership(stop)  # campaigns when it has no key
                if lead is None:
                    break
                self._lead(lead, stop)
            except StoreUnavailable as e:
                self._wait_out_outage(e, stop)
            except StoreError as e:  # a lost lease or key mid-call: campaign afresh
                audit.warn(events.CONTROLLER_DECISION_FAILED, decision="campaign", error=str(e))
                stop.wait(self.tick_interval_s)
        self.election.resign()

    def _wait_out_outage(self, error: StoreError, stop: threading.Event) -> None:
        """Block until the store answers again (or `stop`), saying so in the audit. The
        next leadership of this replica starts frozen on "etcd is unhealthy", so the
        first tick that reads etcd again records that decisions resumed."""
        started = self.clock.monotonic()
        self._outage_rev = max(self.election.seen_rev, 1)
        audit.warn(events.CONTROLLER_STORE_UNAVAILABLE, name=self.name, error=str(error))
        self.echo(f"{self.name}: etcd unavailable ({error}); deciding nothing until it answers")
        delay = self.tick_interval_s
        while not stop.wait(delay):
            try:
                self.store.revision()
            except StoreError:
                delay = min(delay * 2, OUTAGE_POLL_MAX_S)
                continue
            outage_s = round(self.clock.monotonic() - started, 1)
            audit.emit(events.CONTROLLER_STORE_RECOVERED, name=self.name, outage_s=outage_s)
            self.echo(f"{self.name}: etcd answers again after {outage_s:g}s")
            return

    def _deposed(self, reason: str) -> None:
        self._lost.set()
        self.wake.set()

    def _lead(self, lead: Leadership, stop: threading.Event) -> None:
        self.leadership = lead
        self._lost.clear()
        # after an etcd outage this replica waited out, its first leadership starts frozen
        # on it, so that the tick which reads etcd again says so (controller.resumed);
        # unless another replica led since (a key created after the outage): it did
        outage_seen = 0 < self._outage_rev and self.election.other_leader_rev <= self._outage_rev
        carried = ETCD_UNHEALTHY if outage_seen else ""
        self._outage_rev = 0
        self.state = LoopState(state_since={}, fencing=set(), frozen=carried)
        audit.bind(term=lead.term)
        audit.emit(events.CONTROLLER_ELECTED, term=lead.term, reason=f"{self.name} holds the lowest election key")
        self.echo(f"{self.name}: elected leader (term {lead.term})")
        watch = None
        try:
            if self.on_leading:
                self.on_leading(lead)
            watch = self.store.watch_prefix(self.keys.prefix, lambda _ev: self.wake.set())
            while not stop.is_set() and not self._lost.is_set():
                if not self._still_leading():
                    break
                self.tick_once(lead)
                self.wake.wait(self.tick_interval_s)
                self.wake.clear()
        finally:
            if watch is not None:
                watch.cancel()
            audit.emit(events.CONTROLLER_DEPOSED, term=lead.term,
                       reason="stopped" if stop.is_set() else self.election.deposed_reason or "lost the election key")
            audit.unbind("term")
            self.leadership = None

    def _still_leading(self) -> bool:
        """Whether to tick on. etcd unreachable: we cannot tell, and keep ticking (each
        tick freezes on the unreadable view, every write is guarded by our key anyway)
        until our election lease lapses, which deposes us (`_deposed`)."""
        try:
            return self.election.current() is not None
        except StoreUnavailable:
            lease = self.election.lease
            return lease is not None and lease.alive

    # ------------------------------------------------------------------ one tick
    def build_view(self, now: float) -> tuple[View, ClusterRecords, Snapshot]:
        """One read of etcd -> the tick's View (published for the runner too)."""
        cluster = self.shared.refresh(now)
        records, verdicts, snap = cluster.records, cluster.verdicts, cluster.snapshot
        held: dict[str, float] = {}
        for h, host in snap.hosts.items():
            prev = self.state.state_since.get(h)
            if prev is None or prev[0] is not host.state:
                if prev is not None:
                    audit.emit(events.HOST_STATE_CHANGED, host=h, **{"from": prev[0].value, "to": host.state.value},
                               reason=verdicts[h].reason if h in verdicts else "")
                self.state.state_since[h] = (host.state, now)
            held[h] = now - self.state.state_since[h][1]
            if host.state in TROUBLED:
                self.state.troubled_since.setdefault(h, now)
            else:
                self.state.troubled_since.pop(h, None)
        troubled_for = {h: now - t for h, t in self.state.troubled_since.items()}
        self._warn_short_of_quorum(records)
        incidents, recently_closed = self._incidents(cluster, now)
        intents = tuple(IntentView(i.id, i.incident, i.vm, i.src, i.dst, i.state, i.kind)
                        for i in records.intents if i.incident in incidents or not i.state.terminal)
        view = View(snapshot=snap, verdicts=verdicts, held_s=held, proofs=records.proofs,
                    incidents=incidents, intents=intents, etcd_healthy=cluster.ok,
                    age_s=cluster.age_s(self.clock.monotonic()),
                    frozen=self.state.frozen, recently_closed=recently_closed,
                    troubled_for_s=troubled_for)
        return view, records, snap

    def _warn_short_of_quorum(self, records: ClusterRecords) -> None:
        """A fixed quorum the cluster cannot meet is refused at start-up when the agents'
        setting shows it; a cluster that is (or became) too small shows only here."""
        short = short_of_quorum(records, self.shared.quorum)
        for host, n in short.items():
            if self.state.short_of_quorum.get(host) != n:
                audit.warn(events.HOST_QUORUM_UNREACHABLE, host=host, witnesses=n, quorum=self.shared.quorum,
                           reason=f"{host} has {n} witness(es), quorum is {self.shared.quorum}: it can never be "
                                  f"declared dead")
        self.state.short_of_quorum = short

    def _incidents(self, cluster: ClusterView, now: float) -> tuple[dict[str, Incident], dict[str, str]]:
        """Open incidents by id, and host -> outcome of incidents closed very recently."""
        open_: dict[str, Incident] = {}
        closed: dict[str, str] = {}
        for inc in cluster.records.incidents:
            if inc.phase is not IncidentPhase.CLOSED:
                open_[inc.id] = inc
            elif inc.host and inc.closed_at and now - inc.closed_at < self.settings.reopen_after_s:
                closed[inc.host] = inc.outcome
        return open_, closed

    def tick_once(self, lead: Leadership) -> str:
        now = self.clock.now()
        view, records, snap = self.build_view(now)
        result = tick(view, self.policy, now, self.settings)
        for d in result.decisions:
            try:
                self._apply(d, lead, view, snap, now)
            except DrctlError as e:
                audit.warn(events.CONTROLLER_DECISION_FAILED, decision=type(d).__name__, error=str(e))
        self.state.frozen = result.frozen
        if not result.frozen:
            self._resume_fences(view, lead)
            self._recover_vms(records, lead, view, snap, now)
        self._remove_stale_copies(records, lead, view)
        if result.sentence != self.state.last_sentence:
            audit.emit(events.TICK_COMPLETED, sentence=result.sentence, decisions=len(result.decisions))
            self.echo(f"{self.name}: {result.sentence}")
            self.state.last_sentence = result.sentence
        return result.sentence

    # ------------------------------------------------------------------ VM-level recovery
    def _recover_vms(self, records: ClusterRecords, lead: Leadership, view: View, snap: Snapshot, now: float) -> None:
        """VMs stopped without a request on live hosts are started again (control/vm_recovery.py
        decides, purely; the writes go through the leader's guard like every decision)."""
        stopped = [vm_recovery.StoppedVM(e.name, h, e.state, e.reason, inv.revision)
                   for h, inv in sorted(records.inventories.items()) for e in inv.vms
                   if e.state in vm_recovery.STOPPED_STATES]
        earlier = [vm_recovery.EarlierStart(i.vm, i.created, i.revision) for i in records.intents
                   if i.kind is IntentKind.START]
        self.state.recovery_exhausted &= {s.vm for s in stopped}  # running again: report anew next time
        inp = vm_recovery.RecoveryInput(snap, stopped, earlier, view.intents, view.incidents,
                                        frozenset(self.state.recovery_exhausted))
        result = vm_recovery.decide(inp, now, self.vm_recovery, self.policy.name)
        for vm, why in result.exhausted:
            audit.warn(events.VM_RECOVERY_EXHAUSTED, vm=vm, reason=why)
            self.state.recovery_exhausted.add(vm)
        for d in result.decisions:
            try:
                if isinstance(d, WriteIntents):
                    self._write_starts(d, lead, now)
                else:
                    self._apply(d, lead, view, snap, now)
            except DrctlError as e:
                audit.warn(events.CONTROLLER_DECISION_FAILED, decision=type(d).__name__, error=str(e))
        if result.sentence:
            self.echo(f"{self.name}: {result.sentence}")

    def _write_starts(self, d: WriteIntents, lead: Leadership, now: float) -> None:
        built = [new_intent(m, d.incident, lead.term, now, intent_id=f"{d.incident}-{m.vm}") for m in d.moves]
        if create_intents(self.store, self.keys, built, guards=lead.guard()):
            inc = self._incident(d.incident)
            if inc is not None:
                self._write(lead, self.keys.incident(inc.id),
                            incident_to_json(replace(inc, intents=tuple(i.id for i in built))))
            for m in d.moves:
                audit.warn(events.VM_STOPPED_UNREQUESTED, vm=m.vm, host=m.src, reason=m.reason, incident=d.incident,
                           max_attempts=self.vm_recovery.max_attempts, window_s=self.vm_recovery.window_s)

    # ------------------------------------------------------------------ decisions
    def _write(self, lead: Leadership, key: str, value: bytes) -> bool:
        return self.store.txn(lead.guard(), [Put(key, value)])

    def _apply(self, d: Decision, lead: Leadership, view: View, snap: Snapshot, now: float) -> None:
        if isinstance(d, Freeze):
            troubled = sorted(n for n, h in snap.hosts.items() if not h.state.alive or h.state is HostState.FAILING)
            audit.warn(events.CONTROLLER_FROZE, term=lead.term, reason=d.reason, hosts=troubled)
            self.echo(f"{self.name}: FROZEN - {d.reason}")
        elif isinstance(d, Resume):
            audit.emit(events.CONTROLLER_RESUMED, term=lead.term, reason=d.reason)
        elif isinstance(d, OpenIncident):
            inc = d.incident
            if self._write(lead, self.keys.incident(inc.id), incident_to_json(inc)):
                audit.emit(events.INCIDENT_OPENED, incident=inc.id, host=inc.host, trigger=inc.reason,
                           policy=inc.policy, kind=inc.kind.value, term=lead.term)
                for piece in view.verdicts.get(inc.host, HostVerdict(inc.host, HostState.HEALTHY, "")).evidence:
                    if inc.kind is IncidentKind.RECOVER:
                        audit.emit(events.EVIDENCE_RECORDED, incident=inc.id, host=inc.host, kind=events.EvidenceSource.VERDICT,
                                   detail=piece)
        elif isinstance(d, UpdateIncident):
            before = view.incidents.get(d.incident.id)
            if (self._write(lead, self.keys.incident(d.incident.id), incident_to_json(d.incident))
                    and before is not None and before.kind is not d.incident.kind):
                audit.warn(events.INCIDENT_KIND_CHANGED, incident=d.incident.id, host=d.incident.host,
                           **{"from": before.kind.value, "to": d.incident.kind.value}, reason=d.note, term=lead.term)
        elif isinstance(d, RequestFence):
            self._fence(d, lead, view)
        elif isinstance(d, RecordProof):
            self._record_waiver(d, lead)
        elif isinstance(d, WriteIntents):
            self._write_intents(d, lead, view, snap, now)
        elif isinstance(d, CloseIncident):
            inc = view.incidents.get(d.incident)
            if inc is not None:
                closed = replace(inc, phase=IncidentPhase.CLOSED, closed_at=now, outcome=d.outcome)
                if self._close(lead, closed):
                    mine = [i for i in view.intents if i.incident == inc.id]
                    moved = sum(1 for i in mine if i.state is IntentState.DONE)
                    outcome = (events.IncidentOutcome.RESOLVED if moved == len(mine)
                               else events.IncidentOutcome.FAILED if moved == 0 else events.IncidentOutcome.PARTIAL)
                    audit.emit(events.INCIDENT_CLOSED, incident=inc.id, host=inc.host, outcome=outcome,
                               reason=d.outcome, vms_moved=moved, vms_failed=len(mine) - moved, term=lead.term)

    def _fence(self, d: RequestFence, lead: Leadership, view: View) -> None:
        """Fence in the background: an agent may take tens of seconds, ticks go on."""
        if d.host in (self.state.fencing or set()):
            return
        agent = self.fence_agents.get(d.agent)
        if not d.agent and len(self.fence_agents) == 1:  # the policy names none: the only one there is
            (name, agent), = self.fence_agents.items()
            d = replace(d, agent=name)
        inc = self._incident(d.incident)  # just written by this tick's UpdateIncident
        audit.emit(events.FENCE_REQUESTED, incident=d.incident, host=d.host, agent=d.agent, term=lead.term)
        if agent is None:
            why = (f"no fence agent named {d.agent!r} is configured" if d.agent else
                   f"the policy requires a fence and names no fence_agent; the controller has "
                   f"{len(self.fence_agents) or 'no'} fence agent(s) configured")
            self._needs_human(lead, d, inc, why)
            return
        if inc is None:
            return  # not written (we were deposed): the next leader decides again
        self._start_fence(d, agent, lead, resumed=False)

    def _resume_fences(self, view: View, lead: Leadership) -> None:
        """Finish fences nobody is carrying out (issue 12, case 10): an incident in the
        fencing phase whose host this replica is not fencing was left by a leader that
        died or was deposed before the agent answered, or whose result could not be
        written. Fencing is idempotent: the agent's `status` first, `off` only if the
        host is not off."""
        for inc in sorted(view.incidents.values(), key=lambda i: i.id):
            if inc.phase is not IncidentPhase.FENCING or inc.fenced or inc.host in (self.state.fencing or set()):
                continue
            current = self._incident(inc.id)  # the view may predate a fence result written since
            if current is None or current.phase is not IncidentPhase.FENCING or current.fenced:
                continue
            d = RequestFence(inc.id, inc.host, self.policy.evidence.fence_agent or "")
            audit.emit(events.FENCE_REQUESTED, incident=d.incident, host=d.host, agent=d.agent, term=lead.term,
                       resumed=True)
            self.echo(f"{self.name}: resuming the fencing of {d.host} for {d.incident}")
            agent = self.fence_agents.get(d.agent)
            if agent is None:
                self._needs_human(lead, d, current, f"no fence agent named {d.agent!r} is configured")
                continue
            self._start_fence(d, agent, lead, resumed=True)

    def _start_fence(self, d: RequestFence, agent: FenceAgent, lead: Leadership, resumed: bool) -> None:
        assert self.state.fencing is not None
        fencing = self.state.fencing
        fencing.add(d.host)

        def run() -> None:
            try:
                try:
                    result = self._power_off(agent, d.host, resumed)
                except Exception as e:  # noqa: BLE001 - a crashing agent is a failed fence, never a pass
                    result = FenceResult(d.host, d.agent, False, f"{type(e).__name__}: {e}")
                if result.confirmed_off:
                    audit.emit(events.FENCE_SUCCEEDED, incident=d.incident, host=d.host, agent=d.agent,
                               detail=result.detail, term=lead.term)
                    self._record_fence(d, lead, result.detail)
                else:
                    self._needs_human(lead, d, self._incident(d.incident), result.detail)
            except DrctlError as e:
                # etcd away while recording: the incident stays in fencing, and the next
                # unfrozen tick resumes it (status first), never a restart on an unwritten proof
                audit.warn(events.CONTROLLER_DECISION_FAILED, decision="RequestFence", error=str(e))
            finally:
                fencing.discard(d.host)
                self.wake.set()

        threading.Thread(target=run, name=f"fence:{d.host}", daemon=True).start()

    @staticmethod
    def _power_off(agent: FenceAgent, host: str, resumed: bool) -> FenceResult:
        """`off`; when resuming another leader's fence, `status` first: the host may be off already."""
        if resumed:
            state = agent.status(host)
            if state is PowerState.OFF:
                return FenceResult(host, agent.name, True, "status says off (fenced before this leader took over)")
        return agent.off(host)

    def _record_fence(self, d: RequestFence, lead: Leadership, detail: str) -> None:
        """Record the fence on the incident, only if it still waits for it: guarded by
        our term and by the incident's revision (a closed or handed-over incident stays so)."""
        key = self.keys.incident(d.incident)
        kv = self.store.get(key)
        if kv is None:
            return
        current = parse_incident(kv.key, kv.value)
        if current.phase is not IncidentPhase.FENCING or current.fenced:
            return
        nxt = replace(current, fenced=True, phase=IncidentPhase.AWAITING_EVIDENCE,
                      evidence=tuple(sorted({*current.evidence, EvidenceKind.FENCE.value})))
        proof = FenceProof(proof_id(d.incident, lead.term), d.host, d.incident, lead.term,
                           tuple(e for e in current.evidence if e != EvidenceKind.FENCE.value),
                           FenceBasis.OFF, d.agent, detail, self.clock.now())
        # one transaction, guarded by our term: the proof exists only with the incident
        # that asked for it, and only a current leader writes either
        if self.store.txn([*lead.guard(), Compare.mod_at(key, kv.mod_revision)],
                          [Put(key, incident_to_json(nxt)), Put(self.keys.fence_proof(d.host), proof.to_json())]):
            audit.emit(events.EVIDENCE_RECORDED, incident=d.incident, host=d.host,
                       kind=events.EvidenceSource.FENCE, detail=detail)
            self._proof_recorded(proof)

    def _record_waiver(self, d: RecordProof, lead: Leadership) -> None:
        """The policy waives fencing: record that, under our term, as this incident's proof."""
        inc = self._incident(d.proof.incident)
        if inc is None or inc.phase is not IncidentPhase.AWAITING_EVIDENCE:
            return  # moved on (or closed) since the view: the next tick decides again
        proof = replace(d.proof, id=proof_id(d.proof.incident, lead.term), term=lead.term)
        if self.store.txn([*lead.guard(), Compare.equals(self.keys.incident(inc.id), incident_to_json(inc))],
                          [Put(self.keys.fence_proof(proof.host), proof.to_json())]):
            self._proof_recorded(proof)

    def _proof_recorded(self, proof: FenceProof) -> None:
        audit.emit(events.FENCE_PROOF_RECORDED, incident=proof.incident, host=proof.host, proof=proof.id,
                   fence=proof.fence.value, term=proof.term, agent=proof.agent or None, detail=proof.detail)

    def _close(self, lead: Leadership, closed: Incident) -> bool:
        """Write the closed incident; its host's fence proof goes with it (guarded on the proof
        read), so no later restart can name it."""
        ops: list[Put | Delete] = [Put(self.keys.incident(closed.id), incident_to_json(closed))]
        guards = list(lead.guard())
        if closed.host:
            proof, rev = read_proof(self.store, self.keys, closed.host)
            if proof is not None and proof.incident == closed.id:
                ops.append(Delete(self.keys.fence_proof(closed.host)))
                guards.append(proof_guard(self.keys, closed.host, rev))
        return self.store.txn(guards, ops)

    def _incident(self, incident_id: str) -> Incident | None:
        kv = self.store.get(self.keys.incident(incident_id))
        return parse_incident(kv.key, kv.value) if kv else None

    def _needs_human(self, lead: Leadership, d: RequestFence, inc: Incident | None, why: str) -> None:
        audit.warn(events.FENCE_FAILED, incident=d.incident, host=d.host, agent=d.agent, error=why, term=lead.term)
        self.echo(f"{self.name}: fencing {d.host} failed ({why}); restarting nothing - a human must decide")
        if inc is not None:
            nxt = replace(inc, phase=IncidentPhase.NEEDS_HUMAN, reason=f"fencing failed: {why}")
            self._write(lead, self.keys.incident(inc.id), incident_to_json(nxt))

    def _write_intents(self, d: WriteIntents, lead: Leadership, view: View, snap: Snapshot, now: float) -> None:
        from drctl.planning import placement

        rules = self.policy.rules
        snap = self.policy.apply_groups(snap)
        # what this round decides on, groups applied: `drctl replay` re-plans from it
        audit.emit(events.SNAPSHOT_RECORDED, incident=d.incident, snapshot=_dump(snap), rules=_plain(rules),
                   limits=_plain(self.policy.limits), term=lead.term)
        ledger = placement.Ledger(snap)
        built = []
        proof_guards: dict[str, Compare] = {}
        for m in d.moves:
            if m.kind is IntentKind.RESTART:
                proof, rev = read_proof(self.store, self.keys, m.src)
                problem = proof_problem(proof, proof_ref=m.proof, host=m.src, incident=d.incident)
                if problem:
                    audit.warn(events.RESTART_REFUSED, incident=d.incident, vm=m.vm, src=m.src, reason=problem,
                               proof=m.proof or None)
                    continue
                proof_guards[m.src] = proof_guard(self.keys, m.src, rev)
            vm = snap.vms.get(m.vm)
            cands = placement.evaluate(vm, snap, rules, ledger, frozenset({m.src})) if vm else []
            eligible = [c.host for c in sorted(cands, key=lambda c: (-c.score, c.host)) if c.eligible]
            audit.emit(events.PLACEMENT_DECIDED, incident=d.incident, vm=m.vm, src=m.src, dst=m.dst,
                       score=next((c.score for c in cands if c.host == m.dst), None), policy=self.policy.name,
                       candidates=[{"host": c.host, "eligible": c.eligible, "score": round(c.score, 3),
                                    "reasons": list(c.reasons)} for c in cands], reason=m.reason or None)
            if vm is not None:
                ledger.reserve(vm, m.dst)
            params = IntentParams.from_limits(self.policy.limits, copy_storage=bool(vm and vm.local_disk_gib))
            built.append(new_intent(m, d.incident, lead.term, now, params, candidates=eligible,
                                    memory_mib=vm.memory_mib if vm else 0,
                                    intent_id=f"{d.incident}-{m.vm}" + (f"-r{d.round}" if d.round > 1 else "")))
        for vm_name, why in d.unplaced:
            audit.warn(events.PLACEMENT_FAILED, incident=d.incident, vm=vm_name,
                       src=snap.vms[vm_name].host if vm_name in snap.vms else "", candidates=[], reason=why)
        if d.dry_run or not built:
            return
        if create_intents(self.store, self.keys, built, guards=[*lead.guard(), *proof_guards.values()]):
            # re-read: an UpdateIncident earlier in this tick changed it since the view
            inc = self._incident(d.incident)
            if inc is not None:
                nxt = replace(inc, intents=tuple(sorted({*inc.intents, *(i.id for i in built)})))
                self._write(lead, self.keys.incident(inc.id), incident_to_json(nxt))

    def _remove_stale_copies(self, records: ClusterRecords, lead: Leadership, view: View) -> None:
        """A host that comes back after being fenced still has its old VMs defined: they
        must never run there again. A shut-off copy on a host other than the one the VM's
        placement record names, with no move of that VM in flight, is undefined once the VM
        is verified running on that host. A VM running on two hosts is contained at once
        (`_contain_duplicate`); only when no copy can be told authoritative is it just reported."""
        placed = {vm: p.host for vm, p in records.placements.items() if p.host}
        if not placed:
            return
        moving = {i.vm for i in records.intents if not i.state.terminal}
        # ordered by etcd revision, not by timestamps: the agent's and the runner's clocks differ
        last_move = {i.vm: i.revision for i in sorted(records.intents, key=lambda i: i.revision)}
        # only inventories of hosts that are alive now, and published after the VM's last
        # move, say where it runs: a dead host's last inventory, or one written just before
        # a migration finished, still lists VMs that have left
        alive = {h for h, v in view.verdicts.items() if v.state.alive}
        fresh = {h: inv for h, inv in records.inventories.items() if h in alive}
        running: dict[str, list[str]] = {}
        for host, inv in sorted(fresh.items()):
            for entry in inv.vms:
                vm = entry.name
                if entry.state == "running" and inv.revision > last_move.get(vm, 0):
                    running.setdefault(vm, []).append(host)
        acting = not self.policy.dry_run and view.etcd_healthy
        for vm, hosts in running.items():
            if len(hosts) > 1:
                self._contain_duplicate(vm, hosts, records, fresh, lead if acting else None)
        # a copy is removed only where the VM is verified to run elsewhere: its placed host's
        # fresh inventory lists it running, and nowhere else (the record alone can be wrong,
        # and the shut-off copy the only one left); never while frozen or in a dry run
        if not acting or self.state.frozen:
            return
        for host, inv in sorted(fresh.items()):
            for entry in inv.vms:
                vm = entry.name
                if (vm in placed and placed[vm] != host and vm not in moving
                        and entry.state == "shutoff" and running.get(vm) == [placed[vm]]):
                    self._undefine_stale(host, inv, vm, running.get(vm, []))

    def _contain_duplicate(self, vm: str, hosts: list[str], records: ClusterRecords,
                           fresh: Mapping[str, InventoryRecord], lead: Leadership | None) -> None:
        """A VM running on two hosts: stop every copy but the authoritative one, at once
        (drctl/control/copies.py says which); report it when that cannot be told."""
        facts = [IntentFacts(i.id, i.incident, i.vm, i.dst, i.state, i.updated) for i in records.intents]
        auth = authoritative_copy(vm, hosts, facts, records.placements)
        if (vm, tuple(hosts)) not in self.state.duplicates:
            self.state.duplicates.add((vm, tuple(hosts)))
            placed = records.placements.get(vm)
            audit.warn(events.VM_DUPLICATE_DETECTED, vm=vm, hosts=hosts, placement=placed.host if placed else None)
        if not auth.keep or lead is None:
            return  # cannot tell which copy counts, or not acting (dry run, etcd unhealthy)
        for host in hosts:
            if host == auth.keep:
                continue
            uri = fresh[host].uri if host in fresh else ""
            try:
                hv = self.connect(uri)
            except DrctlError:
                continue  # not answering now: the next tick tries again
            try:
                if not self.store.txn(lead.guard(), []):
                    return  # no longer leading: not ours to act on
                hv.destroy(vm)
                audit.warn(events.VM_DUPLICATE_STOPPED, vm=vm, host=host, kept=auth.keep, reason=auth.why,
                           incident=auth.incident or None, intent=auth.intent or None)
                self.echo(f"{self.name}: {vm} ran on {', '.join(hosts)}: stopped the copy on {host} "
                          f"({auth.why})")
            except DrctlError:
                pass
            finally:
                try:
                    hv.close()
                except DrctlError:
                    pass

    def _undefine_stale(self, host: str, inv: InventoryRecord, vm: str, running: list[str]) -> None:
        uri = inv.uri
        if not uri or host in running:
            return
        try:
            hv = self.connect(uri)
        except DrctlError:
            return  # still down: try again next tick
        try:
            hv.undefine(vm)
            audit.emit(events.VM_STALE_COPY_REMOVED, vm=vm, host=host,
                       reason="host came back after its VMs were restarted elsewhere")
        except DrctlError:
            pass
        finally:
            hv.close()


def _libvirt_connect(uri: str) -> Hypervisor:
    from drctl.hypervisor.libvirt_adapter import connect

    if not uri:
        raise HostUnreachable("no libvirt URI published")
    return connect(uri, timeout_s=3)


def _dump(snap: Snapshot) -> object:
    try:
        from drctl.model.snapshot import dump_snapshot

        return dump_snapshot(snap)
    except Exception:  # noqa: BLE001 - the trail must not lose the incident over a dump problem
        return {"hosts": sorted(snap.hosts), "vms": sorted(snap.vms)}


def _plain(obj: object) -> object:
    """A rules/limits dataclass as JSON-ready data (enums by value, tuples as lists)."""
    import dataclasses
    from enum import Enum

    def conv(v: object) -> object:
        if isinstance(v, Enum):
            return v.value
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, set, frozenset)):
            return [conv(x) for x in v]
        return v

    return conv(dataclasses.asdict(obj))  # type: ignore[call-overload]
