"""drctl's command line: wiring only. Each area's commands live in their own module of this package."""
from __future__ import annotations

import sys

import click

from drctl import __version__
from drctl.model.errors import ConfigError, DrctlError, HostUnreachable, StoreUnavailable

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # bad input or an endpoint we cannot reach: one clear line, no traceback
EXIT_PARTIAL = 3  # e.g. a plan that could not place every VM


@click.group()
@click.version_option(__version__)
def cli() -> None:
    """drctl - keep libvirt/KVM VMs running through host trouble."""


def _register() -> None:
    # Imported here so one area's import cost is paid only by the commands that need it.
    from drctl.cli import lab

    cli.add_command(lab.lab)
    from drctl.cli import check

    cli.add_command(check.check)
    from drctl.cli import drain

    cli.add_command(drain.drain)
    cli.add_command(drain.undrain)
    from drctl.cli import controller_cmd

    cli.add_command(controller_cmd.controller)
    # further areas register below, one line each
    from drctl.cli import policy_cmd; cli.add_command(policy_cmd.policy)  # noqa: E702
    from drctl.cli import plan as plan_cmd; cli.add_command(plan_cmd.plan)  # noqa: E702
    from drctl.cli import audit_cmd; cli.add_command(audit_cmd.audit)  # noqa: E702
    from drctl.cli import postmortem_cmd as pm; cli.add_command(pm.postmortem); cli.add_command(pm.replay)  # noqa: E702
    from drctl.cli import agent_cmd; cli.add_command(agent_cmd.agent)  # noqa: E702
    from drctl.cli import sim_cmd; cli.add_command(sim_cmd.sim)  # noqa: E702


_register()


def main() -> None:
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_BAD_INPUT if isinstance(e, click.UsageError) else e.exit_code)
    except (ConfigError, HostUnreachable, StoreUnavailable) as e:
        click.echo(f"drctl: error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except DrctlError as e:
        click.echo(f"drctl: error: {type(e).__name__}: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)
    else:
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


if __name__ == "__main__":
    main()
