"""The audit stream: one JSON line per decision or state change.

structlog is configured once per process by `configure()`. Every line carries a UTC ISO
timestamp, a dotted past-tense event name (`intent.state_changed`), the component that
wrote it, and the ids that tie an incident together (incident, intent, vm, host, term,
attempt). Lines written to a file are hash-chained: each carries `prev`, the SHA-256 of
the previous line in that stream, so `drctl audit verify` can find an edited, dropped or
reordered line.
"""
from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable

import structlog

from drctl.audit import events

GENESIS = "0" * 64  # `prev` of the first line of a stream

TimeSource = Callable[[], float]  # seconds since the epoch (e.g. a drctl.clock.Clock's now)


def line_hash(line: str) -> str:
    """Hash of one rendered line, without its trailing newline."""
    return hashlib.sha256(line.rstrip("\n").encode()).hexdigest()


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ChainedFile:
    """Appends hash-chained lines to a file, rotating it past `max_bytes`.

    The chain continues across rotation: the first line of a new file points at the last
    line of the rotated one, so verifying `f.1 f` in order checks the whole stream.
    """

    def __init__(self, path: Path, max_bytes: int = 50 * 1024 * 1024, keep: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = _last_hash(self.path)
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")
        if _ends_mid_line(self.path):
            # a crash cut the last line short: end it, so the next line is not glued onto it
            # (the chain still holds: `_prev` is the hash of that cut line)
            self._fh.write("\n")

    def write(self, event: dict[str, Any]) -> str:
        with self._lock:
            event = {**event, "prev": self._prev}
            line = json.dumps(event, separators=(",", ":"), default=str)
            if self._fh.tell() + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line + "\n")
            self._fh.flush()
            self._prev = line_hash(line)
            return line

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _last_hash(path: Path) -> str:
    """Resume a chain after a restart: hash of the file's last complete line."""
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS
    size = path.stat().st_size
    with open(path, "rb") as fh:
        # read back far enough to hold the whole last line (snapshot lines can be large)
        back = 65536
        while True:
            fh.seek(max(0, size - back))
            tail = fh.read()
            lines = [ln for ln in tail.split(b"\n") if ln.strip()]
            if back >= size or len(lines) > 1:
                break
            back *= 4
    return line_hash(lines[-1].decode(errors="replace")) if lines else GENESIS


def _ends_mid_line(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) != b"\n"


class AuditSink:
    """Final structlog processor: renders the event and writes it to the chained file
    and/or a stream (stderr for daemons, nothing for quiet CLI commands)."""

    def __init__(self, file: ChainedFile | None, echo: IO[str] | None) -> None:
        self.file = file
        self.echo = echo
        self.lines: list[dict[str, Any]] = []  # kept in memory too, for tests and the CLI
        self.keep_in_memory = False

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        line = self.file.write(event_dict) if self.file else json.dumps(event_dict, separators=(",", ":"), default=str)
        if self.echo is not None:
            self.echo.write(line + "\n")
            self.echo.flush()
        if self.keep_in_memory:
            self.lines.append(json.loads(line))
        # structlog wants something for the logger; our PrintLogger-less factory ignores it
        raise structlog.DropEvent


_sink: AuditSink | None = None


def configure(
    component: str,
    path: Path | str | None = None,
    echo: IO[str] | None = None,
    clock: TimeSource | None = None,
    keep_in_memory: bool = False,
) -> AuditSink:
    """Configure the audit stream for this process. Call once, at start-up.

    component: who writes ("agent:labhost1", "controller:c1", "cli").
    path: the local audit file (hash-chained, rotated); None = no file.
    echo: also write each line here (e.g. sys.stderr for daemons).
    clock: time source (SimClock in the simulator); default the system clock.
    """
    global _sink
    now = clock or _system_now
    sink = AuditSink(ChainedFile(Path(path)) if path else None, echo)
    sink.keep_in_memory = keep_in_memory

    def add_ts(_: Any, __: str, ev: dict[str, Any]) -> dict[str, Any]:
        # the timestamp goes first so lines read well and sort by time
        return {"ts": iso_utc(now()), "component": component, **ev}

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, add_ts, sink],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _sink = sink
    return sink


def _system_now() -> float:
    import time

    return time.time()


def sink() -> AuditSink | None:
    return _sink


def emit(event: str, **fields: Any) -> None:
    """Write one audit event. `event` is dotted and past tense: "host.state_changed"."""
    if _sink is None:  # never configured (a library user): stay silent rather than crash
        return
    structlog.get_logger().info(event, **{k: v for k, v in fields.items() if v is not None})


def warn(event: str, **fields: Any) -> None:
    """An audit event that also needs a human's eye (freeze, escalation)."""
    if _sink is None:
        return
    structlog.get_logger().warning(event, **{k: v for k, v in fields.items() if v is not None})


def retry_scheduled(retry_state: Any) -> None:
    """tenacity `before_sleep` hook: each retry is an audit event."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    emit(
        events.RETRY_SCHEDULED,
        fn=getattr(retry_state.fn, "__name__", str(retry_state.fn)),
        attempt=retry_state.attempt_number,
        sleep_s=round(retry_state.next_action.sleep, 3) if retry_state.next_action else None,
        error=f"{type(exc).__name__}: {exc}" if exc else None,
    )


def bind(**ids: Any) -> None:
    """Bind ids (incident, term, ...) to every event from this context on."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)
