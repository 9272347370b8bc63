"""GuestHealth for lab guests: the console's tick counter keeps advancing.

`mark` notes the last tick before a move; `check` waits for a newer one. A tick count
below the mark, or an uptime that went backwards, means the guest rebooted (a TCG guest
panics after arrival about once in 25 throttled migrations, docs/lab.md): unhealthy.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from drctl.hypervisor import DomainState, Hypervisor
from drctl.lab.cluster import LabConfig
from drctl.lab.guest import Tick, last_tick
from drctl.lab.guests import console_path
from drctl.runner.verification import Health

_TICK = re.compile(r"drctl-tick (\d+) up ([0-9.]+)")


@dataclass(frozen=True)
class BootMark:
    """Before a restart: where the console file ended. A fresh boot counts ticks from 1
    again, so any tick line written after this offset means the new guest runs."""

    offset: int


class ConsoleTicks:
    def __init__(self, cfg: LabConfig, poll_s: float = 0.2) -> None:
        self.cfg = cfg
        self.poll_s = poll_s

    def mark(self, vm: str) -> object:
        return last_tick(console_path(self.cfg, vm))

    def mark_boot(self, vm: str) -> object:
        path = console_path(self.cfg, vm)
        return BootMark(path.stat().st_size if path.exists() else 0)

    def _booted(self, vm: str, host: str, hv: Hypervisor, mark: BootMark, timeout_s: float) -> Health:
        path = console_path(self.cfg, vm)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = hv.domain(vm).state
            if state is not DomainState.RUNNING:
                return Health(False, f"{vm} on {host} is {state.value}")
            with open(path, "rb") as fh:
                fh.seek(mark.offset)
                ticks = _TICK.findall(fh.read().decode(errors="replace"))
            if ticks:
                return Health(True, f"guest booted: tick {ticks[-1][0]}, up {float(ticks[-1][1]):.0f}s")
            time.sleep(self.poll_s)
        return Health(False, f"restarted guest printed no tick within {timeout_s:.0f}s")

    def check(self, vm: str, host: str, hv: Hypervisor, mark: object, timeout_s: float) -> Health:
        if isinstance(mark, BootMark):
            return self._booted(vm, host, hv, mark, timeout_s)
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


def console_ticks(lab_dir: str) -> ConsoleTicks:
    """The controller's guest-health plugin for lab guests (drctl/control/plugins.py):
    `guest_health: {plugin: "drctl.lab.console_health:console_ticks", options: {lab_dir: DIR}}`."""
    return ConsoleTicks(LabConfig(dir=Path(lab_dir)))
