"""`drctl sim run DIR [--update]` and `drctl sim search`: the deterministic whole-cluster
simulator (docs/simulator.md)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from drctl.model.errors import ConfigError


@click.group()
def sim() -> None:
    """Run the production controller, runner and agents against a simulated cluster."""


@sim.command("run")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--update", is_flag=True, help="rewrite the folder's expected.log with this run's log")
def run_cmd(folder: str, update: bool) -> None:
    """Run one scenario folder and print its decision log."""
    from drctl.sim import scenario

    result = scenario.run(folder)
    log = scenario.render(result)
    click.echo(log, nl=False)
    if update:
        (Path(folder) / "expected.log").write_text(log)
        click.echo(f"# {folder}/expected.log rewritten ({len(result.log)} lines)", err=True)
    for v in result.violations:
        click.echo(f"# violation {v.line()}", err=True)


@sim.command("search")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="run i uses seed S+i")
@click.option("--hosts", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--vms", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--duration", default="600s", show_default=True, help="simulated time per schedule")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), help="policy (default: fence first)")
@click.option("--out", type=click.Path(file_okay=False), default="sim-findings", show_default=True,
              help="where failing schedules are written as scenario folders")
@click.option("--shrink", "shrink_budget", type=click.IntRange(min=0), default=12, show_default=True,
              help="re-runs spent shrinking a failing schedule")
@click.option("--disable", multiple=True, type=click.Choice(["fence", "lease-guard", "claims"]),
              help="switch a safety mechanism off (to see the search find it)")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="schedules run at once, in worker processes")
@click.option("--json", "as_json", is_flag=True, help="last line: one JSON object with the totals")
def search_cmd(runs: int, seed: int, hosts: int, vms: int, duration: str, policy_path: str | None, out: str,
               shrink_budget: int, disable: tuple[str, ...], jobs: int, as_json: bool) -> int:
    """Random fault schedules, invariants after every step; exit 0 only with no violation."""
    from drctl.policy import compile_policy
    from drctl.policy.units import parse_duration
    from drctl.sim.search import SEARCH_POLICY_YAML, search

    try:
        seconds = parse_duration(duration)
    except ValueError as e:
        raise ConfigError(f"--duration: {e}") from None
    text = SEARCH_POLICY_YAML
    if policy_path:
        try:
            text = Path(policy_path).read_text()
        except OSError as e:
            raise ConfigError(f"{policy_path}: cannot read: {e.strerror or e}") from None
    policy = compile_policy(text, policy_path or "<sim-search>")
    summary = search(runs, seed, hosts, vms, seconds, policy=policy, policy_text=text, out=Path(out),
                     shrink_budget=shrink_budget, echo=lambda s: click.echo(s, err=not as_json),
                     jobs=jobs, disabled=tuple(disable))
    totals = summary.as_json()
    if as_json:
        click.echo(json.dumps(totals, sort_keys=True))
    else:
        click.echo(f"{summary.runs} schedule(s), {summary.violations} with a violation, {summary.steps} steps, "
                   f"{summary.sim_seconds:.0f} simulated s in {summary.wall_seconds:.1f} s "
                   f"({summary.sim_seconds / max(summary.wall_seconds, 1e-9):.0f}x real time)")
    return 0 if summary.violations == 0 else 1
