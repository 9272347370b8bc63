"""Verify the hash chain of audit streams: find changed, dropped and reordered lines.

Each line carries `prev` = SHA-256 of the previous line's text (drctl.audit.writer). A hash
cannot tell an edited line from a dropped one (both leave the next line pointing at text
that is no longer there), so those are reported together, at the first line whose link
breaks. A line whose `prev` names another line still present was moved: the true order is
rebuilt by following the links, and the lines outside the longest run that is still in
order are the ones reported as reordered.

Not detectable by the chain alone: lines cut off the end of the newest file (there is no
later line to notice). `head` is printed so it can be compared with a copy kept elsewhere.
"""
from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drctl.audit.writer import GENESIS, line_hash
from drctl.audit.reader import RawLine, order_rotated, read_raw, stream_key

# Finding kinds. Only the first three mean the file was tampered with.
CHANGED_OR_DROPPED = "changed_or_dropped"
REORDERED = "reordered"
DUPLICATED = "duplicated"
DAMAGED = "damaged"  # not JSON / no prev: a crash artifact unless the next link breaks too
UNANCHORED = "unanchored"  # first line points before the files given (older rotation missing)
_TAMPER = frozenset({CHANGED_OR_DROPPED, REORDERED, DUPLICATED})


@dataclass(frozen=True)
class Finding:
    kind: str
    file: str
    line: int
    message: str

    @property
    def tampered(self) -> bool:
        return self.kind in _TAMPER

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class StreamResult:
    stream: str
    files: tuple[str, ...]
    lines: int
    head: str  # hash of the last line: compare with a copy kept elsewhere
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.tampered for f in self.findings)


def group_streams(paths: Sequence[Path | str]) -> dict[str, list[Path]]:
    """Files of one stream (`x.log.2`, `x.log.1`, `x.log`) in the order they were written."""
    streams: dict[str, list[Path]] = {}
    for p in order_rotated(paths):
        streams.setdefault(stream_key(p)[0], []).append(p)
    return streams


def verify_files(paths: Sequence[Path | str]) -> list[StreamResult]:
    """Verify each stream among `paths`. Raises OSError for a file that cannot be read."""
    results = []
    for stream, files in group_streams(paths).items():
        lines = [raw for f in files for raw in read_raw(f) if raw.text.strip()]
        results.append(verify_lines(stream, tuple(str(f) for f in files), lines))
    return results


def verify_lines(stream: str, files: tuple[str, ...], lines: Sequence[RawLine]) -> StreamResult:
    hashes = [line_hash(r.text) for r in lines]
    prevs = [_prev_of(r.text) for r in lines]
    first_at: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first_at.setdefault(h, i)

    findings: list[Finding] = []
    pred: dict[int, int] = {}  # line index -> index of the line its prev names
    starts: list[int] = []
    for i, (raw, p) in enumerate(zip(lines, prevs)):
        expected = hashes[i - 1] if i else GENESIS
        if p is None:
            what = "truncated (writer stopped mid-line)" if not raw.complete else "not a JSON line with a prev hash"
            findings.append(_at(DAMAGED, raw, f"{what}; its own link cannot be checked"))
        elif p == expected:
            if i:
                pred[i] = i - 1
        elif p == GENESIS:
            starts.append(i)  # the stream's first line, found later: a move, resolved below
        elif first_at[hashes[i]] < i:
            findings.append(_at(DUPLICATED, raw, f"copy of {_pos(lines[first_at[hashes[i]]])}"))
        elif p in first_at and first_at[p] != i:
            pred[i] = first_at[p]  # a move: resolved below from the rebuilt order
        elif i == 0:
            findings.append(_at(UNANCHORED, raw, "chain starts after a line not given (older rotated file missing?)"))
        else:
            findings.append(_at(CHANGED_OR_DROPPED, raw,
                                f"prev does not match {_pos(lines[i - 1])}: that line was changed, "
                                f"or lines between them were dropped"))
    findings += _reorders(lines, pred, starts)
    findings.sort(key=lambda f: (files.index(f.file) if f.file in files else 0, f.line))
    return StreamResult(stream, files, len(lines), hashes[-1] if hashes else GENESIS, tuple(findings))


def _reorders(lines: Sequence[RawLine], pred: dict[int, int], starts: list[int]) -> list[Finding]:
    if not starts and all(j == i - 1 for i, j in pred.items()):
        return []
    rank = _chain_rank(len(lines), pred, starts)
    keep = _longest_increasing(rank)
    out: list[Finding] = []
    reported: set[int] = set()
    for m in range(len(lines)):
        if m in keep or m in reported:
            continue
        swapped = next((nb for nb in (m + 1, m - 1) if 0 <= nb < len(lines) and abs(rank[m] - rank[nb]) == 1
                        and (rank[m] - rank[nb]) * (m - nb) < 0), None)
        if swapped is not None:
            a, b = sorted((m, swapped))
            reported |= {a, b}
            out.append(_at(REORDERED, lines[a], f"{_pos(lines[a])} and {_pos(lines[b])} are swapped"))
        elif m in pred:
            out.append(_at(REORDERED, lines[m], f"out of order: it was written right after {_pos(lines[pred[m]])}"))
        else:
            out.append(_at(REORDERED, lines[m], "out of order"))
    return out


def _chain_rank(n: int, pred: dict[int, int], starts: list[int]) -> list[int]:
    """Position of each line in the order the links say it was written."""
    succ: dict[int, int] = {}
    for i, j in sorted(pred.items()):
        succ.setdefault(j, i)
    order: list[int] = []
    seen: set[int] = set()
    # segments start where a link is missing (a drop, a damaged line, the first line)
    for head in starts + [i for i in range(n) if i not in pred] + list(range(n)):
        i: int | None = head
        while i is not None and i not in seen:
            seen.add(i)
            order.append(i)
            i = succ.get(i)
    rank = [0] * n
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def _longest_increasing(seq: list[int]) -> set[int]:
    """Indices of one longest strictly increasing subsequence (patience sorting)."""
    tails: list[int] = []
    tail_idx: list[int] = []
    parent = [-1] * len(seq)
    for i, v in enumerate(seq):
        k = bisect.bisect_left(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_idx.append(i)
        else:
            tails[k], tail_idx[k] = v, i
        parent[i] = tail_idx[k - 1] if k else -1
    keep: set[int] = set()
    i = tail_idx[-1] if tail_idx else -1
    while i >= 0:
        keep.add(i)
        i = parent[i]
    return keep


def _prev_of(text: str) -> str | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    p = obj.get("prev") if isinstance(obj, dict) else None
    return p if isinstance(p, str) else None


def _at(kind: str, raw: RawLine, message: str) -> Finding:
    return Finding(kind, raw.file, raw.line, message)


def _pos(raw: RawLine) -> str:
    return f"{Path(raw.file).name}:{raw.line}"
