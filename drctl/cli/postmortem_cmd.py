"""`drctl postmortem` and `drctl replay`: explain an incident from its audit trail."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from drctl.audit.reader import read_files
from drctl.audit.postmortem import IncidentNotFound, build_report
from drctl.audit.report_html import render_html, render_markdown


class BadInput(click.ClickException):
    exit_code = 2  # drctl's exit code for bad input (see drctl/cli.py)


_FILES = click.argument("files", nargs=-1, required=True,
                        type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.command("postmortem")
@click.argument("incident_id")
@_FILES
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the report ('-' for stdout).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True)
def postmortem(incident_id: str, files: tuple[Path, ...], out: Path, fmt: str) -> None:
    """Write the postmortem report of INCIDENT_ID from audit FILES."""
    log = read_files(files)
    for p in log.problems:
        click.echo(f"warning: {p}", err=True)
    try:
        report = build_report(log.events, incident_id, log.problems)
    except IncidentNotFound as e:
        raise BadInput(str(e)) from e
    text = render_html(report) if fmt == "html" else render_markdown(report)
    if str(out) == "-":
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}: {len(report.vms)} VMs, {len(report.decisions)} decisions, "
                   f"{len(report.anomalies)} anomalies")


@click.command("replay")
@click.argument("incident_id")
@_FILES
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Decide with this policy instead of the rules recorded with the snapshot.")
def replay(incident_id: str, files: tuple[Path, ...], policy_path: Path | None) -> None:
    """Re-run the placement decisions of INCIDENT_ID on its recorded snapshot and compare.

    Exit 0 when every decision reproduces, 1 when some differ, 2 on bad input.
    """
    from drctl.audit import replay as rp  # placement and policy are only needed here

    log = read_files(files)
    for p in log.problems:
        click.echo(f"warning: {p}", err=True)
    try:
        result = rp.replay_incident(log.events, incident_id, policy_path)
    except (IncidentNotFound, rp.ReplayError) as e:
        raise BadInput(str(e)) from e
    for line in rp.format_result(result):
        click.echo(line)
    sys.exit(0 if result.reproduced else 1)
