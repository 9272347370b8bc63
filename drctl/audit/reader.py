"""Read audit files back: parse, skip damage, merge hosts by time, filter.

Audit files outlive crashes and operators: a process killed mid-write leaves a truncated
last line, an editor leaves garbage. Readers report such lines with file:line and carry
on; a postmortem that refuses to run because of one bad line is no use during an incident.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RawLine:
    """One line of a file, as stored (no trailing newline)."""

    file: str
    line: int  # 1-based
    text: str
    complete: bool  # ended with a newline; False = the writer stopped mid-line


@dataclass(frozen=True)
class UnreadableLine:
    """A line that could not be used, and why."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True, eq=False)
class Event:
    """One parsed audit line. `data` is the whole JSON object (ids, fields, prev)."""

    ts: datetime
    name: str
    data: Mapping[str, Any]
    file: str
    line: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class AuditLog:
    events: tuple[Event, ...]
    problems: tuple[UnreadableLine, ...] = field(default=())


def read_raw(path: Path | str) -> Iterator[RawLine]:
    """Lines of one file. Bytes that are not UTF-8 are replaced, never fatal."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            complete = raw.endswith(b"\n")
            yield RawLine(str(path), n, raw.rstrip(b"\n").decode("utf-8", errors="replace"), complete)


def parse_line(raw: RawLine) -> Event | UnreadableLine | None:
    """An Event, an UnreadableLine for a damaged line, or None for a blank line."""
    if not raw.text.strip():
        return None
    try:
        obj = json.loads(raw.text)
    except ValueError as e:
        what = "truncated line (writer stopped mid-line)" if not raw.complete else "not valid JSON"
        return UnreadableLine(raw.file, raw.line, f"{what}: {e.msg} at column {e.colno}; skipped")
    if not isinstance(obj, dict):
        return UnreadableLine(raw.file, raw.line, "not a JSON object; skipped")
    name, ts = obj.get("event"), obj.get("ts")
    if not isinstance(name, str) or not isinstance(ts, str):
        return UnreadableLine(raw.file, raw.line, "no 'event' or 'ts' field; skipped")
    try:
        when = parse_ts(ts)
    except ValueError:
        return UnreadableLine(raw.file, raw.line, f"bad timestamp {ts!r}; skipped")
    return Event(when, name, obj, raw.file, raw.line)


def parse_ts(text: str) -> datetime:
    """An ISO timestamp; naive ones are taken as UTC (audit lines are always UTC)."""
    when = datetime.fromisoformat(text.strip())
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_files(paths: Sequence[Path | str]) -> AuditLog:
    """Parse every file and merge them into one time-ordered log.

    Files are ordered rotation-first (`x.log.2`, `x.log.1`, `x.log`) so that lines with
    equal timestamps keep the order they were written in.
    """
    events: list[tuple[datetime, int, int, Event]] = []
    problems: list[UnreadableLine] = []
    for fi, path in enumerate(order_rotated(paths)):
        try:
            for raw in read_raw(path):
                item = parse_line(raw)
                if isinstance(item, Event):
                    events.append((item.ts, fi, item.line, item))
                elif isinstance(item, UnreadableLine):
                    problems.append(item)
        except OSError as e:
            problems.append(UnreadableLine(str(path), 0, f"cannot read: {e.strerror or e}"))
    events.sort(key=lambda t: t[:3])
    return AuditLog(tuple(t[3] for t in events), tuple(problems))


_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")


def stream_key(path: Path | str) -> tuple[str, int]:
    """(stream name, rotation number): `a/x.log.2` -> ("a/x.log", 2); `a/x.log` -> ("a/x.log", 0)."""
    m = _ROTATED.match(str(path))
    return (m["base"], int(m["n"])) if m else (str(path), 0)


def order_rotated(paths: Iterable[Path | str]) -> list[Path]:
    """Group files by stream and put each stream's oldest rotation first."""
    first_seen: dict[str, int] = {}
    keyed = []
    for p in paths:
        base, n = stream_key(p)
        first_seen.setdefault(base, len(first_seen))
        keyed.append((first_seen[base], -n, Path(p)))
    return [p for _, _, p in sorted(keyed, key=lambda t: t[:2])]


# ---------------------------------------------------------------- filters


def intents_of(events: Iterable[Event], incident: str) -> frozenset[str]:
    """Intent ids that belong to an incident (progress lines carry only the intent id)."""
    return frozenset(e.get("intent") for e in events if e.get("incident") == incident and e.get("intent"))


@dataclass(frozen=True)
class Filter:
    incident: str | None = None
    vm: str | None = None
    host: str | None = None
    since: datetime | None = None

    def apply(self, events: Sequence[Event]) -> list[Event]:
        intents = intents_of(events, self.incident) if self.incident else frozenset()
        return [e for e in events if self._keep(e, intents)]

    def _keep(self, e: Event, intents: frozenset[str]) -> bool:
        if self.since and e.ts < self.since:
            return False
        if self.incident and e.get("incident") != self.incident and e.get("intent") not in intents:
            return False
        if self.vm and e.get("vm") != self.vm:
            return False
        host_fields = ("host", "src", "dst", "old_dst", "witness")
        return not self.host or any(e.get(k) == self.host for k in host_fields)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO timestamp, or a duration back from now ("90s", "15m", "2h", "1d")."""
    m = _DURATION.match(text.strip())
    if m:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
    return parse_ts(text)
