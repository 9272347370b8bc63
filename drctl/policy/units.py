"""Parsing of the human units a policy is written in: durations, sizes, rates, percents,
time windows. Pure; each parser raises ValueError with a message fit for an operator.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_DURATION_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(KiB|MiB|GiB|TiB)$")
_SIZE_MIB = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "TiB": 1024 * 1024}
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")
# Bounds keep absurd numbers (and float overflow) out of the compiled policy.
_MAX_DURATION_S = 366 * 86400
_MAX_MIB = 1024.0**4


def parse_duration(text: str) -> float:
    """'30s', '5m', '1h', '250ms', '1d' -> seconds. A unit is required: '30' is ambiguous."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r} (expected e.g. '30s', '5m', '1h', '300ms')")
    seconds = float(m.group(1)) * _DURATION_S[m.group(2)]
    if seconds > _MAX_DURATION_S:
        raise ValueError(f"duration {text!r} is longer than a year")
    return seconds


def parse_size_mib(text: str) -> float:
    """'512MiB', '2GiB' -> MiB. Binary units only: memory is sized in them."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. '512MiB', '2GiB')")
    return _bounded_mib(float(m.group(1)) * _SIZE_MIB[m.group(2)], text)


def parse_rate_mibs(text: str) -> float:
    """'32MiB/s', '1GiB/s' -> MiB/s (libvirt's migration bandwidth unit)."""
    size, sep, per = text.strip().partition("/")
    if not sep or per != "s":
        raise ValueError(f"not a bandwidth: {text!r} (expected e.g. '32MiB/s', '1GiB/s')")
    try:
        return parse_size_mib(size)
    except ValueError:
        raise ValueError(f"not a bandwidth: {text!r} (expected e.g. '32MiB/s', '1GiB/s')") from None


def parse_percent(text: str) -> float:
    """'20%' -> 20.0, within 0..100."""
    m = _PERCENT.match(text.strip())
    if not m:
        raise ValueError(f"not a percentage: {text!r} (expected e.g. '20%')")
    pct = float(m.group(1))
    if pct > 100:
        raise ValueError(f"percentage {text!r} is above 100%")
    return pct


def _bounded_mib(mib: float, text: str) -> float:
    if not math.isfinite(mib) or mib > _MAX_MIB:
        raise ValueError(f"size {text!r} is too large")
    return mib


# ---------------------------------------------------------------- time windows

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW = re.compile(r"^(?:(?P<days>[A-Za-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$")


@dataclass(frozen=True)
class Window:
    """An allowed time window in UTC, e.g. 'Mon-Fri 01:00-05:00'.

    A window whose end is not after its start crosses midnight ('Fri 22:00-02:00' runs
    into Saturday); the day list names the day it starts on.
    """

    days: frozenset[int]  # 0 = Monday, as time.gmtime().tm_wday
    start_min: int  # minutes after midnight UTC
    end_min: int  # exclusive; 24:00 = 1440
    text: str

    def contains(self, now: float) -> bool:
        t = time.gmtime(now)
        minute = t.tm_hour * 60 + t.tm_min
        if self.start_min < self.end_min:
            return t.tm_wday in self.days and self.start_min <= minute < self.end_min
        # crosses midnight: the late part belongs to today, the early part to yesterday
        if minute >= self.start_min:
            return t.tm_wday in self.days
        return minute < self.end_min and (t.tm_wday - 1) % 7 in self.days


def parse_window(text: str) -> Window:
    """'Mon-Fri 01:00-05:00', 'Sat,Sun 00:00-24:00', '22:00-02:00' (every day), UTC."""
    m = _WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"not a time window: {text!r} (expected e.g. 'Mon-Fri 01:00-05:00', UTC)")
    days = _parse_days(m.group("days")) if m.group("days") else frozenset(range(7))
    start, end = _parse_clock(m.group("start"), text), _parse_clock(m.group("end"), text)
    if start == end or start == 1440:
        raise ValueError(f"time window {text!r} is empty")
    return Window(days=days, start_min=start, end_min=end, text=text.strip())


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        a, b = _day(first), _day(last or first)
        span = (b - a) % 7  # 'Sat-Mon' wraps over the week end
        days.update((a + i) % 7 for i in range(span + 1))
    return frozenset(days)


def _day(name: str) -> int:
    for i, day in enumerate(_DAYS):
        if name.strip().lower() == day.lower():
            return i
    raise ValueError(f"unknown day {name!r} (use {', '.join(_DAYS)})")


def _parse_clock(hhmm: str, text: str) -> int:
    hours, minutes = (int(x) for x in hhmm.split(":"))
    if minutes >= 60 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"bad time {hhmm!r} in window {text!r}")
    return hours * 60 + minutes


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for printing: the largest unit that divides evenly."""
    for unit in ("d", "h", "m", "s"):
        n = seconds / _DURATION_S[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"
