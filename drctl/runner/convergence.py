"""Stall detection and escalation for a live migration (pure; fed with job statistics).

Pre-copy converges when each iteration leaves less dirty memory than the one before. We
take the largest `memory_remaining` seen in each iteration as that iteration's dirty set;
the migration stalls when no iteration in the last K set a new minimum, or when no new
minimum came for `stall_s` seconds (slow iterations at a low bandwidth cap), or when the
whole migration ran past its completion timeout (per GiB).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from drctl.model.cluster import EscalationStep, escalation_steps


class IterationSample(Protocol):
    """The two figures of a migration job sample the detector needs (the hypervisor seam's
    JobStats has them); a protocol, so this pure module need not import the hypervisor seam."""

    @property
    def memory_iteration(self) -> int: ...  # pre-copy pass number, 1 = the first full pass
    @property
    def memory_remaining(self) -> int: ...  # bytes still to send in this pass


@dataclass
class StallDetector:
    k_iterations: int = 3
    stall_s: float = 20.0
    deadline_s: float = 120.0  # completion timeout for this migration (timeout_s_per_gib x size)
    started: float = 0.0
    _best: int | None = None  # smallest per-iteration dirty set seen
    _best_iteration: int = 0
    _best_at: float = 0.0
    _iteration: int = 0
    _iteration_max: int = 0
    _deadline_fired: bool = False
    history: list[tuple[int, int]] = field(default_factory=list)  # (iteration, dirty set bytes)

    def reset(self, now: float) -> None:
        """After an escalation step: give it K fresh iterations to show an effect."""
        self._best, self._best_iteration, self._best_at = None, self._iteration, now

    def observe(self, stats: IterationSample, now: float) -> str | None:
        """Feed one sample; a reason string when the migration is stalled, else None."""
        if not self._best_at:
            self._best_at = now
        if stats.memory_iteration != self._iteration:
            self._close_iteration(now)
            self._iteration, self._iteration_max = stats.memory_iteration, 0
        self._iteration_max = max(self._iteration_max, stats.memory_remaining)
        if not self._deadline_fired and now - self.started > self.deadline_s:
            self._deadline_fired = True  # once: each escalation step gets its own chance
            return f"not complete after {now - self.started:.0f}s (timeout {self.deadline_s:.0f}s)"
        if self._iteration <= 1:
            return None  # the first pass sends everything; nothing to compare yet
        if self._iteration - self._best_iteration >= self.k_iterations:
            return (f"dirty memory not shrinking for {self._iteration - self._best_iteration} iterations "
                    f"(best {_mib(self._best)} MiB)")
        if now - self._best_at > self.stall_s:
            return f"dirty memory not shrinking for {now - self._best_at:.0f}s (best {_mib(self._best)} MiB)"
        return None

    def _close_iteration(self, now: float) -> None:
        if self._iteration <= 1:  # the first pass is the whole RAM, not a dirty set
            self._best_iteration, self._best_at = self._iteration, now
            return
        self.history.append((self._iteration, self._iteration_max))
        if self._best is None or self._iteration_max < self._best:
            self._best, self._best_iteration, self._best_at = self._iteration_max, self._iteration, now


def _mib(b: int | None) -> str:
    return "?" if b is None else f"{b / 2**20:.1f}"


def next_step(escalation: tuple[str, ...], taken: list[EscalationStep],
              postcopy_started: bool) -> EscalationStep | None:
    """The next escalation step the policy allows; ABORT when the list is used up.

    After post-copy has started there is nothing left to escalate: aborting would lose
    the guest (its state is split between the hosts), so None: wait.
    """
    if postcopy_started:
        return None
    for step in escalation_steps(escalation):
        if step not in taken:
            return step
    return EscalationStep.ABORT
