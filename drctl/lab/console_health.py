"""GuestHealth for lab guests: the console's tick counter keeps advancing.

`mark` notes the last tick before a move; `check` waits for a newer one. A tick count
below the mark, or an uptime that went backwards, means the guest rebooted (a TCG guest
panics after arrival about once in 25 throttled migrations, DESIGN §3): unhealthy.
"""
from __future__ import annotations

import threading
import time

from drctl.hypervisor import DomainState, Hypervisor
from drctl.lab.cluster import LabConfig
from drctl.lab.guest import Tick, last_tick
from drctl.lab.guests import console_path
from drctl.verification import Health


class ConsoleTicks:
    def __init__(self, cfg: LabConfig, poll_s: float = 0.2) -> None:
        self.cfg = cfg
        self.poll_s = poll_s

    def mark(self, vm: str) -> object:
        return last_tick(console_path(self.cfg, vm))

    def check(self, vm: str, host: str, hv: Hypervisor, mark: object, timeout_s: float) -> Health:
        state = hv.domain(vm).state
        if state is not DomainState.RUNNING:
            return Health(False, f"{vm} on {host} is {state.value}")
        before = mark if isinstance(mark, Tick) else last_tick(console_path(self.cfg, vm))
        deadline = time.monotonic() + timeout_s
        pace = threading.Event()
        while time.monotonic() < deadline:
            now = last_tick(console_path(self.cfg, vm))
            if now is not None and before is not None and (
                    now.count < before.count or now.uptime_s + 0.5 < before.uptime_s):
                return Health(False, f"guest rebooted after arrival (tick {before.count} -> {now.count}, "
                                     f"uptime {before.uptime_s:.0f}s -> {now.uptime_s:.0f}s): panic?")
            if now is not None and (before is None or now.count > before.count):
                return Health(True, f"guest alive: tick {now.count}, up {now.uptime_s:.0f}s")
            pace.wait(self.poll_s)
        return Health(False, f"no new console tick within {timeout_s:.0f}s (last {before})")
