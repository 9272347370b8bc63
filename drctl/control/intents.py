"""Intents in etcd: one VM move each, written before anything acts (docs/runner.md, "Intents").

An intent is a JSON record under `keys.intent(id)`. Its state changes only through
`transition`, which checks the state table (model.check_transition), writes with a
compare on the record's mod revision (plus any guards the caller adds: the controller's
election key, a runner's claim) and emits one `intent.state_changed` audit event.

A runner owns an intent through a claim, `keys.intent_claim(id)`, bound to the runner's
lease: when the runner dies its lease expires, the claim vanishes with it and another
runner may claim the intent and resume it from its recorded state.

The placement record (`keys.vm(name)`: where a VM must run) is written only after a move
was verified.
"""
from __future__ import annotations

import json
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

from drctl.audit import writer as audit

from drctl.audit import events
from drctl.model.errors import PermanentError
from drctl.model.cluster import (DEFAULT_ESCALATION, EscalationStep, IntentKind, IntentState, Limits, Move,
                                 check_transition, escalation_steps)
from drctl.model.proof import FenceProof, parse_proof
from drctl.model.records import PlacementRecord, RecordError, RecordReader, parse_definition, parse_placement
from drctl.store import Compare, Delete, Put, Store
from drctl.store.keys import Keys

OPEN_STATES = frozenset(s for s in IntentState if not s.terminal)
ACTIVE_STATES = frozenset({IntentState.CHECKING, IntentState.MIGRATING, IntentState.VERIFYING})


class IntentConflict(PermanentError):
    """The intent changed under us (another writer) or a guard failed (claim, leader)."""


@dataclass(frozen=True)
class IntentParams:
    """How one move may run; compiled from the policy's Limits by the controller."""

    bandwidth_mibs: int = 64
    max_downtime_ms: int = 300
    escalation: tuple[EscalationStep, ...] = DEFAULT_ESCALATION
    copy_storage: bool = False  # VM on host-local disks
    timeout_s_per_gib: float = 120.0
    postcopy_bandwidth_mibs: int = 0  # 0 = same as bandwidth_mibs

    @staticmethod
    def from_limits(limits: Limits, copy_storage: bool = False) -> "IntentParams":
        return IntentParams(int(limits.bandwidth_mibs), limits.max_downtime_ms, tuple(limits.escalation),
                            copy_storage, limits.timeout_s_per_gib)


@dataclass(frozen=True)
class Transition:
    """One line of an intent's history."""

    ts: float
    frm: str
    to: str
    attempt: int
    reason: str
    dst: str
    by: str = ""


@dataclass(frozen=True)
class Intent:
    id: str
    incident: str
    kind: IntentKind
    vm: str
    src: str
    dst: str
    state: IntentState = IntentState.PENDING
    candidates: tuple[str, ...] = ()  # fallback destinations, in order
    tried: tuple[str, ...] = ()  # destinations given up on, in order
    attempt: int = 0  # migration / restart attempts so far (all destinations)
    term: int = 0  # the leader term that wrote it
    reason: str = ""  # why it is in its state
    memory_mib: int = 0  # counted against a destination's free memory while in flight
    params: IntentParams = IntentParams()
    history: tuple[Transition, ...] = ()
    # restart intents keep the VM's definition once read: the agent record it came from can
    # vanish (a half-started copy undefined on a destination takes its agent's record along)
    definition: str = ""
    # a migration the runner gave up on left the source paused on purpose (docs/runner.md,
    # "A given-up migration"): whoever resumes the intent goes on holding it, and must not
    # mistake it for a source paused by a post-copy switch
    source_held: bool = False
    # restart intents: the id of the source's fence proof that allows it (model/proof.py); the
    # runner re-reads `fence-proofs/<src>` right before define/start and refuses without it
    proof: str = ""
    created: float = 0.0
    updated: float = 0.0
    revision: int = field(default=0, compare=False)  # etcd mod revision it was read at; not stored

    def to_json(self) -> bytes:
        d = asdict(self)
        del d["revision"]
        d["kind"], d["state"] = self.kind.value, self.state.value
        d["history"] = [{"from" if k == "frm" else k: v for k, v in asdict(h).items()} for h in self.history]
        return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()

    @staticmethod
    def from_json(raw: bytes, revision: int = 0, key: str = "") -> "Intent":
        return parse_intent(key, raw, revision)

    def audit_ids(self) -> dict[str, Any]:
        return {"incident": self.incident, "intent": self.id, "vm": self.vm, "src": self.src, "dst": self.dst}


