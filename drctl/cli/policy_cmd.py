"""`drctl policy check PATH`: validate policies and show what they compile to."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from drctl.policy import Policy, PolicyError, load_policies, load_policy
from drctl.policy.render import policy_to_dict, policy_to_text

EXIT_BAD_INPUT = 2  # same as drctl.cli.main.EXIT_BAD_INPUT; not imported to keep cli.py wiring-only


@click.group()
def policy() -> None:
    """Evacuation policies (policies/*.yaml)."""


@policy.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the compiled policies as JSON.")
def check(path: Path, as_json: bool) -> None:
    """Validate a policy file (or every *.yaml in a directory) and print what it compiles to.

    Exit 0 when every policy is valid, 2 with one line per problem otherwise.
    """
    try:
        policies = load_policies(path) if path.is_dir() else [load_policy(path)]
    except PolicyError as e:
        for problem in e.problems:
            click.echo(f"drctl: error: {problem}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(_render(policies, as_json), nl=False)


def _render(policies: list[Policy], as_json: bool) -> str:
    if as_json:
        return json.dumps([policy_to_dict(p) for p in policies], indent=2) + "\n"
    return "\n".join(policy_to_text(p) for p in policies)
