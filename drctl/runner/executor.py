"""The migration runner: executes intents from etcd, one owner each, resumable.

Each intent moves through the state table (model.INTENT_TRANSITIONS) one handler per
state, and every change goes through `intents.transition` (checked, compare-and-swapped
under our claim, audited). For a live migration:

    pending -> checking (pre-checks at execution time) -> migrating (watched libvirt
    migration) -> verifying (where does it run? is it alive?) -> done

Transient failures are retried at the same destination with tenacity (jittered backoff,
capped, on the injected clock); then, and at once for permanent failures, the intent
goes back to pending with the next candidate destination. When the outcome of a
migration is unknown (hung peer, hung abort), the runner looks where the VM runs before
anything else; if it cannot tell, the intent stays in `migrating`, the claim is released
and a later pass (this runner or another) resolves it first.

The restart path (kind=restart, a fenced dead host) defines and starts the VM from its
stored definition on the destination, exactly once: never when any involved host runs
it, and never twice on the destination after a retry.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from drctl.audit import writer as audit

from drctl.audit import events

from drctl.control import intents
from drctl.clock import Clock
from drctl.model.errors import DrctlError, HostUnreachable, NoSuchDomain, PermanentError, TransientError
from drctl.hypervisor import UNREQUESTED, Hypervisor, JobStats, MigrationParams
from drctl.control.intents import Intent
from drctl.runner.migration import CopyMode, MigrationJob, Outcome, ProgressCallback, Result, WatchConfig
from drctl.model.cluster import EscalationStep, Host, IntentKind, IntentState, Limits
from drctl.runner.prechecks import CheckPolicy, CheckResult, DomainNeeds, domain_needs, check_destination, failed, gather, summary, tcp_reachable
from drctl.runner.storage_prep import DirPoolPreparer, StoragePreparer
from drctl.model.proof import proof_problem
from drctl.store import Compare, EventKind, Store
from drctl.store.keys import Keys
from drctl.runner.verification import (DomainRunning, GuestHealth, Resolution, Where, close_quietly, locate, probe,
                                       resolve)

S = IntentState


class PrecheckFailed(PermanentError):
    """This destination cannot take the VM now (reason says which check)."""


class DestinationHung(PermanentError):
    """The watchdog gave up on this destination: do not retry it, move on."""


class OutcomeUnknown(TransientError):
    """Cannot tell where the VM runs yet (a host does not answer)."""


class _Park(Exception):
    """Leave the intent in its state for a later pass (claim released)."""


@dataclass(frozen=True)
class RunnerConfig:
    runner_id: str
    limits: Limits = Limits()
    lease_ttl_s: int = 5
    retry_attempts: int = 3  # per destination, transient failures only
    retry_initial_s: float = 1.0
    retry_max_s: float = 15.0
    retry_total_s: float = 120.0
    resolve_attempts: int = 4  # lookups of where a VM runs before parking the intent
    # a migration parked with its source unknown and nothing on the destination fails after
    # this long in `migrating` (intent.park_expired): the source is dead or cut off, and only
    # the controller's recovery (fence, restart) can bring the VM back
    park_deadline_s: float = 60.0
    watch: WatchConfig = WatchConfig()
    checks: CheckPolicy = CheckPolicy()
    reserved_mib: Mapping[str, int] = field(default_factory=dict)  # per host, kept back from placement
    verify_timeout_s: float = 30.0
    boot_timeout_s: float = 120.0  # restarts: TCG guests boot in 4-7 s alone, far slower in a crowd
    source_idle_timeout_s: float = 60.0  # wait for an earlier (hung) job on the source to end
    min_deadline_s: float = 30.0
    rescan_s: float = 2.0  # run_forever: full rescan period besides watch wake-ups
    # a given-up migration: how long to hold the source paused for a destination that does
    # not answer before parking the intent (still held; the next pass goes on holding)
    contain_timeout_s: float = 300.0
    contain_poll_s: float = 0.5


class Runner:
    """Executes intents. Drive it with `run_forever(stop)` (a daemon) or `run_pending()`
    (one scheduling pass; the controller or a test calls it), or `execute(id)` for one
    intent synchronously."""

    def __init__(self, store: Store, keys: Keys, uris: Mapping[str, str], connect: Callable[[str], Hypervisor],
                 clock: Clock, config: RunnerConfig, *, health: GuestHealth | None = None,
                 storage: StoragePreparer | None = None, host_state: Callable[[str], Host | None] | None = None,
                 choose_next: Callable[[Intent], str | None] | None = None,
                 definitions: intents.DefinitionLookup | None = None,
                 reachable: Callable[[str, float], CheckResult] = tcp_reachable,
                 progress: ProgressCallback | None = None,
                 fenced: Callable[[str], bool] | None = None) -> None:
        # not copied: the controller passes its shared view's live mapping (hosts join as
        # their agents publish); tests pass a plain dict
        self.store, self.keys, self.uris, self._connect = store, keys, uris, connect
        self.clock, self.cfg = clock, config
        self.health = health or DomainRunning()
        self.storage = storage or DirPoolPreparer()
        self.host_state = host_state or (lambda _h: None)
        self.choose_next = choose_next
        self.definitions = definitions or intents.store_definitions(store, keys)
        self.reachable, self.progress = reachable, progress
        # is this host fenced (powered off with proof)? Then a copy it held cannot run
        self.fenced = fenced or (lambda _h: False)
        self._lease = None
        self._lease_lost = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, Future[Intent | None]] = {}
        # `_admits` decides what runs; the pool must not be a second, tighter limit: a
        # restart holds its thread while the guest boots (verifying) without holding a slot.
        # Threads are only created when needed.
        self._pool = ThreadPoolExecutor(max_workers=max(64, config.limits.max_concurrent),
                                        thread_name_prefix=f"runner:{config.runner_id}")
        self._marks: dict[str, object] = {}
        self._claims: dict[str, int] = {}  # intent id -> the lease its claim is bound to

    # ================================================================ lifecycle and scheduling
    def start(self) -> None:
        """Grant the lease our claims are bound to (kept alive in the background)."""
        if self._lease is None:
            self._lease = self.store.grant_lease(self.cfg.lease_ttl_s, keepalive=True, on_lost=self._lease_lost.set)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._lease is not None:
            try:
                self._lease.revoke()
            except DrctlError:
                pass  # it expires on its own
            self._lease = None

    def run_pending(self) -> list[str]:
        """One scheduling pass: start every open, unclaimed intent the limits admit."""
        self.start()
        with self._lock:
            self._running = {k: f for k, f in self._running.items() if not f.done()}
            open_ = intents.list_intents(self.store, self.keys)
            held = intents.claimed(self.store, self.keys)
            busy = [i for i in open_ if i.id in held or i.id in self._running]
            started = []
            for it in open_:
                if it.id in held or it.id in self._running or not self._admits(it, busy):
                    continue
                busy.append(it)
                self._running[it.id] = self._pool.submit(self.execute, it.id)
                started.append(it.id)
            return started

    def _admits(self, it: Intent, busy: list[Intent]) -> bool:
        lim = self.cfg.limits
        # a restarted guest booting (verifying) costs no more than any running VM: it
        # takes neither a cluster slot nor a destination's, so every VM of a dead host is
        # started again at once, not one boot at a time
        booting = [b for b in busy if b.kind in (IntentKind.RESTART, IntentKind.START) and b.state is S.VERIFYING]
        if len(busy) - len(booting) >= lim.max_concurrent:
            return False
        if it.kind in (IntentKind.RESTART, IntentKind.START):
            starting = [b for b in busy if b.kind in (IntentKind.RESTART, IntentKind.START) and b not in booting]
            return sum(b.dst == it.dst for b in starting) < lim.max_per_destination
        moving = [b for b in busy if b.kind is IntentKind.MIGRATE]
        return (sum(b.src == it.src for b in moving) < lim.max_per_source
                and sum(b.dst == it.dst for b in busy) < lim.max_per_destination
                and sum(b.params.bandwidth_mibs for b in moving) + it.params.bandwidth_mibs
                <= lim.bandwidth_total_mibs)

    def run_forever(self, stop: threading.Event) -> None:
        """Schedule until `stop` is set: wakes on every intent change, on every claim that
        goes (a dead runner's claims lapse with its lease: pick its intents up at once, not
        at the next rescan) and every `rescan_s`."""
        wake = threading.Event()
        watches = [self.store.watch_prefix(self.keys.intents_prefix(), lambda _ev: wake.set()),
                   self.store.watch_prefix(self.keys.intent_claims_prefix(),
                                           lambda ev: wake.set() if ev.kind is EventKind.DELETE else None)]
        try:
            while not stop.is_set():
                if self._lease_lost.is_set():
                    self._renew_lease()
                self.run_pending()
                wake.wait(self.cfg.rescan_s)
                wake.clear()
        finally:
            for w in watches:
                w.cancel()

    def _renew_lease(self) -> None:
        """Our lease expired (process paused, etcd partitioned): every claim bound to it is
        gone and the executions holding them fail their claim guards. Start over with a
        fresh lease, so this runner serves again instead of idling for ever."""
        lost = self._lease
        self._lease = None
        self._lease_lost.clear()
        self.start()
        audit.warn(events.RUNNER_LEASE_RENEWED, runner=self.cfg.runner_id,
                   old=f"{lost.id:x}" if lost is not None else None,
                   new=f"{self._lease.id:x}" if self._lease is not None else None)

    def drain(self, timeout_s: float = 600.0) -> list[Intent]:
        """Run passes until no open intent is left or nothing more can start (tests, bench, CLI)."""
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            self.run_pending()
            with self._lock:
                futures = list(self._running.values())
            if not futures:
                break
            for f in futures:
                f.result()
        return intents.list_intents(self.store, self.keys, open_only=False)

    # ================================================================ one intent
    def execute(self, intent_id: str) -> Intent | None:
        """Claim one intent and drive it as far as it goes; None if someone else holds it."""
        self.start()
        it = intents.get_intent(self.store, self.keys, intent_id)
        if it is None or it.state.terminal:
            return it
        assert self._lease is not None
        lease_id = self._lease.id
        if not intents.claim(self.store, self.keys, it.id, self.cfg.runner_id, lease_id):
            return None
        self._claims[it.id] = lease_id
        audit.bind(incident=it.incident, intent=it.id, vm=it.vm)
        try:
            if it.state is not S.PENDING:
                audit.emit(events.INTENT_RESUMED, incident=it.incident, intent=it.id, vm=it.vm,
                           state=it.state.value, term=it.term)
            it = intents.get_intent(self.store, self.keys, it.id) or it  # read after the claim
            return self._drive(it)
        except _Park:
            return intents.get_intent(self.store, self.keys, intent_id)
        except intents.IntentConflict as e:
            audit.warn(events.RUNNER_GAVE_UP, intent=intent_id, reason=str(e))
            return intents.get_intent(self.store, self.keys, intent_id)
        finally:
            self._marks.pop(intent_id, None)
            self._claims.pop(intent_id, None)
            if not self._lease_lost.is_set():
                try:
                    intents.release(self.store, self.keys, intent_id, self.cfg.runner_id, lease_id)
                except DrctlError:
                    pass  # lapses with the lease
            audit.unbind("incident", "intent", "vm")

    def _drive(self, it: Intent) -> Intent:
        while not it.state.terminal:
            if self._lease_lost.is_set():
                raise _Park()
            if it.state is S.PENDING:
                it = self._to(it, S.CHECKING, f"claimed by runner {self.cfg.runner_id}")
            elif it.state is S.CHECKING:
                it = self._on_checking(it)
            elif it.state is S.MIGRATING:
                it = self._on_migrating_resumed(it)
            elif it.state is S.VERIFYING:
                it = self._on_verifying(it)
        return it

    def _to(self, it: Intent, to: IntentState, reason: str, *, also: Sequence[Compare] = (),
            **changes: object) -> Intent:
        """The runner's one door to a state change: under our claim (and `also`)."""
        return intents.transition(self.store, self.keys, it, to, reason, self.clock.now(),
                                  guards=[self._guard(it), *also], by=self.cfg.runner_id, **changes)

    def _guard(self, it: Intent) -> Compare:
        return intents.claim_guard(self.keys, it.id, self.cfg.runner_id, self._claims.get(it.id, 0))

    def _check_claim(self, it: Intent) -> None:
        """Right before an act that cannot be taken back (migrate, define, start, destroy):
        is our claim, under the lease we took it with, still there? A runner paused past its
        lease, or a second replica with our name, must not act on an intent it lost."""
        lease_id = self._claims.get(it.id, 0)
        if self._lease_lost.is_set() or not intents.holds_claim(self.store, self.keys, it.id,
                                                                 self.cfg.runner_id, lease_id):
            raise intents.IntentConflict(f"intent {it.id}: claim of {self.cfg.runner_id} (lease {lease_id:x}) "
                                         f"lost before acting")

    # ---------------------------------------------------------------- checking: try this destination
    def _on_checking(self, it: Intent) -> Intent:
        box = [it]
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(TransientError),
                stop=stop_after_attempt(self.cfg.retry_attempts) | stop_after_delay(self.cfg.retry_total_s),
                wait=wait_exponential_jitter(multiplier=self.cfg.retry_initial_s, max=self.cfg.retry_max_s),
                sleep=self.clock.sleep, reraise=True, before_sleep=audit.retry_scheduled,
            ):
                with attempt:
                    box[0] = self._try_destination(box[0], box)
            return box[0]
        except (TransientError, PermanentError) as e:
            if isinstance(e, intents.IntentConflict):
                raise
            return self._next_destination(box[0], f"{box[0].dst}: {e}")

    def _try_destination(self, it: Intent, box: list[Intent]) -> Intent:
        """Checks, then the move; returns the intent in VERIFYING (or terminal). On failure
        the intent is back in CHECKING (kept in `box`) and the error propagates."""
        if it.kind is IntentKind.RESTART:
            return self._restart(it, box)
        if it.kind is IntentKind.START:
            return self._start_in_place(it, box)
        try:
            xml = self._source_xml(it)
        except _AlreadyThere as e:
            it = self._to(it, S.MIGRATING, f"{it.vm} already on {it.dst} (earlier attempt): {e}")
            return self._to(it, S.VERIFYING, "nothing to move")
        needs = domain_needs(xml)
        self._precheck(it, needs, with_address=True)
        dst = self._hv(it.dst)
        try:
            if it.params.copy_storage:
                audit.emit(events.STORAGE_PREPARED, intent=it.id, vm=it.vm, host=it.dst,
                           detail=self.storage.prepare(needs, dst))
        finally:
            close_quietly(dst)
        self._wait_source_idle(it)
        # marked before every attempt, not once per intent: after a given-up attempt the
        # source ran on and printed newer ticks, which must not count as the arrival's
        self._marks[it.id] = self.health.mark(it.vm)
        it = self._to(it, S.MIGRATING, "pre-checks passed", attempt=it.attempt + 1,
                      memory_mib=it.memory_mib or needs.memory_mib)
        box[0] = it
        outcome = self._migrate(it, needs.memory_mib)
        return self._after_migration(it, outcome, box)

    def _source_xml(self, it: Intent) -> str:
        src = self._hv(it.src)
        try:
            return src.domain_xml(it.vm)
        except NoSuchDomain:
            # not on its source: an earlier attempt may have moved it; find out, don't guess
            return self._definition_or_fail(it)
        finally:
            close_quietly(src)

    def _definition_or_fail(self, it: Intent) -> str:
        where = locate(self._hv, self._involved(it), it.vm)
        res, detail = resolve(where, it.src, it.dst)
        if res is Resolution.DESTINATION:
            raise _AlreadyThere(detail)
        raise PrecheckFailed(f"{it.vm} is not on its source {it.src} ({detail})")

    def _precheck(self, it: Intent, needs: DomainNeeds, with_address: bool) -> None:
        dst = self._hv(it.dst)
        try:
            facts = gather(it.dst, dst, needs, self.host_state(it.dst), self.cfg.reserved_mib.get(it.dst, 0))
        finally:
            close_quietly(dst)
        results = check_destination(facts, needs, self._incoming_mib(it), self.cfg.checks)
        if with_address:
            results.append(self.reachable(self.uris[it.dst], 2.0))
        audit.emit(events.PRECHECK_COMPLETED, intent=it.id, vm=it.vm, host=it.dst, ok=not failed(results),
                   checks={r.name: ("ok" if r.ok else r.reason) for r in results})
        if failed(results):
            raise PrecheckFailed(summary(results))

    def _incoming_mib(self, it: Intent) -> int:
        others = intents.list_intents(self.store, self.keys)
        return sum(o.memory_mib for o in others
                   if o.id != it.id and o.dst == it.dst and o.state in (S.MIGRATING, S.CHECKING)
                   and o.attempt > 0)

    def _wait_source_idle(self, it: Intent) -> None:
        """A hung earlier migration keeps the source's job (and domain lock) busy until
        libvirt's keepalive gives up; a new one would fail, so wait for it."""
        deadline = self.clock.monotonic() + self.cfg.source_idle_timeout_s
        src = self._hv(it.src)
        try:
            while src.job_stats(it.vm).active:
                if self.clock.monotonic() > deadline:
                    raise HostUnreachable(f"{it.src}: an earlier job of {it.vm} is still running")
                threading.Event().wait(self.cfg.watch.poll_s)  # real pacing; the deadline is on the clock
        except NoSuchDomain:
            pass  # the earlier job was a migration that completed: nothing left to wait for
        finally:
            close_quietly(src)

    def _migration_params(self, it: Intent) -> MigrationParams:
        p = it.params
        return MigrationParams(
            bandwidth_mibs=p.bandwidth_mibs, max_downtime_ms=p.max_downtime_ms, copy_storage=p.copy_storage,
            # post-copy can only be switched to if allowed when the migration started
            postcopy=EscalationStep.POST_COPY in p.escalation,
            postcopy_bandwidth_mibs=p.postcopy_bandwidth_mibs or p.bandwidth_mibs,
        )

    def _migrate(self, it: Intent, memory_mib: int) -> Outcome:
        params = self._migration_params(it)
        audit.emit(events.MIGRATION_STARTED, intent=it.id, incident=it.incident, vm=it.vm, src=it.src,
                   dst=it.dst, attempt=it.attempt, bandwidth_mibs=params.bandwidth_mibs,
                   max_downtime_ms=params.max_downtime_ms,
                   flags="postcopy-allowed" if params.postcopy else "precopy")
        self._check_claim(it)
        src, monitor = self._hv(it.src), self._hv(it.src)
        try:
            job = MigrationJob(
                intent=it.id, incident=it.incident, vm=it.vm, dst=it.dst, dst_uri=self.uris[it.dst], src=src,
                monitor=monitor, params=params, escalation=it.params.escalation,
                deadline_s=max(self.cfg.min_deadline_s, it.params.timeout_s_per_gib * memory_mib / 1024),
                clock=self.clock, cfg=self.cfg.watch, progress=self.progress, attempt=it.attempt)
            return job.run()
        finally:
            close_quietly(src)
            close_quietly(monitor)

    def _after_migration(self, it: Intent, out: Outcome, box: list[Intent]) -> Intent:
        if out.result is Result.COMPLETED:
            self._report_completed(it, out)
            self._mark_arrival(it)
            return self._to(it, S.VERIFYING, out.reason)
        if out.result is not Result.UNKNOWN:
            audit.emit(events.MIGRATION_FAILED, intent=it.id, incident=it.incident, vm=it.vm, src=it.src,
                       dst=it.dst, attempt=it.attempt, error=out.reason,
                       code=getattr(out.error, "libvirt_code", None),
                       transient=isinstance(out.error, TransientError))
        if out.result in (Result.HUNG, Result.UNKNOWN) and not out.postcopy:
            box[0] = it = self._contain(it)
        res, detail = self._where_now(it)
        if res is Resolution.DESTINATION:  # the error lied: it arrived
            self._mark_arrival(it)
            return self._to(it, S.VERIFYING, f"{out.reason}; but it runs on {it.dst} ({detail})")
        if res is not Resolution.SOURCE:
            return self._to(it, S.FAILED, f"{out.reason}; VM {res.value} after the attempt ({detail}): a human must look")
        if out.result is Result.NOT_CONVERGED:
            return self._to(it, S.ABORTED, f"{out.reason}; VM stays on {it.src}")
        box[0] = it = self._to(it, S.CHECKING, f"{out.reason}; VM still on {it.src}")
        if out.result in (Result.HUNG, Result.UNKNOWN):
            raise DestinationHung(out.reason)
        assert out.error is not None
        raise out.error

    def _mark_arrival(self, it: Intent) -> None:
        """Mark the guest again once it is on the destination. During a live migration the
        guest runs on the source, so anything it did before the switch-over (console ticks,
        in the lab) is the source's: only what comes after this mark shows the arrived copy
        alive. (Seen on the lab: verification accepted a tick printed during the copy, 20 ms
        after arrival, for a guest that never ticked on its new host.)"""
        self._marks[it.id] = self.health.mark(it.vm)

    def _report_completed(self, it: Intent, out: Outcome) -> None:
        stats = self._completed_stats(it)
        audit.emit(events.MIGRATION_COMPLETED, intent=it.id, incident=it.incident, vm=it.vm, src=it.src,
                   dst=it.dst, attempt=it.attempt, total_ms=stats.elapsed_ms, downtime_ms=stats.downtime_ms,
                   data_bytes=stats.data_processed, iterations=stats.memory_iteration,
                   mode=CopyMode.POST_COPY if out.postcopy else CopyMode.PRE_COPY)

    def _completed_stats(self, it: Intent) -> JobStats:
        # after post-copy the destination's statistics are empty (docs/runner.md)
        for host in (it.dst, it.src):
            try:
                hv = self._hv(host)
                try:
                    stats = hv.completed_job_stats(it.vm)
                finally:
                    close_quietly(hv)
                if stats.elapsed_ms:
                    return stats
            except DrctlError:
                continue
        return JobStats(active=False)

    def _where_now(self, it: Intent) -> tuple[Resolution, str]:
        """Where the VM runs, asking again (backoff on the clock) while a host does not answer."""
        try:
            for attempt in Retrying(retry=retry_if_exception_type(OutcomeUnknown),
                                    stop=stop_after_attempt(self.cfg.resolve_attempts),
                                    wait=wait_exponential_jitter(multiplier=1, max=8), sleep=self.clock.sleep,
                                    reraise=True, before_sleep=audit.retry_scheduled):
                with attempt:
                    where = locate(self._hv, self._involved(it), it.vm)
                    res, detail = resolve(where, it.src, it.dst)
                    if res is Resolution.UNKNOWN:
                        raise OutcomeUnknown(detail)
                    return res, detail
        except OutcomeUnknown as e:
            audit.warn(events.INTENT_OUTCOME_UNKNOWN, intent=it.id, vm=it.vm, detail=str(e))
            self._escalate_if_parked_too_long(it, where, str(e))
            raise _Park() from e
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- containment
    def _contain(self, it: Intent) -> Intent:
        """After a migration the runner gave up on (watchdog), end with exactly one copy.

        A destination libvirtd that hangs at the hand-over still holds an incoming copy, and
        when it answers again libvirt may run that copy even though the source gave up and
        runs the VM too (docs/runner.md, "A given-up migration"). So: while the destination
        does not answer (and is not fenced), the source is kept paused; once it answers and
        the source still holds the VM with no job running (the hand-over failed from the
        source's view), the destination's copy is destroyed and undefined; only then does the
        source run again. A source that does not answer, or that no longer holds the VM (the
        hand-over completed), leaves the destination's copy alone. Past `contain_timeout_s`
        the intent is parked, the source still held: the next pass resumes the holding."""
        deadline = self.clock.monotonic() + self.cfg.contain_timeout_s
        held = it.source_held
        while True:
            src_w, dst_w = probe(self._hv, it.src, it.vm), probe(self._hv, it.dst, it.vm)
            has = (Where.RUNNING, Where.PAUSED, Where.STOPPED)
            if src_w not in has:
                return it  # gone from the source (arrived, or lost) or no answer: resolution decides
            dst_gone = dst_w is Where.ABSENT or (dst_w is Where.UNKNOWN and self.fenced(it.dst))
            busy = self._source_busy(it)
            if dst_w is Where.UNKNOWN and not dst_gone:
                if src_w is Where.RUNNING and self._control_source(it, "suspend"):
                    src_w = Where.PAUSED
                if src_w is Where.PAUSED and not held:
                    held = True
                    it = intents.annotate(self.store, self.keys, it, [self._guard(it)], source_held=True)
                    audit.warn(events.MIGRATION_SOURCE_HELD, intent=it.id, incident=it.incident, vm=it.vm,
                               src=it.src, dst=it.dst,
                               detail=f"{it.dst} does not answer: its incoming copy could still run")
            elif dst_w in has and not busy:
                if self._remove_incoming(it, dst_w):
                    continue
            elif dst_gone and not busy:
                if src_w is Where.PAUSED:
                    if not self._control_source(it, "resume"):
                        raise OutcomeUnknown(f"{it.vm}: cannot resume the held source {it.src}")
                    audit.emit(events.MIGRATION_SOURCE_RELEASED, intent=it.id, incident=it.incident, vm=it.vm,
                               src=it.src, reason=f"{it.dst}: {'fenced' if dst_w is Where.UNKNOWN else 'no copy left'}")
                if it.source_held:
                    it = intents.annotate(self.store, self.keys, it, [self._guard(it)], source_held=False)
                return it
            if self.clock.monotonic() > deadline:
                audit.warn(events.INTENT_OUTCOME_UNKNOWN, intent=it.id, vm=it.vm,
                           detail=f"source {it.src} held ({src_w.value}), destination {it.dst} {dst_w.value}")
                raise _Park()
            self.clock.sleep(self.cfg.contain_poll_s)

    def _source_busy(self, it: Intent) -> bool:
        """Is libvirt on the source still in the migration job (it may yet complete it)?"""
        try:
            src = self._hv(it.src)
        except DrctlError:
            return True
        try:
            return src.job_stats(it.vm).active
        except NoSuchDomain:
            return False
        except DrctlError:
            return True
        finally:
            close_quietly(src)

    def _control_source(self, it: Intent, action: str) -> bool:
        try:
            src = self._hv(it.src)
        except DrctlError:
            return False
        try:
            getattr(src, action)(it.vm)
            return True
        except DrctlError as e:
            audit.warn(events.MIGRATION_SOURCE_HELD, intent=it.id, incident=it.incident, vm=it.vm, src=it.src,
                       dst=it.dst, detail=f"{action} failed: {e}")
            return False
        finally:
            close_quietly(src)

    def _remove_incoming(self, it: Intent, state: Where) -> bool:
        try:
            dst = self._hv(it.dst)
        except DrctlError:
            return False
        try:
            self._check_claim(it)  # raises IntentConflict, past the handlers below
            dst.destroy(it.vm)
            dst.undefine(it.vm)
            audit.warn(events.MIGRATION_INCOMING_REMOVED, intent=it.id, incident=it.incident, vm=it.vm,
                       host=it.dst, state=state.value)
            return True
        except NoSuchDomain:
            return True
        except intents.IntentConflict:
            raise
        except DrctlError as e:
            audit.warn(events.MIGRATION_SOURCE_HELD, intent=it.id, incident=it.incident, vm=it.vm, src=it.src,
                       dst=it.dst, detail=f"removing the incoming copy failed: {e}")
            return False
        finally:
            close_quietly(dst)

    def _escalate_if_parked_too_long(self, it: Intent, where: Mapping[str, Where], detail: str) -> None:
        """Source unknown and nothing anywhere else: the source died (or is cut off) mid-
        migration. Past `park_deadline_s` in `migrating`, fail the intent and say so: the
        VM is then the dead host's to recover (fence + restart), which the controller does;
        waiting longer would keep it from that for ever."""
        others = [w for h, w in where.items() if h != it.src]
        if (it.kind is not IntentKind.MIGRATE or it.state is not S.MIGRATING
                or where.get(it.src) is not Where.UNKNOWN
                or any(w not in (Where.ABSENT, Where.STOPPED) for w in others)):
            return
        parked_s = self.clock.now() - it.updated
        if parked_s < self.cfg.park_deadline_s:
            return
        audit.warn(events.INTENT_PARK_EXPIRED, incident=it.incident, intent=it.id, vm=it.vm, src=it.src, dst=it.dst,
                   parked_s=round(parked_s, 1), detail=detail)
        self._to(it, S.FAILED, f"parked {parked_s:.0f}s with {it.src} not answering and {it.vm} on no other host "
                               f"({detail}): given up; the recovery of {it.src} restarts it once fenced")

    # ---------------------------------------------------------------- resumed in migrating
    def _on_migrating_resumed(self, it: Intent) -> Intent:
        """A migration we did not start (crashed runner, parked intent): look first.

        The source libvirtd drives a peer-to-peer migration, so it can still be running
        after the runner that started it died: while it runs the VM looks "on the source"
        and would be moved again. Let it end (arrive or fail) before looking.

        A restart has no source to ask (its host was fenced and never answers): it is
        resolved by looking on every host instead (`_on_restart_resumed`)."""
        if it.kind is IntentKind.RESTART:
            return self._on_restart_resumed(it)
        try:
            self._wait_source_idle(it)
        except (TransientError, PrecheckFailed):
            pass  # cannot ask the source (down, or hung past the wait): where it runs decides
        if it.source_held or EscalationStep.POST_COPY not in it.params.escalation:
            # a given-up attempt may have left the source held and an incoming copy behind
            # (a source paused by a post-copy switch is not ours to resume: the destination
            # holds the newer state)
            it = self._contain(it)
        res, detail = self._where_now(it)
        if res is Resolution.DESTINATION:
            return self._to(it, S.VERIFYING, f"resumed: runs on {it.dst} ({detail})")
        if res is Resolution.SOURCE:
            return self._to(it, S.CHECKING, f"resumed: still on {it.src} ({detail})")
        return self._to(it, S.FAILED, f"resumed: VM {res.value} ({detail}): a human must look")

    def _on_restart_resumed(self, it: Intent) -> Intent:
        """A restart left in `migrating` by a runner that died between the decision and the
        start (or during it). Look on every host: running (or paused) exactly once on the
        destination, it started: verify; running nowhere and every live host answered:
        back to checking, where `_restart` starts it once; anywhere else: not ours."""
        where = locate(self._hv, self._involved(it), it.vm)
        detail = ", ".join(f"{h}={w.value}" for h, w in sorted(where.items()))
        copies = sorted(h for h, w in where.items() if w in (Where.RUNNING, Where.PAUSED) and h != it.src)
        if it.src in copies or where.get(it.src) in (Where.RUNNING, Where.PAUSED):
            return self._to(it, S.FAILED, f"resumed restart: {it.vm} runs on its source {it.src} ({detail})")
        if copies == [it.dst]:
            if where[it.dst] is Where.PAUSED:
                audit.warn(events.INTENT_OUTCOME_UNKNOWN, intent=it.id, vm=it.vm,
                           detail=f"resumed restart: {it.vm} paused on {it.dst} ({detail})")
                raise _Park()
            return self._to(it, S.VERIFYING, f"resumed restart: runs on {it.dst} ({detail})")
        if copies:
            return self._to(it, S.FAILED, f"resumed restart: {it.vm} runs on {', '.join(copies)} ({detail})")
        if any(w is Where.UNKNOWN for h, w in where.items() if h != it.src):
            audit.warn(events.INTENT_OUTCOME_UNKNOWN, intent=it.id, vm=it.vm, detail=detail)
            raise _Park()
        # not started (or a stopped leftover of the start): `_restart` defines and starts it once
        return self._to(it, S.CHECKING, f"resumed restart: runs nowhere ({detail}); starting it")

    # ---------------------------------------------------------------- verifying
    def _on_verifying(self, it: Intent) -> Intent:
        res, detail = self._where_now(it)
        if res is Resolution.SOURCE and it.kind is IntentKind.MIGRATE:
            return self._to(it, S.CHECKING, f"verification: VM still on {it.src} ({detail})")
        if res is not Resolution.DESTINATION:
            audit.warn(events.VM_VERIFIED, intent=it.id, vm=it.vm, host=it.dst, ok=False, detail=detail)
            return self._to(it, S.FAILED, f"verification: VM {res.value} ({detail})")
        hv = self._hv(it.dst)
        try:
            timeout = self.cfg.verify_timeout_s
            if it.kind in (IntentKind.RESTART, IntentKind.START):
                timeout = max(timeout, self.cfg.boot_timeout_s)  # a cold boot, not a warm arrival
            health = self.health.check(it.vm, it.dst, hv, self._marks.get(it.id), timeout)
        except DrctlError as e:
            health = None
            why = f"health check failed: {e}"
        finally:
            close_quietly(hv)
        ok = health is not None and health.ok
        why = health.detail if health is not None else why
        (audit.emit if ok else audit.warn)(events.VM_VERIFIED, intent=it.id, vm=it.vm, host=it.dst, ok=ok,
                                           detail=f"{detail}; {why}")
        guard = [self._guard(it)]
        # the record says where the VM is, healthy or not: anything else would hide it
        intents.set_placement(self.store, self.keys, it, it.dst, self.clock.now(), guard, healthy=ok)
        if ok:
            return self._to(it, S.DONE, f"runs only on {it.dst}; {why}")
        return self._to(it, S.FAILED, f"arrived on {it.dst} but guest unhealthy: {why}; a human must look")

    # ---------------------------------------------------------------- fallback
    def _next_destination(self, it: Intent, reason: str) -> Intent:
        tried = (*it.tried, it.dst)
        left = [c for c in it.candidates if c not in tried and c != it.src]
        nxt = left[0] if left else None
        if nxt is None and self.choose_next is not None:
            nxt = self.choose_next(_with(it, tried))
            nxt = nxt if nxt not in (*tried, it.src) else None
        if nxt is None:
            return self._to(it, S.FAILED, f"{reason}; no destination left (tried {', '.join(tried)})", tried=tried)
        it = self._to(it, S.PENDING, reason, dst=nxt, tried=tried)
        return self._to(it, S.CHECKING, f"next destination {nxt}")

    # ---------------------------------------------------------------- restart path
    def _restart(self, it: Intent, box: list[Intent]) -> Intent:
        xml = it.definition or self.definitions(it.vm)
        if not xml:
            raise PrecheckFailed(f"no stored definition for {it.vm}")
        where = locate(self._hv, self._involved(it), it.vm)
        running = sorted(h for h, w in where.items() if w is Where.RUNNING)
        # a paused copy is a copy: a migration's incoming (or stalled outgoing) domain, or a
        # guest an operator paused, runs again the moment someone resumes it
        paused = sorted(h for h, w in where.items() if w is Where.PAUSED)
        detail = ", ".join(f"{h}={w.value}" for h, w in sorted(where.items()))
        if it.src in running:
            return self._to(it, S.FAILED, f"{it.vm} still runs on {it.src}: not restarting elsewhere ({detail})")
        if running and running != [it.dst]:
            return self._to(it, S.FAILED, f"{it.vm} already runs on {', '.join(running)} ({detail})")
        if paused:
            return self._to(it, S.FAILED, f"{it.vm} is paused on {', '.join(paused)}: a copy that runs again "
                                          f"when resumed; not restarting ({detail}); a human must look")
        if any(w is Where.UNKNOWN for h, w in where.items() if h != it.src):
            raise HostUnreachable(f"cannot rule out a running copy of {it.vm}: {detail}")
        if running == [it.dst]:  # an earlier attempt started it: never twice
            it = self._to(it, S.MIGRATING, f"already running on {it.dst} from an earlier attempt")
            return self._to(it, S.VERIFYING, "no second start")
        needs = domain_needs(xml)
        self._precheck(it, needs, with_address=False)
        # The restart gate, last check before define/start: the source's fence proof, read
        # now, must be the one this intent names; the transition below is guarded on it, so
        # a proof replaced or removed after this read stops the start.
        proof, proof_rev = intents.read_proof(self.store, self.keys, it.src)
        problem = proof_problem(proof, proof_ref=it.proof, host=it.src, incident=it.incident)
        if problem:
            audit.warn(events.RESTART_REFUSED, incident=it.incident, intent=it.id, vm=it.vm, src=it.src,
                       reason=problem, proof=it.proof or None)
            return self._to(it, S.FAILED, f"restart refused: {problem}; nothing started")
        # a restart is a fresh boot: health implementations that can tell one apart
        # (console ticks start again from 1) get to mark it as such
        self._marks.setdefault(it.id, getattr(self.health, "mark_boot", self.health.mark)(it.vm))
        it = self._to(it, S.MIGRATING, f"restarting on {it.dst} from the stored definition (proof {it.proof})",
                      also=[intents.proof_guard(self.keys, it.src, proof_rev)], attempt=it.attempt + 1,
                      memory_mib=it.memory_mib or needs.memory_mib, definition=xml)
        box[0] = it
        t0 = self.clock.monotonic()
        hv = self._hv(it.dst)
        try:
            self._check_claim(it)
            hv.define(xml)
            self._check_claim(it)
            hv.start(it.vm)
        except intents.IntentConflict:
            raise  # not ours any more: whoever holds the intent now decides about this copy
        except DrctlError as e:
            _undefine_quietly(hv, it.vm)  # a stopped leftover must not be started by someone later
            box[0] = self._to(it, S.CHECKING, f"start on {it.dst} failed: {e}")
            raise
        finally:
            close_quietly(hv)
        audit.emit(events.VM_RESTARTED, incident=it.incident, intent=it.id, vm=it.vm, src=it.src, dst=it.dst,
                   attempt=it.attempt, boot_ms=int((self.clock.monotonic() - t0) * 1000))
        return self._to(it, S.VERIFYING, f"started on {it.dst}")

    # ---------------------------------------------------------------- start in place (VM-level recovery)
    def _start_in_place(self, it: Intent, box: list[Intent]) -> Intent:
        """Start a VM found stopped without a request on its (live) host, once: only while
        libvirt there still says stopped for an unrequested reason, and no host runs or holds
        a paused copy of it (drctl.control.vm_recovery decided; libvirt is asked again now)."""
        where = locate(self._hv, self._involved(it), it.vm)
        detail = ", ".join(f"{h}={w.value}" for h, w in sorted(where.items()))
        active = sorted(h for h, w in where.items() if w in (Where.RUNNING, Where.PAUSED))
        if active == [it.dst] and where[it.dst] is Where.RUNNING:
            it = self._to(it, S.MIGRATING, f"{it.vm} already runs on {it.dst} ({detail})")
            return self._to(it, S.VERIFYING, "no second start")
        if active:
            return self._to(it, S.FAILED, f"{it.vm} runs (or is paused) on {', '.join(active)}: not starting ({detail})")
        if any(w is Where.UNKNOWN for w in where.values()):
            raise HostUnreachable(f"cannot rule out a running copy of {it.vm}: {detail}")
        hv = self._hv(it.dst)
        try:
            info = hv.domain(it.vm)
            if info.reason not in UNREQUESTED:
                return self._to(it, S.FAILED, f"{it.vm} on {it.dst} is {info.state.value} "
                                              f"({info.reason.value or 'no reason'}) now: stopped on request, left alone")
            self._marks.setdefault(it.id, getattr(self.health, "mark_boot", self.health.mark)(it.vm))
            it = self._to(it, S.MIGRATING, f"starting {it.vm} on {it.dst} (stopped: {info.reason.value})",
                          attempt=it.attempt + 1, memory_mib=it.memory_mib or info.memory_mib)
            box[0] = it
            t0 = self.clock.monotonic()
            try:
                hv.start(it.vm)
            except DrctlError as e:
                # never undefined: this is the VM's own host and its only definition
                box[0] = self._to(it, S.FAILED, f"start on {it.dst} failed: {e}")
                return box[0]
        finally:
            close_quietly(hv)
        audit.emit(events.VM_STARTED_AGAIN, incident=it.incident, intent=it.id, vm=it.vm, host=it.dst,
                   reason=info.reason.value, boot_ms=int((self.clock.monotonic() - t0) * 1000))
        return self._to(it, S.VERIFYING, f"started on {it.dst}")

    # ---------------------------------------------------------------- helpers
    def _involved(self, it: Intent) -> list[str]:
        """Hosts to ask where the VM runs. A live migration can only have put it on the
        hosts it touched; a restart must rule out every host, or it could start a copy."""
        if it.kind in (IntentKind.RESTART, IntentKind.START):
            return [it.src, it.dst, *it.tried, *sorted(self.uris)]
        return [it.src, it.dst, *it.tried]

    def _hv(self, host: str) -> Hypervisor:
        if host not in self.uris:
            raise PrecheckFailed(f"unknown host {host!r}")
        return self._connect(self.uris[host])


class _AlreadyThere(PermanentError):
    pass


def _with(it: Intent, tried: tuple[str, ...]) -> Intent:
    return replace(it, tried=tried)


def _undefine_quietly(hv: Hypervisor, vm: str) -> None:
    try:
        hv.destroy(vm)
        hv.undefine(vm)
    except DrctlError:
        pass
