"""`drctl lab ...`: the multi-host lab on one machine (see drctl/lab/)."""
from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """Run a lab of real libvirt hosts and an etcd member on this machine."""
