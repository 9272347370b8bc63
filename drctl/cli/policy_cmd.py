"""`drctl policy check PATH`: validate policies and show what they compile to."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from drctl.config.settings import AgentConfig
from drctl.policy import Policy, PolicyError, load_policies, load_policy
from drctl.policy.quorum import never_dead
from drctl.policy.render import policy_to_dict, policy_to_text

EXIT_BAD_INPUT = 2  # same as drctl.cli.main.EXIT_BAD_INPUT; not imported to keep cli.py wiring-only


@click.group()
def policy() -> None:
    """Evacuation policies (policies/*.yaml)."""


@policy.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the compiled policies as JSON.")
@click.option("--witnesses", type=click.IntRange(0, 64), default=AgentConfig.witnesses, show_default=True,
              help="Peers each agent witnesses (the agents' `witnesses` setting).")
def check(path: Path, as_json: bool, witnesses: int) -> None:
    """Validate a policy file (or every *.yaml in a directory) and print what it compiles to.

    Exit 0 when every policy is valid, 2 with one line per problem otherwise (including a
    witness quorum under which no host could ever be declared dead).
    """
    try:
        policies = load_policies(path) if path.is_dir() else [load_policy(path)]
    except PolicyError as e:
        for problem in e.problems:
            click.echo(f"drctl: error: {problem}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    problems = [(p, never_dead(p.evidence.witness_quorum, witnesses)) for p in policies]
    if any(why for _, why in problems):
        for p, why in problems:
            if why:
                where = p.source or path
                click.echo(f"drctl: error: {where}: policy {p.name}: evidence.witness_quorum: {why}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(_render(policies, as_json), nl=False)
    for p in policies:  # valid, but worth a second look: on stderr, exit status unchanged
        for warning in p.warnings():
            click.echo(f"drctl: warning: {p.source}: policy {p.name} {warning}", err=True)


def _render(policies: list[Policy], as_json: bool) -> str:
    if as_json:
        return json.dumps([policy_to_dict(p) for p in policies], indent=2) + "\n"
    return "\n".join(policy_to_text(p) for p in policies)
