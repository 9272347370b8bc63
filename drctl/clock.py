"""Clock seam: every wait and timestamp in drctl goes through a Clock, so the simulator
can run hours of cluster time in milliseconds and tests never sleep for real."""
from __future__ import annotations

import heapq
import threading
import time
from typing import Callable, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock; used in records and audit events)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards (used for deadlines)."""

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimClock:
    """Deterministic clock: `sleep` advances time instead of waiting.

    Single-threaded simulations call `advance` or `sleep`; timers registered with
    `call_at` fire in time order as time passes them.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start
        self._start = start
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._t - self._start

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def call_at(self, when: float, fn: Callable[[], object]) -> None:
        with self._lock:
            self._seq += 1
            heapq.heappush(self._timers, (when, self._seq, fn))

    def advance(self, seconds: float) -> None:
        target = self._t + seconds
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > target:
                    break
                when, _, fn = heapq.heappop(self._timers)
            self._t = max(self._t, when)
            fn()
        self._t = target
