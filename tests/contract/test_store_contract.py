"""One contract for every Store adapter: the memory store (on a SimClock) and etcd (a real
server started by the `etcd_server` fixture). Whatever passes here, the controller may
rely on; adapter quirks are tested next to the adapter.

Time: the memory store's clock is advanced; etcd's passes for real, so the lease tests on
etcd sleep a few seconds (kept to two tests).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from drctl.clock import SimClock
from drctl.model.errors import LeaseLost, WatchCompacted
from drctl.store import Compare, Delete, EventKind, Put, Store, WatchEvent


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


def elapse(store: Store, seconds: float) -> None:
    """Let `seconds` of store time pass: advance a simulated clock, or really wait."""
    clock = getattr(store, "clock", None)
    if isinstance(clock, SimClock):
        clock.advance(seconds)
    else:
        time.sleep(seconds)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll for an asynchronous outcome (etcd watches); memory ones are already true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Recorder:
    """Collects watch events; thread-safe since etcd delivers from the watch's thread."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self._lock:
            self.events.append(event)

    def summary(self) -> list[tuple[str, str, bytes]]:
        with self._lock:
            return [(e.kind.value, e.key, e.value) for e in self.events]

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple[str, str, bytes]]:
        wait_for(lambda: len(self.events) >= n, timeout)
        return self.summary()


# ------------------------------------------------------------------ key-value


def test_put_get_delete(store: Store) -> None:
    assert store.get("a") is None
    r1 = store.put("a", b"1")
    kv = store.get("a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) == ("a", b"1", r1, r1, 0)

    r2 = store.put("a", b"2")
    assert r2 > r1
    kv = store.get("a")
    assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision) == (b"2", r1, r2)

    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a") is None
    assert store.revision() > r2  # a delete is a revision too


def test_get_prefix_is_sorted_and_carries_the_revision(store: Store) -> None:
    for key in ["hosts/c", "hosts/a", "hosts/b", "hostsX", "vms/a"]:
        store.put(key, key.encode())
    kvs, revision = store.get_prefix("hosts/")
    assert [kv.key for kv in kvs] == ["hosts/a", "hosts/b", "hosts/c"]
    assert [kv.value for kv in kvs] == [b"hosts/a", b"hosts/b", b"hosts/c"]
    assert revision == store.revision()
    assert store.get_prefix("nothing/") == ([], revision)


def test_delete_prefix_counts_and_spares_neighbours(store: Store) -> None:
    for key in ["p/1", "p/2", "p/3/x", "q/1"]:
        store.put(key, b"v")
    assert store.delete_prefix("p/") == 3
    assert [kv.key for kv in store.get_prefix("")[0]] == ["q/1"]
    assert store.delete_prefix("p/") == 0


# ------------------------------------------------------------------ transactions


def test_txn_applies_success_when_every_compare_holds(store: Store) -> None:
    r = store.put("term", b"41")
    store.put("old", b"x")
    ok = store.txn(
        [Compare.equals("term", b"41"), Compare.mod_at("term", r), Compare.absent("intent")],
        [Put("intent", b"new"), Delete("old")],
        [Put("lost", b"1")],
    )
    assert ok is True
    intent = store.get("intent")
    assert intent is not None and intent.value == b"new"
    assert store.get("old") is None and store.get("lost") is None
    # one transaction, one revision: its writes share it
    assert intent.mod_revision == store.revision()


def test_txn_applies_failure_when_a_compare_fails(store: Store) -> None:
    store.put("term", b"41")
    ok = store.txn([Compare.equals("term", b"40")], [Put("intent", b"new")], [Put("stale", b"1")])
    assert ok is False
    assert store.get("intent") is None
    stale = store.get("stale")
    assert stale is not None and stale.value == b"1"


def test_txn_compares_on_an_absent_key(store: Store) -> None:
    # value never equals on an absent key, even the empty value
    assert store.txn([Compare.equals("missing", b"")], [Put("x", b"1")]) is False
    # create and mod revisions of an absent key are 0
    assert store.txn([Compare.absent("missing"), Compare.mod_at("missing", 0)], [Put("x", b"1")]) is True
    kv = store.get("x")
    assert kv is not None
    assert store.txn([Compare.created_at("x", kv.create_revision)], []) is True
    assert store.txn([Compare.absent("x")], []) is False


def test_create_if_absent(store: Store) -> None:
    assert store.create("vms/web-1", b"hv1") is True
    assert store.create("vms/web-1", b"hv2") is False
    kv = store.get("vms/web-1")
    assert kv is not None and kv.value == b"hv1"