def parse_intent(key: str, raw: bytes, revision: int = 0) -> Intent:
    """The one parser of an intent record: typed, unknown fields ignored (a newer
    writer's additions must not stop an older runner), RecordError naming the field."""
    r = RecordReader(key, raw)
    p = r.child("params")
    d = IntentParams()
    params = IntentParams(
        bandwidth_mibs=p.integer("bandwidth_mibs", d.bandwidth_mibs), max_downtime_ms=p.integer("max_downtime_ms", d.max_downtime_ms),
        escalation=escalation_steps(p.texts("escalation")) if p.has("escalation") else d.escalation,
        copy_storage=p.flag("copy_storage", d.copy_storage), timeout_s_per_gib=p.number("timeout_s_per_gib", d.timeout_s_per_gib),
        postcopy_bandwidth_mibs=p.integer("postcopy_bandwidth_mibs", d.postcopy_bandwidth_mibs))
    history = tuple(Transition(h.number("ts"), h.text("from"), h.text("to"), h.integer("attempt", 0), h.text("reason", ""),
                               h.text("dst", ""), h.text("by", "")) for h in r.objects("history"))
    return Intent(
        id=r.text("id"), incident=r.text("incident", ""), kind=r.enum("kind", IntentKind), vm=r.text("vm"),
        src=r.text("src", ""), dst=r.text("dst", ""), state=r.enum("state", IntentState),
        candidates=r.texts("candidates"), tried=r.texts("tried"), attempt=r.integer("attempt", 0), term=r.integer("term", 0),
        reason=r.text("reason", ""), memory_mib=r.integer("memory_mib", 0), params=params, history=history,
        definition=r.text("definition", ""), source_held=r.flag("source_held", False), proof=r.text("proof", ""),
        created=r.number("created", 0.0), updated=r.number("updated", 0.0),
        revision=revision,
    )


_reported: set[tuple[int, str, str]] = set()
_reported_lock = threading.Lock()


def report_unreadable(error: RecordError) -> None:
    """A record nobody can parse: audit it once (per key and reason), the caller skips it."""
    with _reported_lock:
        seen = (id(audit.sink()), error.key, str(error))  # once per audit stream
        if seen in _reported:
            return
        if len(_reported) > 10_000:  # bounded: a long-lived process must not grow with junk
            _reported.clear()
        _reported.add(seen)
    audit.warn(events.RECORD_UNREADABLE, key=error.key, field=error.field, error=str(error))


def new_intent(move: Move, incident: str, term: int, now: float, params: IntentParams = IntentParams(),
               candidates: Sequence[str] = (), memory_mib: int = 0, intent_id: str | None = None) -> Intent:
    """A pending intent for one planned move (pure)."""
    prefix = {IntentKind.RESTART: "rst", IntentKind.START: "sta"}.get(move.kind, "mig")
    return Intent(
        id=intent_id or f"{prefix}-{uuid.uuid4().hex[:12]}", incident=incident, kind=move.kind, vm=move.vm,
        src=move.src, dst=move.dst, candidates=tuple(c for c in candidates if c not in (move.dst, move.src)),
        term=term, reason=move.reason or "planned", memory_mib=memory_mib, params=params,
        proof=move.proof, created=now, updated=now,
    )


# ------------------------------------------------------------------ store operations


