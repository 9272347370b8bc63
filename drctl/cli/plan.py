"""`drctl plan`: plan an evacuation or a rebalance from a saved cluster snapshot.

Exit 0 when every VM is placed, 3 when some cannot be, 2 on bad input (one line on
stderr, nothing on stdout: a half-printed plan must never be mistaken for a plan).
"""
from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

import click

from drctl.model.errors import ConfigError
from drctl.model.cluster import Limits, PlacementRules

if TYPE_CHECKING:
    from drctl.planning.planner import Plan

EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3


@click.command()
@click.option("--snapshot", "snapshot_path", required=True, help="Cluster snapshot file (JSON or YAML).")
@click.option("--policy", "policy_path", help="Evacuation policy (YAML); default rules and limits without it.")
@click.option("--evacuate", help="Hosts to evacuate, comma separated.")
@click.option("--rebalance", is_flag=True, help="Move VMs from hot hosts to cool ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(
    ctx: click.Context,
    snapshot_path: str,
    policy_path: str | None,
    evacuate: str | None,
    rebalance: bool,
    as_json: bool,
) -> None:
    """Plan moves: --evacuate HOST[,HOST...] or --rebalance."""
    if bool(evacuate) == rebalance:
        raise click.UsageError("give exactly one of --evacuate HOST[,HOST...] or --rebalance")
    from drctl.planning import planner
    from drctl.model.snapshot import load_snapshot

    try:
        snap = load_snapshot(snapshot_path)
        rules, limits, rebalance_args = PlacementRules(), Limits(), {}
        if policy_path is not None:
            # Imported only when asked for: planning from a snapshot needs no policy machinery.
            from drctl.policy import load_policy

            policy = load_policy(policy_path)
            snap = policy.apply_groups(snap)  # the policy's (anti-)affinity groups count too
            rules, limits = policy.rules, policy.limits
            rebalance_args = {
                "target_spread_pct": policy.rebalance.target_spread_pct,
                "max_moves": policy.rebalance.max_moves,
            }
        if evacuate:
            hosts = [h.strip() for h in evacuate.split(",") if h.strip()]
            result = planner.plan_evacuation(snap, hosts, rules, limits)
        else:
            result = planner.plan_rebalance(snap, rules, limits, **rebalance_args)
    except ConfigError as e:
        click.echo(f"drctl: error: {e}", err=True)
        ctx.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_table(result)
    ctx.exit(EXIT_PARTIAL if result.unplaced else 0)


def _print_table(result: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    moves = Table(title="Moves", title_justify="left")
    for col in ("wave", "vm", "src", "dst", "kind", "predicted s", "downtime ms", "note"):
        moves.add_column(col, justify="right" if col in ("wave", "predicted s", "downtime ms") else "left")
    for m in result.moves:
        moves.add_row(
            str(m.wave), m.vm, m.src, m.dst, m.kind.value, f"{m.predicted_s:.1f}", f"{m.predicted_downtime_ms:.0f}", m.reason
        )
    console.print(moves)
    if result.unplaced:
        unplaced = Table(title="Unplaced (reasons counted over hosts; --json lists every host)", title_justify="left")
        for col in ("vm", "src", "reasons"):
            unplaced.add_column(col)
        for u in result.unplaced:
            counts = Counter(r for reasons in u.reasons.values() for r in reasons)
            text = "\n".join(f"{n} host{'s' if n > 1 else ''}: {r}" for r, n in counts.most_common(6))
            if len(counts) > 6:
                text += f"\n... {len(counts) - 6} more distinct reasons"
            unplaced.add_row(u.vm, u.src, text)
        console.print(unplaced)
    s = result.summary
    console.print(
        f"placed {s['placed']}, unplaced {s['unplaced']}, {s['waves']} waves, "
        f"predicted makespan {s['predicted_makespan_s']:.1f} s "
        f"(bandwidth floor {s['bandwidth_floor_s']:.1f} s)",
        highlight=False,
    )
