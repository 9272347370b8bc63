"""One live migration attempt: the libvirt call in a worker thread, watched from here.

The watching thread polls the source's job statistics (progress events, an optional
progress callback for a terminal), detects stalls and escalates per policy, and runs the
watchdog for hung peers: with no progress for `no_progress_s` it aborts the job (under its
own deadline); if the migration call still does not return, the outcome is UNKNOWN and the
caller must look where the VM runs (docs/runner.md: a hung destination libvirtd makes libvirt
wait with no timeout, and abortJob may block or be ignored).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable

from drctl.audit import writer as audit

from drctl.audit import events
from drctl.clock import Clock
from drctl.runner.convergence import StallDetector, next_step
from drctl.model.cluster import EscalationStep
from drctl.model.errors import DrctlError, HypervisorError, HypervisorTimeout, MigrationAborted, NoSuchDomain
from drctl.hypervisor import Hypervisor, JobStats, MigrationParams
from drctl.hypervisor.deadline import with_deadline


class Result(str, Enum):
    COMPLETED = "completed"
    FAILED = "failed"  # the call raised; `error` says why (the VM stays on the source)
    NOT_CONVERGED = "not-converged"  # aborted by policy: escalation exhausted
    HUNG = "hung"  # watchdog aborted a migration that made no progress; the call returned
    UNKNOWN = "unknown"  # the call did not return even after the abort


class CopyMode(str, Enum):
    """How memory reached the destination: all before the switch-over, or the rest after it."""

    PRE_COPY = "pre-copy"
    POST_COPY = "post-copy"


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str
    error: BaseException | None = None
    steps: tuple[EscalationStep, ...] = ()
    postcopy: bool = False


@dataclass(frozen=True)
class Progress:
    """One sample of an in-flight migration, for a progress bar."""

    intent: str
    vm: str
    dst: str
    elapsed_s: float
    iteration: int
    memory_total: int
    memory_processed: int
    memory_remaining: int
    dirty_rate_pps: int
    bps: int
    disk_total: int
    disk_remaining: int
    phase: CopyMode


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class WatchConfig:
    poll_s: float = 0.5
    no_progress_s: float = 15.0  # watchdog: no change in job statistics for this long
    abort_timeout_s: float = 8.0  # for abortJob itself, and for the call to return after it
    k_iterations: int = 3
    stall_s: float = 20.0
    progress_every_s: float = 2.0  # audit events (a callback sees every poll)
    downtime_raise_factor: int = 4  # "raise-downtime" multiplies the limit by this


@dataclass
class _Call:
    done: threading.Event
    error: BaseException | None = None


def _start(src: Hypervisor, vm: str, dst_uri: str, params: MigrationParams) -> _Call:
    call = _Call(threading.Event())

    def work() -> None:
        try:
            src.migrate(vm, dst_uri, params)
        except BaseException as e:  # noqa: BLE001 - handed to the watching thread
            call.error = e
        finally:
            call.done.set()

    threading.Thread(target=work, daemon=True, name=f"migrate:{vm}").start()
    return call


class MigrationJob:
    """Runs and watches one migration of `vm` from the `src` connection to `dst_uri`.

    `monitor` is a second connection to the source for statistics and control, so a
    blocked migrate call does not block the watching.
    """

    def __init__(self, *, intent: str, incident: str, vm: str, dst: str, dst_uri: str, src: Hypervisor,
                 monitor: Hypervisor, params: MigrationParams, escalation: tuple[str, ...], deadline_s: float,
                 clock: Clock, cfg: WatchConfig, progress: ProgressCallback | None = None,
                 attempt: int = 0) -> None:
        self.ids = {"intent": intent, "incident": incident, "vm": vm}
        self.vm, self.dst, self.dst_uri = vm, dst, dst_uri
        self.src, self.monitor = src, monitor
        self.params, self.escalation = params, escalation
        self.clock, self.cfg, self.progress, self.attempt = clock, cfg, progress, attempt
        self.detector = StallDetector(cfg.k_iterations, cfg.stall_s, deadline_s, started=clock.monotonic())
        self.steps: list[EscalationStep] = []
        self.postcopy = False
        self._restart_with: MigrationParams | None = None

    # ---------------------------------------------------------------- public
    def run(self) -> Outcome:
        params = self.params
        while True:
            outcome = self._leg(params)
            if self._restart_with is None or outcome.result is not Result.FAILED:
                return outcome
            # the abort we asked for to restart with new flags (auto-converge)
            params, self._restart_with = self._restart_with, None

    # ---------------------------------------------------------------- one migrate call
    def _leg(self, params: MigrationParams) -> Outcome:
        call = _start(self.src, self.vm, self.dst_uri, params)
        started = self.clock.monotonic()
        last_change, last_sample, last_event = started, None, 0.0
        while not call.done.wait(self.cfg.poll_s):
            now = self.clock.monotonic()
            stats = self._stats()
            sample = _fingerprint(stats)
            if sample is not None and sample != last_sample:
                last_change, last_sample = now, sample
            if stats is not None and stats.active:
                if self.progress is not None:
                    self.progress(self._progress(stats, now - started))
                if now - last_event >= self.cfg.progress_every_s:
                    last_event = now
                    audit.emit(events.MIGRATION_PROGRESSED, **self.ids, iteration=stats.memory_iteration,
                               memory_remaining=stats.memory_remaining, dirty_rate=stats.memory_dirty_rate,
                               bps=stats.memory_bps, data_processed=stats.data_processed,
                               disk_remaining=stats.disk_remaining)
                stalled = None if self.postcopy else self.detector.observe(stats, now)
                if stalled:
                    verdict = self._escalate(stalled, params)
                    if verdict is not None:
                        return self._finish(call, verdict)
            if now - last_change > self.cfg.no_progress_s:
                return self._watchdog(call, f"no progress for {now - last_change:.0f}s (hung peer?)")
        return self._finish(call, None)

    def _stats(self) -> JobStats | None:
        try:
            return self.monitor.job_stats(self.vm)
        except NoSuchDomain:
            return None  # gone from the source: the hand-over is happening
        except (HypervisorTimeout, HypervisorError):
            return None  # a hung source shows as no progress: the watchdog decides

    def _progress(self, s: JobStats, elapsed: float) -> Progress:
        return Progress(self.ids["intent"], self.vm, self.dst, elapsed, s.memory_iteration, s.memory_total,
                        s.memory_processed, s.memory_remaining, s.memory_dirty_rate, s.memory_bps,
                        s.disk_total, s.disk_remaining, CopyMode.POST_COPY if self.postcopy else CopyMode.PRE_COPY)

    # ---------------------------------------------------------------- escalation
    def _escalate(self, why: str, params: MigrationParams) -> Outcome | None:
        step = next_step(self.escalation, self.steps, self.postcopy)
        if step is None:  # post-copy is running: wait for it
            return None
        self.steps.append(step)
        audit.warn(events.MIGRATION_ESCALATED, **self.ids, step=step, reason=why, attempt=self.attempt)
        self.detector.reset(self.clock.monotonic())
        try:
            if step is EscalationStep.RAISE_DOWNTIME:
                ms = max(params.max_downtime_ms, 300) * self.cfg.downtime_raise_factor
                self._control(lambda: self.monitor.set_max_downtime(self.vm, ms), "set max downtime")
            elif step is EscalationStep.POST_COPY:
                if not params.postcopy:
                    return None  # not allowed at start: cannot switch now; next stall escalates further
                self._control(lambda: self.monitor.start_postcopy(self.vm), "start post-copy")
                self.postcopy = True  # from here the source and destination both hold the guest
            elif step is EscalationStep.AUTO_CONVERGE:
                if params.auto_converge:
                    return None
                # QEMU takes the capability only at the start: abort and start again with it
                self._restart_with = replace(params, auto_converge=True)
                self._control(lambda: self.monitor.abort_job(self.vm), "abort to restart with auto-converge")
            else:  # EscalationStep.ABORT
                self._control(lambda: self.monitor.abort_job(self.vm), "abort")
                return Outcome(Result.NOT_CONVERGED, f"did not converge: {why}; aborted per policy",
                               steps=tuple(self.steps))
        except DrctlError as e:
            audit.warn(events.MIGRATION_ESCALATED, **self.ids, step=f"{step.value}-failed", reason=str(e),
                       attempt=self.attempt)
        return None

    def _control(self, fn: Callable[[], None], what: str) -> None:
        with_deadline(fn, self.cfg.abort_timeout_s, f"{self.vm}: {what}")

    # ---------------------------------------------------------------- watchdog and endings
    def _watchdog(self, call: _Call, why: str) -> Outcome:
        audit.warn(events.MIGRATION_ABORTED, **self.ids, reason=f"watchdog: {why}", attempt=self.attempt)
        abort_note = "abort sent"
        try:
            self._control(lambda: self.monitor.abort_job(self.vm), "watchdog abort")
        except HypervisorTimeout as e:
            abort_note = f"abort hung: {e}"
        except DrctlError as e:
            abort_note = f"abort refused: {e}"
        if not call.done.wait(self.cfg.abort_timeout_s):
            return Outcome(Result.UNKNOWN, f"watchdog: {why}; {abort_note}; migrate call still blocked",
                           steps=tuple(self.steps), postcopy=self.postcopy)
        if call.error is None:
            return Outcome(Result.COMPLETED, "completed as the watchdog fired", steps=tuple(self.steps),
                           postcopy=self.postcopy)
        return Outcome(Result.HUNG, f"watchdog: {why}; {abort_note}", call.error, tuple(self.steps), self.postcopy)

    def _finish(self, call: _Call, verdict: Outcome | None) -> Outcome:
        if verdict is not None:  # we aborted (policy): wait for the call to come back
            call.done.wait(self.cfg.abort_timeout_s)
            return verdict if call.done.is_set() else replace(verdict, result=Result.UNKNOWN)
        if call.error is None:
            return Outcome(Result.COMPLETED, "migration completed", steps=tuple(self.steps), postcopy=self.postcopy)
        if self._restart_with is not None and isinstance(call.error, MigrationAborted):
            return Outcome(Result.FAILED, "restarting with auto-converge", call.error, tuple(self.steps))
        return Outcome(Result.FAILED, f"{type(call.error).__name__}: {call.error}", call.error, tuple(self.steps),
                       self.postcopy)


def _fingerprint(s: JobStats | None) -> tuple[int, ...] | None:
    if s is None or not s.active:
        return None
    return (s.data_processed, s.memory_iteration, s.memory_remaining, s.disk_remaining)
