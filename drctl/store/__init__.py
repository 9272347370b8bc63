"""Store seam: the key-value store drctl keeps its shared state in (etcd in production,
memory in the simulator). Both adapters pass `tests/contract/test_store_contract.py`.

Keys are plain strings; values are bytes (callers use JSON). Every adapter gives
revisions that only grow, so a watch can resume from `last_seen + 1`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class EventKind(str, Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0  # lease id the key is bound to, 0 = none


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    key: str
    value: bytes  # empty for DELETE
    revision: int  # mod revision of this change


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction.

    target "value": the key's value equals `value` (absent key never equals);
    target "create": the key's create_revision equals `revision` (0 = key absent);
    target "mod": the key's mod_revision equals `revision`.
    """

    key: str
    target: str
    value: bytes = b""
    revision: int = 0

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "create", revision=0)

    @staticmethod
    def created_at(key: str, revision: int) -> Compare:
        return Compare(key, "create", revision=revision)

    @staticmethod
    def mod_at(key: str, revision: int) -> Compare:
        return Compare(key, "mod", revision=revision)

    @staticmethod
    def equals(key: str, value: bytes) -> Compare:
        return Compare(key, "value", value=value)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


class Lease(Protocol):
    id: int
    ttl: int

    def refresh(self) -> int:
        """Keep alive once; returns the remaining TTL (0 = the lease is gone)."""

    def revoke(self) -> None: ...

    @property
    def alive(self) -> bool:
        """False once the keepalive found the lease expired or revoked."""


class Watch(Protocol):
    def cancel(self) -> None: ...


WatchCallback = Callable[[WatchEvent], None]


class Store(Protocol):
    def get(self, key: str) -> KV | None: ...

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under prefix, sorted by key, and the store revision they were read at."""

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Returns the new revision."""

    def delete(self, key: str) -> bool:
        """True if the key existed."""

    def delete_prefix(self, prefix: str) -> int: ...

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        """Apply `success` atomically if every compare holds, else `failure`; True if they held."""

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Create-if-absent; False if the key already exists."""

    def cas(self, key: str, expected_mod_revision: int, value: bytes, lease: int = 0) -> bool:
        """Compare-and-swap on the key's mod revision."""

    def grant_lease(
        self, ttl: int, keepalive: bool = True, on_lost: Callable[[], None] | None = None
    ) -> Lease:
        """A lease (TTL at least etcd's minimum, 2 s); with keepalive it is refreshed every
        ttl/3 in the background.

        `on_lost` is called once when the lease turns out to be gone: a refresh answered
        TTL 0 (etcd after a partition heals), or no refresh succeeded for a whole TTL.
        From then on `alive` is False and the holder must stop acting on it. Our own
        `revoke` does not call it.
        """

    def watch_prefix(
        self,
        prefix: str,
        callback: WatchCallback,
        start_revision: int | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> Watch:
        """Call `callback` for every change under prefix from `start_revision` on
        (default: changes after now), in revision order.

        Survives disconnects: resumes from the last delivered revision + 1, so no event
        is lost or repeated. A start below etcd's compaction point raises WatchCompacted;
        if that is only found out later (resuming after a long outage), the watch stops
        and `on_error(WatchCompacted(...))` is called: re-list, then watch again.
        Threads: etcd calls `callback` from the watch's own thread; memory calls it
        synchronously (see drctl.store.memory).
        """

    def revision(self) -> int: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...
