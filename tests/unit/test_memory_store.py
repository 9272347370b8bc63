"""MemoryStore behaviour the contract suite cannot reach: the outage hook, keepalive
during an outage on simulated time, and delivery order when a callback writes."""
from __future__ import annotations

import pytest

from drctl.model.errors import StoreUnavailable
from drctl.store import WatchEvent
from drctl.store.memory import MemoryStore


def test_fail_makes_every_call_unavailable_until_healed(memory_store: MemoryStore) -> None:
    memory_store.put("k", b"v")
    memory_store.fail(True)
    assert memory_store.healthy() is False
    for call in (lambda: memory_store.get("k"), lambda: memory_store.put("k", b"w"),
                 lambda: memory_store.grant_lease(2), memory_store.revision):
        with pytest.raises(StoreUnavailable):
            call()
    memory_store.fail(False)
    kv = memory_store.get("k")
    assert kv is not None and kv.value == b"v"


def test_outage_longer_than_ttl_loses_a_kept_alive_lease(memory_store: MemoryStore) -> None:
    lost: list[int] = []
    lease = memory_store.grant_lease(2, keepalive=True, on_lost=lambda: lost.append(1))
    memory_store.put("hosts/hv1/health", b"ok", lease=lease.id)
    seen: list[WatchEvent] = []
    memory_store.watch_prefix("hosts/", seen.append)

    memory_store.clock.advance(10)  # keepalive holds while the store answers
    assert lease.alive and memory_store.get("hosts/hv1/health") is not None

    memory_store.fail(True)
    memory_store.clock.advance(2.5)
    assert lease.alive is False and lost == [1]
    assert seen == []  # a disconnected watcher hears nothing yet...
    memory_store.fail(False)
    assert [(e.kind.value, e.key) for e in seen] == [("delete", "hosts/hv1/health")]  # ...then all of it
    assert memory_store.lease_ids() == []


def test_writes_made_inside_a_callback_keep_every_watcher_in_order(memory_store: MemoryStore) -> None:
    first: list[str] = []
    second: list[str] = []

    def react(event: WatchEvent) -> None:
        first.append(event.key)
        if event.key == "a":
            memory_store.put("b", b"reaction")

    memory_store.watch_prefix("", react)
    memory_store.watch_prefix("", lambda e: second.append(e.key))
    memory_store.put("a", b"1")
    assert first == ["a", "b"] and second == ["a", "b"]


def test_lease_ids_and_revisions_are_deterministic() -> None:
    def run() -> tuple[list[int], int]:
        store = MemoryStore()
        ids = [store.grant_lease(5, keepalive=False).id for _ in range(3)]
        store.put("x", b"1")
        return ids, store.revision()

    assert run() == run()
