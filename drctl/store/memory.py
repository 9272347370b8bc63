"""In-memory adapter of the Store seam, for the simulator and unit tests.

Same semantics as etcd where drctl can tell the difference: one revision per write (a
transaction or a prefix delete is one revision), create/mod revisions, comparisons on an
absent key (create == mod == 0, a value never equals), leases with etcd's minimum TTL
whose keys vanish in one revision when the lease expires, watches that replay history
from a start revision and raise WatchCompacted below the compaction point.

Time comes from the injected Clock. Leases expire lazily (checked on every operation) and
also on timers, so a watcher sees the DELETE of an expired key without anyone writing:
with a SimClock the timers are `call_at` and fire inside `advance`; with a real clock
they are daemon `threading.Timer`s.

Watches deliver synchronously: events are queued in revision order and delivered by the
thread that caused them, before its call returns. A write made inside a callback is
delivered after that callback returns (so every watcher sees events in order), and with
several threads the one already delivering delivers for the others. Deterministic for the
simulator: no threads, no sleeps.

Test hooks: `fail(True)` simulates an outage (every client call raises StoreUnavailable,
lease keepalives stop succeeding, watch events are held back and delivered after
`fail(False)`, as a resumed etcd watch would); `compact(revision)` drops history.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from drctl.clock import Clock, SystemClock
from drctl.model.errors import LeaseLost, StoreError, StoreUnavailable, WatchCompacted
from drctl.store import (
    KV,
    Compare,
    Delete,
    EventKind,
    Op,
    Put,
    WatchCallback,
    WatchEvent,
)
from drctl.store._shared import DerivedOps, report_lease_lost, run_callback

MIN_LEASE_TTL = 2  # etcd's own minimum with default election timeouts (docs/architecture.md)
_FIRST_LEASE_ID = 0x7E57_0000_0001  # deterministic ids that still look like etcd's


@dataclass
class _LeaseState:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryStore(DerivedOps):
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._data: dict[str, KV] = {}
        self._revision = 1  # etcd's revision of an empty store
        self._history: list[WatchEvent] = []
        self._compacted = 0
        self._leases: dict[int, _LeaseState] = {}
        self._handles: dict[int, MemoryLease] = {}
        self._next_lease_id = _FIRST_LEASE_ID
        self._watches: list[MemoryWatch] = []
        self._pending: deque[tuple[MemoryWatch, WatchEvent]] = deque()
        self._delivering = False
        self._failed = False

    # ------------------------------------------------------------ test hooks
    def fail(self, failed: bool = True) -> None:
        """Simulate an outage (True) or its end (False)."""
        with self._lock:
            self._failed = failed
        if not failed:
            self._drain()

    def compact(self, revision: int) -> None:
        """Forget history before `revision`: watches from earlier raise WatchCompacted."""
        with self._lock:
            self._check()
            self._compacted = max(self._compacted, revision)
            cut = bisect.bisect_left(self._history, revision, key=lambda e: e.revision)
            del self._history[:cut]

    # ------------------------------------------------------------ internals
    def _check(self) -> None:
        """Every client call starts here (lock held): outage, then overdue leases."""
        if self._failed:
            raise StoreUnavailable("memory store unavailable (simulated outage)")
        self._expire_due()

    def _expire_due(self) -> None:
        now = self.clock.now()
        for lease_id in [i for i, s in self._leases.items() if s.expires_at <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        """Remove a lease and, in one revision like etcd, every key bound to it."""
        state = self._leases.pop(lease_id)
        self._apply([Delete(k) for k in sorted(state.keys)])

    def _apply(self, ops: list[Op]) -> int:
        """Apply writes as one revision (lock held); the new store revision."""
        revision = self._revision + 1
        changed = False
        for op in ops:
            old = self._data.get(op.key)
            if old is not None and old.lease in self._leases:
                self._leases[old.lease].keys.discard(op.key)
            if isinstance(op, Put):
                created = old.create_revision if old is not None else revision
                self._data[op.key] = KV(op.key, op.value, created, revision, op.lease)
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                self._record(WatchEvent(EventKind.PUT, op.key, op.value, revision))
                changed = True
            elif old is not None:
                del self._data[op.key]
                self._record(WatchEvent(EventKind.DELETE, op.key, b"", revision))
                changed = True
        if changed:
            self._revision = revision
        return self._revision

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        for w in self._watches:
            if event.key.startswith(w.prefix):
                self._pending.append((w, event))

    def _validate_writes(self, ops: list[Op]) -> None:
        keys = [op.key for op in ops if isinstance(op, Put)]
        if len(keys) != len(set(keys)):
            raise StoreError(f"duplicate key in one transaction: {sorted(keys)}")  # etcd refuses too
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseLost(f"memory store: put {op.key}: lease {op.lease:x} not found")

    def _holds(self, c: Compare) -> bool:
        kv = self._data.get(c.key)
        if c.target == "value":
            return kv is not None and kv.value == c.value
        if c.target == "create":
            return (kv.create_revision if kv else 0) == c.revision
        if c.target == "mod":
            return (kv.mod_revision if kv else 0) == c.revision
        raise ValueError(f"unknown compare target {c.target!r}")

    def _drain(self) -> None:
        """Deliver queued events in order, unless another frame is already doing so."""
        with self._lock:
            if self._delivering:
                return
            self._delivering = True
        try:
            while True:
                with self._lock:
                    if self._failed or not self._pending:
                        return
                    watch, event = self._pending.popleft()
                watch._deliver(event)
        finally:
            with self._lock:
                self._delivering = False

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        call_at = getattr(self.clock, "call_at", None)
        if call_at is not None:
            call_at(self.clock.now() + delay, fn)
        else:
            timer = threading.Timer(delay, fn)
            timer.daemon = True
            timer.start()

    def _expiry_timer(self, lease_id: int) -> None:
        with self._lock:
            state = self._leases.get(lease_id)
            if state is None:
                return
            remaining = state.expires_at - self.clock.now()
            if remaining <= 0:
                self._drop_lease(lease_id)
            else:  # refreshed since this timer was set
                self._schedule(remaining, lambda: self._expiry_timer(lease_id))
        self._drain()

    # ------------------------------------------------------------ key-value
    def get(self, key: str) -> KV | None:
        with self._lock:
            self._check()
            kv = self._data.get(key)
        self._drain()
        return kv

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        with self._lock:
            self._check()
            kvs = sorted((kv for k, kv in self._data.items() if k.startswith(prefix)), key=lambda kv: kv.key)
            revision = self._revision
        self._drain()
        return kvs, revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return self._write([Put(key, value, lease)])

    def delete(self, key: str) -> bool:
        with self._lock:
            self._check()
            existed = key in self._data
            self._apply([Delete(key)])
        self._drain()
        return existed

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            self._check()
            keys = sorted(k for k in self._data if k.startswith(prefix))
            self._apply([Delete(k) for k in keys])
        self._drain()
        return len(keys)

    def _write(self, ops: list[Op]) -> int:
        with self._lock:
            self._check()
            self._validate_writes(ops)
            revision = self._apply(ops)
        self._drain()
        return revision

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        with self._lock:
            self._check()
            held = all(self._holds(c) for c in compares)
            ops = success if held else (failure or [])
            self._validate_writes(ops)
            self._apply(ops)
        self._drain()
        return held

    # ------------------------------------------------------------ leases
    def grant_lease(
        self, ttl: int, keepalive: bool = True, on_lost: Callable[[], None] | None = None
    ) -> MemoryLease:
        """A lease on the store's clock; with `keepalive` it is refreshed every ttl/3 of
        clock time (timers, see the module doc) while the store is not failed. `on_lost`
        is called once when the lease turns out gone (refresh found it expired, or the
        keepalive could not refresh for a whole TTL); not for our own revoke."""
        with self._lock:
            self._check()
            ttl = max(int(ttl), MIN_LEASE_TTL)
            lease_id = self._next_lease_id
            self._next_lease_id += 1
            self._leases[lease_id] = _LeaseState(ttl, self.clock.now() + ttl)
            handle = MemoryLease(self, lease_id, ttl, on_lost)
            self._handles[lease_id] = handle
        self._schedule(ttl, lambda: self._expiry_timer(lease_id))
        if keepalive:
            handle.start_keepalive()
        return handle

    def lease_ids(self) -> list[int]:
        """Leases the store still holds (inspection for tests and the simulator)."""
        with self._lock:
            self._expire_due()
            ids = sorted(self._leases)
        self._drain()
        return ids

    # ------------------------------------------------------------ watches
    def watch_prefix(
        self,
        prefix: str,
        callback: WatchCallback,
        start_revision: int | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> MemoryWatch:
        """Deliver every change under prefix from `start_revision` (default: after now).

        Raises WatchCompacted if history before `start_revision` was compacted. A memory
        watch never drops, so `on_error` (accepted for parity with etcd) is never called.
        """
        with self._lock:
            self._check()
            start = self._revision + 1 if start_revision is None else start_revision
            if start < self._compacted:
                raise WatchCompacted(f"memory store: revision {start} compacted (up to {self._compacted})")
            watch = MemoryWatch(self, prefix, callback, on_error)
            first = bisect.bisect_left(self._history, start, key=lambda e: e.revision)
            self._pending.extend((watch, e) for e in self._history[first:] if e.key.startswith(prefix))
            self._watches.append(watch)
        self._drain()
        return watch

    def _cancel_watch(self, watch: MemoryWatch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)
            self._pending = deque(p for p in self._pending if p[0] is not watch)

    # ------------------------------------------------------------ cluster
    def revision(self) -> int:
        with self._lock:
            self._check()
            revision = self._revision
        self._drain()
        return revision

    def healthy(self) -> bool:
        with self._lock:
            return not self._failed

    def close(self) -> None:
        """Stop watches and keepalives; the data stays (other clients may share it)."""
        with self._lock:
            watches, handles = list(self._watches), list(self._handles.values())
        for w in watches:
            w.cancel()
        for h in handles:
            h.stop_keepalive()


class MemoryLease:
    def __init__(self, store: MemoryStore, lease_id: int, ttl: int, on_lost: Callable[[], None] | None) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._store = store
        self._on_lost = on_lost
        self._lost = False
        self._keepalive = False
        self._last_ok = store.clock.now()

    @property
    def alive(self) -> bool:
        return not self._lost

    def refresh(self) -> int:
        """Keep alive once; the TTL, or 0 if the lease is gone. StoreUnavailable if failed."""
        if self._lost:
            return 0
        store = self._store
        with store._lock:
            store._check()
            state = store._leases.get(self.id)
            if state is not None:
                now = store.clock.now()
                state.expires_at = now + self.ttl
                self._last_ok = now
        store._drain()
        if state is None:
            self._mark_lost("lease expired")
            return 0
        return self.ttl

    def revoke(self) -> None:
        store = self._store
        self._keepalive = False
        try:
            with store._lock:
                store._check()
                if self.id in store._leases:
                    store._drop_lease(self.id)
        finally:
            # Deliberately ended (no on_lost); if the store was down, it expires unrefreshed.
            self._lost = True
            with store._lock:
                store._handles.pop(self.id, None)
        store._drain()

    def start_keepalive(self) -> None:
        self._keepalive = True
        self._store._schedule(self.ttl / 3, self._tick)

    def stop_keepalive(self) -> None:
        self._keepalive = False

    def _tick(self) -> None:
        if not self._keepalive or self._lost:
            return
        try:
            self.refresh()
        except StoreUnavailable as e:
            if self._store.clock.now() - self._last_ok >= self.ttl:
                self._mark_lost(f"no successful refresh for {self.ttl}s: {e}")
        if self._keepalive and not self._lost:
            self._store._schedule(self.ttl / 3, self._tick)

    def _mark_lost(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._keepalive = False
        with self._store._lock:
            self._store._handles.pop(self.id, None)
        report_lease_lost(self.id, self.ttl, reason, self._on_lost)


class MemoryWatch:
    def __init__(
        self,
        store: MemoryStore,
        prefix: str,
        callback: WatchCallback,
        on_error: Callable[[Exception], None] | None,
    ) -> None:
        self.prefix = prefix
        self._store = store
        self._callback = callback
        self._on_error = on_error
        self._cancelled = False
        self.error: Exception | None = None  # parity with EtcdWatch; never set here

    def cancel(self) -> None:
        self._cancelled = True
        self._store._cancel_watch(self)

    def _deliver(self, event: WatchEvent) -> None:
        if self._cancelled:
            return
        run_callback("watch", self._callback, event, prefix=self.prefix, revision=event.revision)
