"""`drctl audit verify|show`: check audit files' hash chains; read them merged by time."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from drctl.audit.reader import Event, Filter, parse_since, read_files
from drctl.audit.verify import verify_files

EXIT_OK, EXIT_TAMPERED, EXIT_UNREADABLE = 0, 1, 2
_FILES = click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))


@click.group("audit")
def audit() -> None:
    """Verify and read audit trails."""


@audit.command("verify")
@_FILES
def verify(files: tuple[Path, ...]) -> None:
    """Check each stream's hash chain: report changed, dropped and reordered lines.

    Rotated files of one stream (x.log.2 x.log.1 x.log) are checked as one chain. Exit 0
    when every chain holds, 1 when a line was tampered with, 2 when a file cannot be read.
    """
    readable = [f for f in files if _readable(f)]
    tampered = False
    for r in verify_files(readable):
        for f in r.findings:
            click.echo(str(f))
        tampered |= not r.ok
        verdict = "ok" if r.ok else "TAMPERED"
        click.echo(f"{r.stream}: {verdict}, {r.lines} lines in {len(r.files)} file(s), head {r.head}")
    code = EXIT_TAMPERED if tampered else EXIT_OK if len(readable) == len(files) else EXIT_UNREADABLE
    sys.exit(code)


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError as e:
        click.echo(f"{path}: cannot read: {e.strerror or e}", err=True)
        return False


@audit.command("show")
@click.option("--incident", help="Only this incident (and its intents' lines).")
@click.option("--vm", help="Only lines about this VM.")
@click.option("--host", help="Only lines naming this host (host, src, dst, witness).")
@click.option("--since", help="ISO time, or a duration back from now: 90s, 15m, 2h, 1d.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text.")
@_FILES
def show(incident: str | None, vm: str | None, host: str | None, since: str | None, as_json: bool,
         files: tuple[Path, ...]) -> None:
    """Show audit lines from FILES merged by time. Damaged lines are reported and skipped."""
    try:
        since_ts = parse_since(since) if since else None
    except ValueError:
        raise click.BadParameter(f"{since!r} is neither an ISO time nor a duration like 15m", param_hint="--since")
    log = read_files(files)
    for p in log.problems:
        click.echo(f"warning: {p}", err=True)
    for e in Filter(incident, vm, host, since_ts).apply(log.events):
        click.echo(json.dumps(e.data, separators=(",", ":")) if as_json else format_line(e))


_SKIP = ("ts", "event", "component", "level", "prev")
_IDS = ("incident", "intent", "vm", "host")


def format_line(e: Event) -> str:
    """One event as text: time, component, event, the ids, then the other fields."""
    keys = [k for k in _IDS if k in e.data] + [k for k in e.data if k not in _SKIP and k not in _IDS]
    fields = " ".join(f"{k}={_short(e.data[k])}" for k in keys)
    mark = "!" if e.get("level") in ("warning", "error") else " "
    return f"{e.get('ts')} {mark} {e.get('component', '-'):<16} {e.name:<22} {fields}"


def _short(v: Any) -> str:
    if isinstance(v, dict) and "hosts" in v and "vms" in v:
        return f"<{len(v['hosts'])} hosts, {len(v['vms'])} vms>"
    if isinstance(v, list) and v and all(isinstance(c, dict) and "host" in c for c in v):
        return ",".join(f"{c['host']}:{c.get('score') if c.get('eligible') else 'x'}" for c in v)
    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    if isinstance(v, str) and (" " in v or not v):
        text = json.dumps(v)
    return text if len(text) <= 120 else text[:117] + "..."