def create_intents(store: Store, keys: Keys, intents: Sequence[Intent], guards: Sequence[Compare] = ()) -> bool:
    """Write new intents in one transaction, guarded by `guards` (the leader's key).

    False (nothing written) when a guard fails or an intent id already exists.
    """
    compares = [*guards, *(Compare.absent(keys.intent(i.id)) for i in intents)]
    ok = store.txn(compares, [Put(keys.intent(i.id), i.to_json()) for i in intents])
    if ok:
        for i in intents:
            audit.emit(events.INTENT_CREATED, **i.audit_ids(), kind=i.kind.value, term=i.term)
    return ok


def get_intent(store: Store, keys: Keys, intent_id: str) -> Intent | None:
    kv = store.get(keys.intent(intent_id))
    return parse_intent(kv.key, kv.value, kv.mod_revision) if kv else None


def list_intents(store: Store, keys: Keys, open_only: bool = True) -> list[Intent]:
    """Intents, oldest first; only those not in a terminal state unless `open_only=False`.
    An unreadable record is reported once and skipped: it must not stop every runner."""
    kvs, _ = store.get_prefix(keys.intents_prefix())
    out = []
    for kv in kvs:
        try:
            out.append(parse_intent(kv.key, kv.value, kv.mod_revision))
        except RecordError as e:
            report_unreadable(e)
    if open_only:
        out = [i for i in out if not i.state.terminal]
    return sorted(out, key=lambda i: (i.created, i.id))


def transition(store: Store, keys: Keys, intent: Intent, to: IntentState, reason: str, now: float,
               guards: Sequence[Compare] = (), by: str = "", **changes: Any) -> Intent:
    """The one way an intent's state changes: checked, compare-and-swapped, audited.

    `changes` may set other fields in the same write (dst, candidates, tried, attempt).
    Raises ValueError for an illegal transition and IntentConflict when the record moved
    on since `intent` was read or a guard failed.
    """
    check_transition(intent.state, to)
    new = replace(intent, **changes, state=to, reason=reason, updated=now)
    line = Transition(now, intent.state.value, to.value, new.attempt, reason, new.dst, by)
    new = replace(new, history=(*intent.history, line))
    key = keys.intent(intent.id)
    if not store.txn([Compare.mod_at(key, intent.revision), *guards], [Put(key, new.to_json())]):
        raise IntentConflict(f"intent {intent.id}: changed by someone else or guard failed "
                             f"({intent.state.value} -> {to.value} not written)")
    kv = store.get(key)
    new = replace(new, revision=kv.mod_revision if kv else 0)
    if new.dst != intent.dst:
        audit.emit(events.INTENT_RETARGETED, incident=new.incident, intent=new.id, vm=new.vm, src=new.src,
                   old_dst=intent.dst, dst=new.dst, reason=reason, attempt=new.attempt)
    emit = audit.warn if to in (IntentState.FAILED, IntentState.ABORTED) else audit.emit
    emit(events.INTENT_STATE_CHANGED, **new.audit_ids(), term=new.term, attempt=new.attempt, reason=reason,
         **{"from": intent.state.value, "to": to.value})
    return new


# ------------------------------------------------------------------ claims


def annotate(store: Store, keys: Keys, intent: Intent, guards: Sequence[Compare], **changes: Any) -> Intent:
    """Change fields of an intent without a state change (compare-and-swapped like
    `transition`, not audited: the caller audits what it did)."""
    new = replace(intent, **changes)
    key = keys.intent(intent.id)
    if not store.txn([Compare.mod_at(key, intent.revision), *guards], [Put(key, new.to_json())]):
        raise IntentConflict(f"intent {intent.id}: changed by someone else or guard failed (not annotated)")
    kv = store.get(key)
    return replace(new, revision=kv.mod_revision if kv else 0)


def claim_token(runner_id: str, lease_id: int) -> bytes:
    """What a claim key holds: the runner's name and the lease the claim is bound to. Two
    replicas that share a name hold different leases, so neither can write under the
    other's claim, and a runner whose lease lapsed cannot write under its own new one."""
    return f"{runner_id}@{lease_id:x}".encode()


