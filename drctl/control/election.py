"""Leader election on the Store, etcd's own recipe (docs/controller.md, "Election").

Each candidate creates `<prefix>leader/<lease-hex>` under its own lease, only if absent.
The candidate whose key has the lowest create revision leads; every other one watches its
predecessor's key and re-checks when it goes. The leader's **term** is its key's create
revision: it only grows, and `guard()` is a compare on it, so any write a deposed leader
attempts (its lease expired and its key vanished) fails inside etcd itself.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.clock import Clock, SystemClock
from drctl.model.errors import LeaseLost, StoreError
from drctl.store import Compare, Lease, Store, Watch, WatchEvent, EventKind
from drctl.store.keys import Keys


@dataclass(frozen=True)
class Leadership:
    key: str
    term: int  # create revision of our election key

    def guard(self) -> list[Compare]:
        """Compares that hold only while we still lead."""
        return [Compare.created_at(self.key, self.term)]


class Election:
    """Campaign for leadership; `wait_for_leadership` blocks until we lead (or stop)."""

    def __init__(self, store: Store, keys: Keys, name: str, ttl: int = 2, clock: Clock | None = None,
                 on_deposed: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.keys = keys
        self.name = name
        self.ttl = ttl
        self.clock = clock or SystemClock()
        self.on_deposed = on_deposed
        self._lease: Lease | None = None
        self._key = ""
        self._rev = 0
        self._changed = threading.Event()
        self._watch: Watch | None = None
        self._deposed_reason = ""
        # store revision of our latest candidate listing, and the create revision of the
        # newest election key seen leading that was not ours
        self.seen_rev = 0
        self.other_leader_rev = 0

    # ------------------------------------------------------------------ campaign
    def campaign(self) -> None:
        """Register as a candidate (a fresh lease and key)."""
        self._deposed_reason = ""
        self._lease = self.store.grant_lease(self.ttl, keepalive=True, on_lost=self._lease_lost)
        self._key = self.keys.leader(self._lease.id)
        value = json.dumps({"name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                            "since": self.clock.now()}).encode()
        try:
            if not self.store.create(self._key, value, lease=self._lease.id):
                raise StoreError(f"election key {self._key} already exists")
            kv = self.store.get(self._key)
            if kv is None:
                raise LeaseLost(f"election key {self._key} vanished right after creation")
        except StoreError:
            # half a candidacy (etcd went away between the lease and the key): drop it, so
            # the next campaign starts clean; a key that did land goes with the lease
            self.resign()
            raise
        self._rev = kv.create_revision
        audit.emit(events.ELECTION_CAMPAIGNED, candidate=self.name, key=self._key, revision=self._rev)

    def _lease_lost(self) -> None:
        self._deposed_reason = "election lease lost"
        self._changed.set()
        if self.on_deposed:
            self.on_deposed(self._deposed_reason)

    @property
    def lease(self) -> Lease | None:
        return self._lease

    @property
    def deposed_reason(self) -> str:
        """Why this candidacy ended ("election lease lost", "election key gone"), or ""."""
        return self._deposed_reason

    def candidates(self) -> list[tuple[int, str, bytes]]:
        kvs, self.seen_rev = self.store.get_prefix(self.keys.leader_prefix())
        return sorted((kv.create_revision, kv.key, kv.value) for kv in kvs)

    def current(self) -> Leadership | None:
        """Our leadership if we lead right now, else None."""
        if not self._key or self._deposed_reason or (self._lease is not None and not self._lease.alive):
            return None
        cands = self.candidates()
        if cands and cands[0][1] == self._key and cands[0][0] == self._rev:
            return Leadership(self._key, self._rev)
        if cands:
            self.other_leader_rev = max(self.other_leader_rev, cands[0][0])
        return None

    def leader_name(self) -> str | None:
        cands = self.candidates()
        if not cands:
            return None
        try:
            return str(json.loads(cands[0][2]).get("name"))
        except ValueError:
            return cands[0][1]

    def wait_for_leadership(self, stop: threading.Event, poll_s: float = 1.0) -> Leadership | None:
        """Block until we lead; watch the predecessor rather than poll etcd hard."""
        while not stop.is_set():
            if self._deposed_reason or self._lease is None or not self._lease.alive:
                self.resign()
                self.campaign()
            lead = self.current()
            if lead is not None:
                return lead
            self._watch_predecessor()
            self._changed.wait(poll_s)  # also a periodic re-check in case a watch missed
            self._changed.clear()
        return None

    def _watch_predecessor(self) -> None:
        cands = self.candidates()
        mine = [c for c in cands if c[1] == self._key]
        if not mine:
            self._deposed_reason = "election key gone"
            return
        before = [c for c in cands if c[0] < mine[0][0]]
        if not before:
            return
        pred = before[-1][1]
        if self._watch is not None:
            self._watch.cancel()

        def on_event(ev: WatchEvent) -> None:
            if ev.kind is EventKind.DELETE and ev.key == pred:
                self._changed.set()

        self._watch = self.store.watch_prefix(pred, on_event)
        if self.store.get(pred) is None:  # it went between listing and watching
            self._changed.set()

    def resign(self) -> None:
        """Give up candidacy (and leadership): revoke our lease, our key goes with it."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._lease is not None:
            try:
                self._lease.revoke()
            except StoreError:
                pass  # expired anyway, or etcd down: the TTL does it
            self._lease = None
        self._key = ""
        self._rev = 0
