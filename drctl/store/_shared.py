"""What every Store adapter does the same way: the operations derived from `txn`, and
running the caller's callbacks so that a bug in one never stops a keepalive or a watch."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.store import Compare, Op, Put


class DerivedOps:
    """`create` and `cas`, defined once on top of an adapter's `txn`."""

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        raise NotImplementedError

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare.absent(key)], [Put(key, value, lease)])

    def cas(self, key: str, expected_mod_revision: int, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare.mod_at(key, expected_mod_revision)], [Put(key, value, lease)])


def run_callback(name: str, fn: Callable[..., None] | None, *args: Any, **ids: Any) -> None:
    """Call a caller-supplied callback; its exception becomes an audit warning."""
    if fn is None:
        return
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001  # a broken handler must not break the store's thread
        audit.warn(events.STORE_CALLBACK_FAILED, callback=name, error=f"{type(e).__name__}: {e}", **ids)


def report_lease_lost(lease_id: int, ttl: int, reason: str, on_lost: Callable[[], None] | None) -> None:
    audit.warn(events.STORE_LEASE_LOST, lease=f"{lease_id:x}", ttl=ttl, reason=reason)
    run_callback("on_lost", on_lost, lease=f"{lease_id:x}")