def claim(store: Store, keys: Keys, intent_id: str, runner_id: str, lease_id: int) -> bool:
    """Take an intent for this runner, bound to its lease; False if someone holds it."""
    return store.create(keys.intent_claim(intent_id), claim_token(runner_id, lease_id), lease=lease_id)


def claim_guard(keys: Keys, intent_id: str, runner_id: str, lease_id: int) -> Compare:
    """Guard for writes a claim holder makes: fails once the claim lapsed or moved (to
    another runner, or to another lease of a runner with the same name)."""
    return Compare.equals(keys.intent_claim(intent_id), claim_token(runner_id, lease_id))


def holds_claim(store: Store, keys: Keys, intent_id: str, runner_id: str, lease_id: int) -> bool:
    """Does this runner, under this lease, still hold the claim (read now)?"""
    kv = store.get(keys.intent_claim(intent_id))
    return kv is not None and kv.value == claim_token(runner_id, lease_id) and kv.lease == lease_id


def release(store: Store, keys: Keys, intent_id: str, runner_id: str, lease_id: int) -> bool:
    """Give a claim back (only our own)."""

    key = keys.intent_claim(intent_id)
    return store.txn([Compare.equals(key, claim_token(runner_id, lease_id))], [Delete(key)])


def claimed(store: Store, keys: Keys) -> dict[str, str]:
    """intent id -> runner id of every live claim."""
    kvs, _ = store.get_prefix(keys.intent_claims_prefix())
    return {Keys.last_segment(kv.key): kv.value.decode().rpartition("@")[0] or kv.value.decode() for kv in kvs}


# ------------------------------------------------------------------ placement records and definitions


def set_placement(store: Store, keys: Keys, intent: Intent, host: str, now: float,
                  guards: Sequence[Compare] = (), healthy: bool = True) -> None:
    """Record where a VM must run, after verification. Raises IntentConflict if a guard failed."""
    record = PlacementRecord(intent.vm, host, intent.id, intent.incident, healthy, now)
    if not store.txn(list(guards), [Put(keys.vm(intent.vm), record.to_json())]):
        raise IntentConflict(f"placement of {intent.vm} not written: guard failed (claim lost?)")


def placement(store: Store, keys: Keys, vm: str) -> str | None:
    """The host a VM's placement record names, or None."""
    kv = store.get(keys.vm(vm))
    return (parse_placement(kv.key, kv.value, vm).host or None) if kv else None


DefinitionLookup = Callable[[str], "str | None"]


def store_definitions(store: Store, keys: Keys) -> DefinitionLookup:
    """Read VM definitions the agents keep under `keys.vm_definition(vm)`: plain domain
    XML, or JSON with an `xml` field."""

    def lookup(vm: str) -> str | None:
        kv = store.get(keys.vm_definition(vm))
        if kv is None:
            return None
        try:
            return parse_definition(kv.key, kv.value, vm).xml or None
        except RecordError as e:
            report_unreadable(e)
            return None

    return lookup


# ------------------------------------------------------------------ fence proofs (the restart gate)


def read_proof(store: Store, keys: Keys, host: str) -> tuple[FenceProof | None, int]:
    """`host`'s current fence proof and the mod revision it was read at (0 when absent). An
    unreadable record backs nothing: (None, its revision), so a guard on it still holds."""
    kv = store.get(keys.fence_proof(host))
    if kv is None:
        return None, 0
    try:
        return parse_proof(kv.key, kv.value), kv.mod_revision
    except RecordError as e:
        report_unreadable(e)
        return None, kv.mod_revision


def proof_guard(keys: Keys, host: str, revision: int) -> Compare:
    """Guard for a write that acts on a proof read at `revision`: fails once it changed or went."""
    return Compare.mod_at(keys.fence_proof(host), revision)