def test_cas_on_mod_revision(store: Store) -> None:
    r = store.put("intents/m1", b"pending")
    assert store.cas("intents/m1", r, b"checking") is True
    assert store.cas("intents/m1", r, b"migrating") is False  # stale revision
    kv = store.get("intents/m1")
    assert kv is not None and kv.value == b"checking"
    assert store.cas("intents/m1", kv.mod_revision, b"migrating") is True


# ------------------------------------------------------------------ leases


def test_keys_bound_to_a_lease_vanish_when_it_is_revoked(store: Store) -> None:
    lease = store.grant_lease(5, keepalive=False)
    assert lease.alive and lease.ttl >= 5
    store.put("hosts/hv1/health", b"healthy", lease=lease.id)
    kv = store.get("hosts/hv1/health")
    assert kv is not None and kv.lease == lease.id

    lease.revoke()
    assert store.get("hosts/hv1/health") is None
    assert lease.alive is False
    assert lease.refresh() == 0
    with pytest.raises(LeaseLost):
        store.put("hosts/hv1/health", b"healthy", lease=lease.id)


def test_lease_expires_without_refresh_but_keepalive_holds(store: Store) -> None:
    """The heartbeat contract: a silent holder's keys are deleted (and watchers see it)
    about one TTL later; a holder whose keepalive runs keeps them past several TTLs."""
    lost: list[str] = []
    silent = store.grant_lease(2, keepalive=False, on_lost=lambda: lost.append("silent"))
    kept = store.grant_lease(2, keepalive=True, on_lost=lambda: lost.append("kept"))
    store.put("hosts/hv1/health", b"healthy", lease=silent.id)
    store.put("hosts/hv2/health", b"healthy", lease=kept.id)
    seen = Recorder()
    store.watch_prefix("hosts/", seen)

    elapse(store, 5.0)  # 2.5 TTLs
    assert wait_for(lambda: store.get("hosts/hv1/health") is None, timeout=3.0)
    assert seen.wait(1) == [("delete", "hosts/hv1/health", b"")]
    assert store.get("hosts/hv2/health") is not None
    assert kept.alive

    assert silent.refresh() == 0
    assert silent.alive is False
    assert lost == ["silent"]


# ------------------------------------------------------------------ watches


def test_watch_sees_puts_and_deletes_in_order(store: Store) -> None:
    seen = Recorder()
    watch = store.watch_prefix("vms/", seen)
    store.put("vms/a", b"hv1")
    store.put("elsewhere", b"x")
    store.put("vms/b", b"hv2")
    store.delete("vms/a")
    store.txn([], [Put("vms/c", b"hv3"), Delete("vms/b")])
    expected = [
        ("put", "vms/a", b"hv1"),
        ("put", "vms/b", b"hv2"),
        ("delete", "vms/a", b""),
        ("put", "vms/c", b"hv3"),
        ("delete", "vms/b", b""),
    ]
    assert seen.wait(5) == expected
    revisions = [e.revision for e in seen.events]
    assert revisions == sorted(revisions)
    assert revisions[3] == revisions[4]  # one transaction, one revision

    watch.cancel()
    store.put("vms/d", b"hv4")
    time.sleep(0.1)
    assert len(seen.events) == 5


def test_watch_from_a_start_revision_replays_history(store: Store) -> None:
    r1 = store.put("intents/m1", b"pending")
    store.put("intents/m1", b"checking")
    store.delete("intents/m1")
    seen = Recorder()
    store.watch_prefix("intents/", seen, start_revision=r1)
    store.put("intents/m2", b"pending")
    assert seen.wait(4) == [
        ("put", "intents/m1", b"pending"),
        ("put", "intents/m1", b"checking"),
        ("delete", "intents/m1", b""),
        ("put", "intents/m2", b"pending"),
    ]
    assert seen.events[0].revision == r1


def test_watch_keeps_going_after_a_callback_raises(store: Store) -> None:
    seen = Recorder()

    def fragile(event: WatchEvent) -> None:
        seen(event)
        if event.key == "x/boom":
            raise RuntimeError("handler bug")

    store.watch_prefix("x/", fragile)
    store.put("x/boom", b"1")
    store.put("x/after", b"2")
    assert [k for _, k, _ in seen.wait(2)] == ["x/boom", "x/after"]


def test_watch_below_the_compaction_point_is_refused(store: Store) -> None:
    r1 = store.put("k", b"1")
    store.put("k", b"2")
    r3 = store.put("k", b"3")
    store.compact(r3)  # type: ignore[attr-defined]  # maintenance hook of both adapters
    with pytest.raises(WatchCompacted):
        store.watch_prefix("k", Recorder(), start_revision=r1)
    seen = Recorder()
    store.watch_prefix("k", seen, start_revision=r3)
    assert seen.wait(1) == [("put", "k", b"3")]
    assert seen.events[0].kind is EventKind.PUT
