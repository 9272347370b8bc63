"""Fixtures shared by every test package.

Keep this file to fixtures more than one package needs; the lab fixture lives in
tests/lab_fixtures.py.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from drctl.clock import SimClock
from drctl.store.etcd import EtcdStore
from drctl.store.memory import MemoryStore
from tests.etcd_server import ETCD_BINARY, EtcdServer
from tests.requires import skip_unless

# ------------------------------------------------------------------ stores


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One real etcd for the whole session, started here (never assumed running).

    Tests that stop, pause or kill etcd must start their own EtcdServer instead.
    """
    skip_unless(os.access(ETCD_BINARY, os.X_OK), f"{ETCD_BINARY} not installed (apt-get install etcd-server)")
    server = EtcdServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def etcd_store(etcd_server: EtcdServer) -> Iterator[EtcdStore]:
    """An EtcdStore confined to a fresh key prefix, emptied afterwards."""
    store = EtcdStore([etcd_server.endpoint], timeout=5, prefix=f"/t-{uuid.uuid4().hex[:12]}/")
    yield store
    try:
        store.delete_prefix("")
    finally:
        store.close()


@pytest.fixture
def memory_store() -> Iterator[MemoryStore]:
    """A MemoryStore on a SimClock (`store.clock.advance(s)` lets time pass)."""
    store = MemoryStore(SimClock())
    yield store
    store.close()
