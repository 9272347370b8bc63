"""Render a postmortem Report as one self-contained HTML page or as Markdown.

The HTML has inline CSS and an inline SVG timeline drawn here, on the server: no scripts,
fonts or images from elsewhere, so a report attached to a ticket opens anywhere, offline,
years later, and looks the same.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape

from drctl.audit.postmortem import Phase, PhaseName, Report, SegmentKind, VMOutcome, human_bytes
from drctl.model.cluster import IntentKind, IntentState

# ---------------------------------------------------------------- shared formatting


def _clock(ts: datetime | None) -> str:
    return ts.strftime("%H:%M:%S.") + f"{ts.microsecond // 1000:03d}" if ts else "–"


def _stamp(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d ") + _clock(ts) + "Z" if ts else "–"


def _secs(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 120 else f"{s / 60:.1f} min"


def _ms(v: int | None) -> str:
    return "–" if v is None else f"{v} ms"


def _offset(r: Report, ts: datetime | None) -> str:
    return "" if ts is None else f"+{(ts - r.first_sign).total_seconds():.3f} s"


def _summary_rows(r: Report) -> list[tuple[str, str]]:
    detect = (r.opened - r.first_sign).total_seconds()
    return [
        ("Incident", r.incident),
        ("What failed", r.what_failed),
        ("First sign", _stamp(r.first_sign)),
        ("Detected (incident opened)", f"{_stamp(r.opened)} ({_secs(detect)} after the first sign)"),
        ("Trigger / policy", f"{r.trigger} / {r.policy}"),
        ("What was done", r.what_done),
        ("Outcome", f"{r.outcome}" + (f" at {_stamp(r.closed)}" if r.closed else "")),
    ]


def _vm_row(v: VMOutcome) -> list[str]:
    if v.kind is IntentKind.RESTART:
        how = f"restart, boot {_ms(v.boot_ms)}"
        down = f"{_secs(v.outage_s)} (since last sign of life)" if v.outage_s is not None else "–"
        took = _secs((v.ended - v.started).total_seconds()) if v.started and v.ended else "–"
    else:
        how = f"live ({v.mode or 'precopy'}), {v.iterations if v.iterations is not None else '–'} iterations"
        down = _ms(v.downtime_ms)
        took = _ms(v.total_ms)
    verified = {True: "yes", False: "NO", None: "–"}[v.verified]
    return [v.vm, v.src, v.dst, v.state.value, took, down, human_bytes(v.data_bytes), str(v.attempts), how, verified]


VM_HEADERS = ["VM", "Source", "Destination", "Outcome", "Migration / restart time", "Downtime", "Data sent", "Attempts",
              "How", "Verified"]


# ---------------------------------------------------------------- SVG timeline

_W, _LABEL_W, _RIGHT_W, _ROW_H, _TOP = 1240, 170, 190, 26, 34
_COLORS = {PhaseName.DETECTION.value: "#e0a526", PhaseName.EVIDENCE.value: "#7a8fb8",
           PhaseName.FENCING.value: "#8e44ad", PhaseName.DECISION.value: "#5dade2",
           PhaseName.FREEZE.value: "#9e9e9e", SegmentKind.MIGRATE.value: "#2e86c1", SegmentKind.RESTART.value: "#27ae60",
           SegmentKind.FAILED.value: "#c0392b"}


def timeline_svg(r: Report) -> str:
    """The incident as bars on one time axis: phases first, then one row per VM."""
    t0, t1 = r.first_sign, max(r.end, *(p.end for p in r.phases))
    span = max((t1 - t0).total_seconds(), 0.001)
    plot_w = _W - _LABEL_W - _RIGHT_W

    def x(ts: datetime) -> float:
        return _LABEL_W + (ts - t0).total_seconds() / span * plot_w

    rows: list[str] = []
    lanes = [p for p in r.phases if p.name in (PhaseName.DETECTION, PhaseName.EVIDENCE, PhaseName.FENCING,
                                               PhaseName.DECISION)]
    lanes += list(r.freezes)
    y = _TOP
    for p in lanes:
        rows.append(_label(y, p.name.value))
        rows.append(_bar(x(p.start), x(p.end), y, _COLORS.get(p.name.value, "#888"), f"{p.name.value} {_secs(p.seconds)}"))
        rows.append(_note(max(x(p.end), x(p.start) + 3) + 6, y, _secs(p.seconds)))
        y += _ROW_H
    for v in r.vms:
        rows.append(_label(y, v.vm, f"{v.src} → {v.dst}"))
        if v.started and v.ended:  # the intent's whole life (checks, verification) as a thin line
            rows.append(f'<rect x="{x(v.started):.1f}" y="{y + 11}" width="{max(x(v.ended) - x(v.started), 1):.1f}" '
                        f'height="3" fill="#c8d3de"><title>{escape(v.vm)} intent {escape(v.intent)}</title></rect>')
        if v.kind is IntentKind.RESTART and v.switched_at:
            rows.append(_outage(x(r.first_sign), x(v.switched_at), y, f"{v.vm} down {_secs(v.outage_s)}"))
        for s in v.segments:
            tip = f"{v.vm} attempt {s.attempt} → {s.dst}: {s.kind.value} {_secs((s.end - s.start).total_seconds())}"
            rows.append(_bar(x(s.start), x(s.end), y, _COLORS[s.kind.value], tip))
        if v.kind is not IntentKind.RESTART and v.switched_at and v.downtime_ms is not None:
            rows.append(_downtime(x(v.switched_at), y, v.downtime_ms / 1000 / span * plot_w, v))
        for a in r.anomalies:  # retries, fallbacks, escalations: where on the bar they happened
            if a.vm == v.vm:
                rows.append(_marker(x(a.ts), y, f"{a.kind.value}: {a.text}"))
        end_x = max([x(s.end) for s in v.segments] + [x(v.ended) if v.ended else _LABEL_W])
        rows.append(_note(end_x + 6, y, _vm_note(v)))
        y += _ROW_H
    height = y + 28
    axis = _axis(t0, span, plot_w, height)
    legend = _legend(height - 12)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height + 10}" '
            f'viewBox="0 0 {_W} {height + 10}" font-family="sans-serif" font-size="12" role="img" '
            f'aria-label="incident timeline">' + axis + "".join(rows) + legend + "</svg>")


def _vm_note(v: VMOutcome) -> str:
    if v.kind is IntentKind.RESTART:
        return f"restarted · down {_secs(v.outage_s)}"
    if v.total_ms is None:
        return v.state.value
    return f"{_ms(v.total_ms)} · ▼ {_ms(v.downtime_ms)}"


def _label(y: int, text: str, sub: str = "") -> str:
    out = f'<text x="8" y="{y + 13}" font-weight="600">{escape(text)}</text>'
    if sub:
        out += f'<text x="8" y="{y + 24}" font-size="10" fill="#666">{escape(sub)}</text>'
    return out


def _bar(x0: float, x1: float, y: int, color: str, tip: str) -> str:
    return (f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 3):.1f}" height="16" rx="2" fill="{color}">'
            f"<title>{escape(tip)}</title></rect>")


def _outage(x0: float, x1: float, y: int, tip: str) -> str:
    return (f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(x1 - x0, 1):.1f}" height="20" fill="url(#down)" '
            f'stroke="#e67e22" stroke-width="0.6"><title>{escape(tip)}</title></rect>')


def _downtime(x0: float, y: int, width: float, v: VMOutcome) -> str:
    # the pause sits at the very end of the migration: draw it ending at the switch-over
    w = max(width, 3)
    return (f'<rect x="{x0 - w:.1f}" y="{y + 1}" width="{w:.1f}" height="22" fill="#111">'
            f"<title>{escape(v.vm)} downtime {v.downtime_ms} ms</title></rect>")


def _marker(xp: float, y: int, tip: str) -> str:
    return (f'<polygon points="{xp:.1f},{y + 1} {xp + 5:.1f},{y + 6} {xp:.1f},{y + 11} {xp - 5:.1f},{y + 6}" '
            f'fill="#f39c12" stroke="#7e5109" stroke-width="0.8"><title>{escape(tip)}</title></polygon>')


def _note(xp: float, y: int, text: str) -> str:
    return f'<text x="{xp:.1f}" y="{y + 16}" fill="#333">{escape(text)}</text>'


def _axis(t0: datetime, span: float, plot_w: float, height: int) -> str:
    step = _nice_step(span / 8)
    out = [('<defs><pattern id="down" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fdebd0"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#e67e22" stroke-width="2"/></pattern></defs>'),
           f'<rect x="0" y="0" width="{_W}" height="{height + 10}" fill="#ffffff"/>']
    n = 0
    while n * step <= span + 1e-9:
        xp = _LABEL_W + n * step / span * plot_w
        out.append(f'<line x1="{xp:.1f}" y1="{_TOP - 6}" x2="{xp:.1f}" y2="{height - 24}" stroke="#e5e8eb"/>')
        out.append(f'<text x="{xp:.1f}" y="{_TOP - 12}" text-anchor="middle" fill="#555">+{_fmt_step(n * step)}</text>')
        n += 1
    out.append(f'<text x="8" y="{_TOP - 12}" fill="#555">from {escape(_clock(t0))}Z</text>')
    return "".join(out)


def _legend(y: int) -> str:
    items = [("migration", _COLORS[SegmentKind.MIGRATE.value]), ("restart", _COLORS[SegmentKind.RESTART.value]),
             ("failed attempt", _COLORS[SegmentKind.FAILED.value]),
             ("downtime", "#111"), ("VM down (dead host)", "url(#down)"), ("controller frozen", _COLORS[PhaseName.FREEZE.value]),
             ("retry / fallback / escalation", "#f39c12")]
    out, xp = [], _LABEL_W
    for name, color in items:
        out.append(f'<rect x="{xp}" y="{y - 9}" width="12" height="10" fill="{color}"/>'
                   f'<text x="{xp + 16}" y="{y}" fill="#333">{escape(name)}</text>')
        xp += 30 + 7 * len(name)
    return "".join(out)


def _nice_step(raw: float) -> float:
    exp = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)


def _fmt_step(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:g} s"


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b2631;max-width:1280px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5dbdb}
table{border-collapse:collapse;margin:6px 0;font-size:13px} th,td{border:1px solid #d5dbdb;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f6f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.sub{color:#566573} .ok{color:#1e8449} .bad{color:#c0392b;font-weight:600} .warning td{background:#fef5e7}
.rej{color:#7b7d7d} .chosen{background:#eaf2f8} .chart{overflow-x:auto;border:1px solid #d5dbdb;padding:6px}
ul{margin:4px 0} code{font-size:12px}
"""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(r: Report) -> str:
    """The whole report as one HTML document (no external resources, no scripts)."""
    parts = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
              f"<title>Postmortem {escape(r.incident)}</title><style>{_CSS}</style></head><body>"),
             f"<h1>Postmortem: {escape(r.incident)}</h1>",
             f'<div class="sub">{escape(r.host)} · {escape(r.kind or r.trigger)} · outcome {escape(r.outcome)}</div>',
             "<h2>Summary</h2>",
             "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _summary_rows(r))
             + "</table>",
             "<h2>Phases</h2>",
             _table(["Phase", "Start", "End", "Duration"], [_phase_row(r, p) for p in r.phases]),
             "<h2>Timeline</h2>", f'<div class="chart">{timeline_svg(r)}</div>',
             "<h2>Virtual machines</h2>", _table(VM_HEADERS, [_vm_row(v) for v in r.vms],
                                                 ["" if v.state is IntentState.DONE else "warning" for v in r.vms]),
             "<h2>Decisions</h2>", _decisions_html(r),
             "<h2>Anomalies</h2>", _anomalies_html(r),
             "<h2>Event log</h2>",
             _table(["Time", "Offset", "Event", "Component", "What"],
                    [[_clock(t.ts), _offset(r, t.ts), t.event, t.component, t.text] for t in r.timeline],
                    ["warning" if t.level == "warning" else "" for t in r.timeline]),
             f'<p class="sub">{r.omitted_progress} migration progress lines not listed.</p>' if r.omitted_progress
             else ""]
    if r.problems:
        parts.append("<h2>Unreadable audit lines (skipped)</h2><ul>"
                     + "".join(f"<li><code>{escape(str(p))}</code></li>" for p in r.problems) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _phase_row(r: Report, p: Phase) -> list[str]:
    return [p.name.value, f"{_clock(p.start)} ({_offset(r, p.start)})", f"{_clock(p.end)} ({_offset(r, p.end)})",
            _secs(p.seconds)]


def _decisions_html(r: Report) -> str:
    if not r.decisions:
        return "<p>No placement decisions recorded.</p>"
    out = []
    for d in r.decisions:
        head = (f"{d.vm}: {d.src} → {d.dst} (score {d.score})" if d.dst else f"{d.vm}: not placed") + \
            (f" — {d.reason}" if d.reason else "")
        rows = [[c.host, "chosen" if c.host == d.dst else ("eligible" if c.eligible else "rejected"),
                 "–" if c.score is None else f"{c.score:.3g}", "; ".join(c.reasons)] for c in d.candidates]
        classes = ["chosen" if c.host == d.dst else ("" if c.eligible else "rej") for c in d.candidates]
        out.append(f"<h3>{escape(head)}</h3>" + _table(["Host", "Verdict", "Score", "Reasons"], rows, classes))
    return "".join(out)


def _anomalies_html(r: Report) -> str:
    if not r.anomalies:
        return '<p class="ok">None: no retries, aborts, fallbacks or freezes.</p>'
    return _table(["Time", "Kind", "VM", "What"], [[_clock(a.ts), a.kind.value, a.vm, a.text] for a in r.anomalies])


# ---------------------------------------------------------------- Markdown


def render_markdown(r: Report) -> str:
    """The same report as Markdown (no chart: the phases and event log carry the times)."""
    lines = [f"# Postmortem: {r.incident}", "", "## Summary", ""]
    lines += _md_table(["", ""], [[f"**{k}**", v] for k, v in _summary_rows(r)])
    lines += ["", "## Phases", ""]
    lines += _md_table(["Phase", "Start", "End", "Duration"], [_phase_row(r, p) for p in r.phases])
    lines += ["", "## Virtual machines", ""]
    lines += _md_table(VM_HEADERS, [_vm_row(v) for v in r.vms])
    lines += ["", "## Decisions", ""]
    for d in r.decisions:
        lines += [f"### {d.vm}: {d.src} → {d.dst or 'not placed'}" + (f" (score {d.score})" if d.dst else ""), ""]
        if d.reason:
            lines += [d.reason, ""]
        lines += _md_table(["Host", "Verdict", "Score", "Reasons"],
                           [[c.host, "chosen" if c.host == d.dst else ("eligible" if c.eligible else "rejected"),
                             "–" if c.score is None else f"{c.score:.3g}", "; ".join(c.reasons)]
                            for c in d.candidates])
        lines.append("")
    lines += ["## Anomalies", ""]
    lines += (_md_table(["Time", "Kind", "VM", "What"], [[_clock(a.ts), a.kind.value, a.vm, a.text] for a in r.anomalies])
              if r.anomalies else ["None."])
    lines += ["", "## Event log", ""]
    lines += _md_table(["Time", "Offset", "Event", "What"],
                       [[_clock(t.ts), _offset(r, t.ts), t.event, t.text] for t in r.timeline])
    if r.problems:
        lines += ["", "## Unreadable audit lines (skipped)", ""] + [f"- `{p}`" for p in r.problems]
    return "\n".join(lines) + "\n"


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def cell(s: object) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out
