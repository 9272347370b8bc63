"""What only the etcd adapter can get wrong: outages of a real server.

These tests stop, pause or restart etcd, so each starts its own server instead of using
the session's shared one.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from drctl.model.errors import ConfigError, StoreUnavailable, WatchCompacted
from drctl.store.etcd import EtcdStore, connect_store
from tests.contract.test_store_contract import Recorder, wait_for
from tests.etcd_server import ETCD_BINARY, EtcdServer, free_port

pytestmark = pytest.mark.etcd

T = TypeVar("T")


@pytest.fixture
def own_etcd(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    # Depends on the session server only for its skip-if-absent check.
    server = EtcdServer(ETCD_BINARY)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def client(own_etcd: EtcdServer) -> Iterator[EtcdStore]:
    store = EtcdStore([own_etcd.endpoint], timeout=2, prefix="/t/")
    yield store
    store.close()


def until_ok(fn: Callable[[], T], timeout: float = 5.0) -> tuple[T, float]:
    """Retry `fn` through StoreUnavailable; its result and the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            return fn(), time.monotonic() - start
        except StoreUnavailable:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.05)


def test_watch_resumes_after_etcd_restart_without_missing_or_repeating(
    own_etcd: EtcdServer, client: EtcdStore
) -> None:
    seen = Recorder()
    errors: list[Exception] = []
    client.watch_prefix("w/", seen, on_error=errors.append)
    for i in range(3):
        client.put(f"w/before-{i}", b"x")
    assert len(seen.wait(3)) == 3

    own_etcd.restart()
    # A second client writes right away, while the watcher is still reconnecting: these
    # events reach the watcher only through its resume from the last revision + 1.
    writer = EtcdStore([own_etcd.endpoint], timeout=2, prefix="/t/")
    try:
        until_ok(lambda: writer.put("w/after-0", b"y"))
        writer.delete("w/before-0")
        writer.put("w/after-1", b"y")
    finally:
        writer.close()

    events = seen.wait(6)
    assert [(kind, key) for kind, key, _ in events] == [
        ("put", "w/before-0"),
        ("put", "w/before-1"),
        ("put", "w/before-2"),
        ("put", "w/after-0"),
        ("delete", "w/before-0"),
        ("put", "w/after-1"),
    ]
    revisions = [e.revision for e in seen.events]
    assert revisions == sorted(set(revisions))  # strictly increasing: nothing doubled
    time.sleep(0.2)
    assert len(seen.events) == 6 and errors == []


def test_client_recovers_quickly_after_etcd_comes_back(own_etcd: EtcdServer, client: EtcdStore) -> None:
    client.put("k", b"1")
    own_etcd.stop()
    with pytest.raises(StoreUnavailable):
        client.get("k")  # marks the only endpoint failed inside the library
    own_etcd.start()
    kv, took = until_ok(lambda: client.get("k"))
    assert kv is not None and kv.value == b"1"
    assert took < 2.0, f"client needed {took:.2f}s to use etcd again"
    assert client.healthy()


def test_unreachable_endpoint_fails_fast_and_names_it() -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        connect_store([endpoint])
    assert time.monotonic() - start < 3.0
    message = str(err.value)
    assert message.startswith(f"etcd at {endpoint} unreachable: ") and "\n" not in message

    store = EtcdStore([endpoint], timeout=2)
    try:
        with pytest.raises(StoreUnavailable, match=endpoint):
            store.put("k", b"v")
        assert store.healthy() is False
    finally:
        store.close()


def test_malformed_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        EtcdStore(["localhost"])


def test_refresh_after_a_pause_longer_than_the_ttl_reports_the_lease_lost(
    own_etcd: EtcdServer, client: EtcdStore
) -> None:
    lost = threading.Event()
    lease = client.grant_lease(2, keepalive=False, on_lost=lost.set)
    client.put("hosts/hv1/health", b"healthy", lease=lease.id)
    own_etcd.pause()
    time.sleep(3.0)
    own_etcd.resume()
    # DESIGN §3: after healing, refresh does not raise; etcd answers TTL 0.
    ttl, _ = until_ok(lease.refresh)
    assert ttl == 0
    assert lease.alive is False and lost.is_set()
    assert client.get("hosts/hv1/health") is None


def test_keepalive_declares_the_lease_lost_while_etcd_hangs(own_etcd: EtcdServer, client: EtcdStore) -> None:
    lost = threading.Event()
    lease = client.grant_lease(2, keepalive=True, on_lost=lost.set)
    own_etcd.pause()
    try:
        # refreshes time out (1 s each); after a whole TTL without success it is lost,
        # while etcd is still hung: the holder must stop acting on it now
        assert lost.wait(timeout=4.0)
        assert lease.alive is False
    finally:
        own_etcd.resume()


def test_resume_below_the_compaction_point_reports_through_on_error(client: EtcdStore) -> None:
    errors: list[Exception] = []
    seen = Recorder()
    watch = client.watch_prefix("quiet/", seen, on_error=errors.append)
    for i in range(5):
        client.put("busy", str(i).encode())
    client.compact(client.revision())
    # Simulate a dropped stream (white box: the library hands the watch one error);
    # its resume point is now below the compaction point, so events may have been lost.
    watch._queue.put((watch._generation, RuntimeError("stream dropped")))
    assert wait_for(lambda: bool(errors), timeout=3.0)
    assert isinstance(errors[0], WatchCompacted) and watch.error is errors[0]
    assert seen.summary() == []
