"""etcd adapter of the Store seam, on python-etcd3 (the `cslab-etcd3` distribution).

The only module that imports `etcd3` and `grpc`: every library error becomes a drctl error
here (`StoreUnavailable`, `LeaseLost`, `WatchCompacted`, `StoreError`), so callers never
see a grpc status code.

What the library does not do and this adapter adds (docs/architecture.md):
- a background lease keepalive (the library has none) that notices a lost lease: a
  refresh answering TTL 0 (what etcd says after a partition heals) or no successful
  refresh for a whole TTL;
- prefix watches that survive a dropped stream: the library hands the callback one error
  and forgets the watch; we re-add it from the last delivered revision + 1.

Threads: each lease with keepalive has one daemon thread; each watch has one daemon
thread, and its callback runs there (never in grpc's own thread, so a slow callback
cannot stall other watches' streams).
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import etcd3
import etcd3.events
import etcd3.exceptions as etcd_exc
import etcd3.utils
import grpc

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.model.errors import (
    ConfigError,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    WatchCompacted,
)
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

# Health checks and lease keepalives get their own client with this deadline: a refresh
# that hangs for the main timeout (5 s) would outlive a 2 s lease unnoticed.
FAST_TIMEOUT = 1.0

# A failed endpoint is retried after this long (the library's default is 300 s, which
# keeps a single-member client failed for minutes after etcd is back).
ENDPOINT_RETRY = 0.5

# grpc backs off reconnects up to 120 s by default; cap it so a client notices a
# restarted etcd within about a second.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# Re-adding a dropped watch while etcd is down: bounded so recovery stays within ~1 s.
_WATCH_BACKOFF_INITIAL = 0.1
_WATCH_BACKOFF_MAX = 1.0

_UNAVAILABLE_EXC = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.NoServerAvailableError,
    etcd_exc.WatchTimedOut,
    etcd_exc.InternalServerError,
)
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """"127.0.0.1:2379" or "http://127.0.0.1:2379" -> ("127.0.0.1", 2379)."""
    rest = endpoint.strip()
    if rest.startswith("https://"):
        raise ConfigError(f"etcd endpoint {endpoint!r}: TLS is not supported yet, use http://")
    rest = rest.removeprefix("http://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"etcd endpoint {endpoint!r}: expected HOST:PORT, e.g. 127.0.0.1:2379")
    return host, int(port)


def _make_client(endpoints: list[str], timeout: float) -> etcd3.MultiEndpointEtcd3Client:
    eps = []
    for ep in endpoints:
        host, port = parse_endpoint(ep)
        eps.append(etcd3.Endpoint(host, port, secure=False, time_retry=ENDPOINT_RETRY, opts=_CHANNEL_OPTIONS))
    return etcd3.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)


def _reason(exc: BaseException) -> str:
    """The most telling text of a library error: grpc's details sit on the error the
    library translated (its own messages are just "etcd connection failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.RpcError) and hasattr(seen, "details"):
            return f"{seen.code().name}: {seen.details()}"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _span(full_prefix: bytes) -> tuple[bytes, bytes]:
    """Range [start, end) covering every key under a prefix; b"" means the whole keyspace."""
    if not full_prefix:
        return b"\0", b"\0"  # etcd: range_end "\0" = every key >= start
    return full_prefix, etcd3.utils.prefix_range_end(full_prefix)


class EtcdStore(DerivedOps):
    """Store on etcd. Keys are namespaced under `prefix` (stripped again on the way out),
    so tests and several drctl installs can share one etcd."""

    def __init__(self, endpoints: list[str], timeout: float = 5, prefix: str = "") -> None:
        if not endpoints:
            raise ConfigError("no etcd endpoints given")
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self.timeout = timeout
        self._client = _make_client(self.endpoints, timeout)
        self._fast = _make_client(self.endpoints, min(timeout, FAST_TIMEOUT))
        self._lock = threading.Lock()
        self._leases: set[EtcdLease] = set()
        self._watches: set[EtcdWatch] = set()
        self._closed = False

    # ------------------------------------------------------------ edge translation
    def _translate(self, exc: BaseException, what: str) -> StoreError:
        where = f"etcd at {', '.join(self.endpoints)}"
        if isinstance(exc, etcd_exc.RevisionCompactedError):
            return WatchCompacted(f"{where}: {what}: revision compacted (up to {exc.compacted_revision})")
        if isinstance(exc, _UNAVAILABLE_EXC):
            return StoreUnavailable(f"{where} unavailable: {what}: {_reason(exc)}")
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            if exc.code() in _UNAVAILABLE_CODES:
                return StoreUnavailable(f"{where} unavailable: {what}: {_reason(exc)}")
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (exc.details() or ""):
                return WatchCompacted(f"{where}: {what}: {exc.details()}")
            if exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in (exc.details() or ""):
                return LeaseLost(f"{where}: {what}: {exc.details()}")
        return StoreError(f"{where}: {what}: {_reason(exc)}")

    @contextlib.contextmanager
    def _edge(self, what: str) -> Iterator[None]:
        try:
            yield
        except (etcd_exc.Etcd3Exception, grpc.RpcError) as e:
            raise self._translate(e, what) from e

    def _k(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def _unk(self, raw: bytes) -> str:
        return raw.decode()[len(self.prefix):]

    def _kv(self, kv: Any) -> KV:
        return KV(self._unk(kv.key), kv.value, kv.create_revision, kv.mod_revision, kv.lease)

    # ------------------------------------------------------------ key-value
    def get(self, key: str) -> KV | None:
        with self._edge(f"get {key}"):
            resp = self._client.get_response(self._k(key))
        return self._kv(resp.kvs[0]) if resp.kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        start, end = _span(self._k(prefix))
        with self._edge(f"list {prefix}"):
            resp = self._client.get_range_response(start, end, sort_order="ascend", sort_target="key")
        return sorted((self._kv(kv) for kv in resp.kvs), key=lambda kv: kv.key), resp.header.revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        with self._edge(f"put {key}"):
            resp = self._client.put(self._k(key), value, lease=lease or None)
        return resp.header.revision

    def delete(self, key: str) -> bool:
        with self._edge(f"delete {key}"):
            return bool(self._client.delete(self._k(key)))

    def delete_prefix(self, prefix: str) -> int:
        full = self._k(prefix)
        if not full:
            raise ValueError("refusing to delete the whole etcd keyspace")
        with self._edge(f"delete prefix {prefix}"):
            return int(self._client.delete_prefix(full).deleted)

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        t = self._client.transactions
        guards = []
        for c in compares:
            if c.target == "value":
                guards.append(t.value(self._k(c.key)) == c.value)
            elif c.target == "create":
                guards.append(t.create(self._k(c.key)) == c.revision)
            elif c.target == "mod":
                guards.append(t.mod(self._k(c.key)) == c.revision)
            else:
                raise ValueError(f"unknown compare target {c.target!r}")

        def ops(batch: list[Op]) -> list[Any]:
            out = []
            for op in batch:
                if isinstance(op, Put):
                    out.append(t.put(self._k(op.key), op.value, lease=op.lease or None))
                elif isinstance(op, Delete):
                    out.append(t.delete(self._k(op.key)))
                else:
                    raise TypeError(f"not a store op: {op!r}")
            return out

        guarded = ", ".join(sorted({c.key for c in compares}))
        with self._edge(f"txn on {guarded}" if guarded else "txn"):
            succeeded, _ = self._client.transaction(compare=guards, success=ops(success), failure=ops(failure or []))
        return bool(succeeded)

    # ------------------------------------------------------------ leases
    def grant_lease(
        self, ttl: int, keepalive: bool = True, on_lost: Callable[[], None] | None = None
    ) -> EtcdLease:
        """A lease; with `keepalive` a daemon thread refreshes it every ttl/3.

        `on_lost` is called once (from the keepalive thread, or from `refresh`) when the
        lease turns out to be gone: etcd answered TTL 0, or no refresh succeeded for a
        whole TTL. It is not called for our own `revoke`.
        """
        with self._edge(f"grant lease ttl={ttl}"):
            granted = self._client.lease(ttl)
        lease = EtcdLease(self, granted.id, granted.ttl, on_lost)
        with self._lock:
            self._leases.add(lease)
        if keepalive:
            lease.start_keepalive()
        return lease

    def _refresh_lease(self, lease_id: int) -> int:
        with self._edge(f"refresh lease {lease_id:x}"):
            responses = list(self._fast.refresh_lease(lease_id))
        return int(responses[0].TTL) if responses else 0

    def _revoke_lease(self, lease_id: int) -> None:
        try:
            with self._edge(f"revoke lease {lease_id:x}"):
                self._client.revoke_lease(lease_id)
        except LeaseLost:
            pass  # already expired or revoked: the outcome the caller wanted

    # ------------------------------------------------------------ watches
    def watch_prefix(
        self,
        prefix: str,
        callback: WatchCallback,
        start_revision: int | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> EtcdWatch:
        """Call `callback(event)` for every change under prefix, from `start_revision`
        (default: changes after now), in revision order, in the watch's own thread.

        Registration is synchronous: StoreUnavailable or WatchCompacted raise here. Later
        disconnects are healed in the background (re-added from last delivered + 1,
        retrying while etcd is down). If etcd reports the revision compacted later (a
        re-add after a long outage, or a compaction racing the registration), the watch
        stops and `on_error(WatchCompacted)` is called: events were lost, so the caller
        must re-list and watch again.
        """
        current = self.revision()
        if start_revision is None:
            # Pin the start so a re-add before the first event still resumes exactly.
            start_revision = current + 1
        elif start_revision <= current:
            # etcd accepts a watch below the compaction point and only cancels it a
            # moment later; a read at that revision refuses at once, so callers get the
            # error here rather than through on_error.
            with self._edge(f"watch {prefix} from revision {start_revision}"):
                self._client.get_response(b"\0", count_only=True, revision=start_revision)
        watch = EtcdWatch(self, prefix, callback, start_revision, on_error)
        watch.start()
        with self._lock:
            self._watches.add(watch)
        return watch

    # ------------------------------------------------------------ cluster
    def revision(self) -> int:
        with self._edge("read revision"):
            # "\0" is never a drctl key: a cheap range whose header carries the revision.
            return int(self._client.get_response(b"\0", count_only=True).header.revision)

    def check(self) -> None:
        """Raise StoreUnavailable (one line naming the endpoints) unless etcd answers."""
        try:
            self._fast.status()
        except (etcd_exc.Etcd3Exception, grpc.RpcError) as e:
            raise StoreUnavailable(f"etcd at {', '.join(self.endpoints)} unreachable: {_reason(e)}") from e

    def healthy(self) -> bool:
        try:
            self.check()
        except StoreUnavailable:
            return False
        return True

    def compact(self, revision: int) -> None:
        """Drop history before `revision` (maintenance; tests use it to provoke WatchCompacted)."""
        with self._edge(f"compact to {revision}"):
            self._client.compact(revision, physical=True)

    def close(self) -> None:
        """Stop watches and keepalives (leases are left to expire, not revoked)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches, leases = list(self._watches), list(self._leases)
        for w in watches:
            w.cancel()
        for lease in leases:
            lease.stop_keepalive()
        self._client.close()
        self._fast.close()

    def _forget(self, item: EtcdLease | EtcdWatch) -> None:
        with self._lock:
            self._leases.discard(item)
            self._watches.discard(item)


class EtcdLease:
    def __init__(self, store: EtcdStore, lease_id: int, ttl: int, on_lost: Callable[[], None] | None) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._store = store
        self._on_lost = on_lost
        self._lost = threading.Event()
        self._stop = threading.Event()
        # Measured from when a refresh was *sent*: etcd restarted the TTL no earlier, so
        # "no success for a TTL" never overestimates how long the lease lives.
        self._last_ok = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return not self._lost.is_set()

    def refresh(self) -> int:
        """Keep alive once; the remaining TTL, 0 if the lease is gone (then `alive` is
        False and `on_lost` was called). Raises StoreUnavailable if etcd did not answer."""
        if self._lost.is_set():
            return 0
        sent = time.monotonic()
        ttl = self._store._refresh_lease(self.id)
        if ttl <= 0:
            self._mark_lost("etcd reports the lease expired")
            return 0
        self._last_ok = sent
        return ttl

    def revoke(self) -> None:
        self._stop.set()
        try:
            self._store._revoke_lease(self.id)
        finally:
            self._lost.set()  # deliberately ended: no on_lost
            self._store._forget(self)

    def start_keepalive(self) -> None:
        self._thread = threading.Thread(target=self._keepalive, name=f"drctl-lease-{self.id:x}", daemon=True)
        self._thread.start()

    def stop_keepalive(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=FAST_TIMEOUT + 1)

    def _keepalive(self) -> None:
        interval = max(self.ttl / 3, 0.1)
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except StoreError as e:
                if time.monotonic() - self._last_ok >= self.ttl:
                    self._mark_lost(f"no successful refresh for {self.ttl}s: {e}")
            if self._lost.is_set():
                return

    def _mark_lost(self, reason: str) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        self._stop.set()
        self._store._forget(self)
        report_lease_lost(self.id, self.ttl, reason, self._on_lost)


_STOP = object()


class EtcdWatch:
    """One prefix watch that outlives dropped streams (see EtcdStore.watch_prefix)."""

    def __init__(
        self,
        store: EtcdStore,
        prefix: str,
        callback: WatchCallback,
        start_revision: int,
        on_error: Callable[[Exception], None] | None,
    ) -> None:
        self._store = store
        self.prefix = prefix
        self._callback = callback
        self._on_error = on_error
        self._next_revision = start_revision  # first revision not yet delivered
        self._generation = 0  # responses of a replaced registration are ignored
        self._watch_id: int | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"drctl-watch-{prefix}", daemon=True)
        self.error: Exception | None = None  # set when the watch stopped on its own

    def start(self) -> None:
        self._register()
        self._thread.start()

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._queue.put(_STOP)
        watch_id = self._watch_id
        if watch_id is not None:
            # Best effort: if the stream is already gone, so is the server-side watch.
            with contextlib.suppress(etcd_exc.Etcd3Exception, grpc.RpcError, ValueError):
                self._store._client.cancel_watch(watch_id)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._store._forget(self)

    def _register(self) -> None:
        self._generation += 1
        generation = self._generation
        start, end = _span(self._store._k(self.prefix))

        def on_response(response: Any) -> None:  # runs in grpc's watcher thread: hand over only
            self._queue.put((generation, response))

        with self._store._edge(f"watch {self.prefix} from revision {self._next_revision}"):
            self._watch_id = self._store._client.add_watch_callback(
                start, on_response, range_end=end, start_revision=self._next_revision
            )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._cancelled.is_set():
                return
            generation, response = item
            if generation != self._generation:
                continue
            if isinstance(response, etcd_exc.RevisionCompactedError):
                self._stop_with(self._store._translate(response, f"watch {self.prefix}"))
                return
            if response is None or isinstance(response, Exception):
                # The library delivers one error (or None when it closed the stream
                # itself after another call failed) and forgets the watch.
                if not self._resume(response):
                    return
                continue
            self._deliver(response.events)

    def _deliver(self, events: list[Any]) -> None:
        for ev in events:
            if self._cancelled.is_set():
                return
            revision = int(ev.mod_revision)
            if revision < self._next_revision:
                continue  # already delivered before a re-add
            deleted = isinstance(ev, etcd3.events.DeleteEvent)
            event = WatchEvent(
                EventKind.DELETE if deleted else EventKind.PUT,
                self._store._unk(ev.key),
                b"" if deleted else ev.value,
                revision,
            )
            run_callback("watch", self._callback, event, prefix=self.prefix, revision=revision)
        if events:
            # Every event of a revision arrives in one response, so the next one is new.
            self._next_revision = max(self._next_revision, int(events[-1].mod_revision) + 1)

    def _resume(self, cause: Any) -> bool:
        """Re-add the watch from the next undelivered revision; False if it must stop."""
        backoff = _WATCH_BACKOFF_INITIAL
        attempts = 0
        while not self._cancelled.is_set():
            attempts += 1
            try:
                self._register()
            except WatchCompacted as e:
                self._stop_with(e)
                return False
            except StoreError:
                self._cancelled.wait(backoff)
                backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)
                continue
            audit.emit(events.STORE_WATCH_RESUMED, prefix=self.prefix, from_revision=self._next_revision,
                       attempts=attempts, cause=_reason(cause) if isinstance(cause, BaseException) else "closed")
            return True
        return False

    def _stop_with(self, error: Exception) -> None:
        self.error = error
        self._cancelled.set()
        self._store._forget(self)
        audit.warn(events.STORE_WATCH_STOPPED, prefix=self.prefix, error=str(error))
        run_callback("on_error", self._on_error, error, prefix=self.prefix)


def connect_store(endpoints: list[str], timeout: float = 5, prefix: str = "") -> EtcdStore:
    """An EtcdStore that answered a status call, else StoreUnavailable with one clear line
    ("etcd at 127.0.0.1:2379 unreachable: ...") for the CLI to print."""
    store = EtcdStore(endpoints, timeout=timeout, prefix=prefix)
    try:
        store.check()
    except StoreUnavailable:
        store.close()
        raise
    return store


def connect_store_waiting(endpoints: list[str], timeout: float, stop: threading.Event,
                          on_wait: Callable[[StoreUnavailable], None], retry_s: float = 2.0) -> EtcdStore | None:
    """`connect_store` for a daemon: while etcd does not answer, call `on_wait` once and
    try again every `retry_s` until it does; None if `stop` is set first. A daemon started
    during an etcd outage (a site powering up, etcd still booting) waits it out like one
    that was already running, instead of exiting for a supervisor to restart (issue 12,
    case 15). A malformed endpoint is still a ConfigError at once."""
    told = False
    while True:
        try:
            return connect_store(endpoints, timeout=timeout)
        except StoreUnavailable as e:
            if not told:
                on_wait(e)
                told = True
        if stop.wait(retry_s):
            return None
