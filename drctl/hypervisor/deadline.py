"""Deadlines for calls that can hang on a hung peer (docs/architecture.md). No libvirt import here,
so the runner can use it without pulling in the adapter."""
from __future__ import annotations

import threading
from typing import Callable, TypeVar

from drctl.model.errors import HypervisorTimeout

T = TypeVar("T")


def with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run `fn` in a daemon thread; raise HypervisorTimeout if it has not returned in time."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name=f"deadline:{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise HypervisorTimeout(f"{what}: no answer within {timeout_s:g}s (hung libvirtd?)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
