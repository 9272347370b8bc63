"""`drctl check`: can we reach these libvirt hosts and etcd endpoints?"""
from __future__ import annotations

import click




@click.command()
@click.option("--libvirt", "uris", multiple=True, metavar="URI", help="libvirt URI, e.g. qemu+tcp://127.0.1.1/system")
@click.option("--etcd", "endpoints", multiple=True, metavar="HOST:PORT", help="etcd endpoint")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="seconds per endpoint")
def check(uris: tuple[str, ...], endpoints: tuple[str, ...], timeout: float) -> None:
    """Check that each libvirt host and etcd endpoint answers.

    Prints one line per endpoint that answers; the first that does not ends the command
    with one error line naming it (exit 2).
    """
    if not uris and not endpoints:
        raise click.UsageError("name at least one --libvirt URI or --etcd HOST:PORT")
    from drctl.hypervisor.libvirt_adapter import connect
    from drctl.store.etcd import connect_store

    for uri in uris:
        hv = connect(uri, timeout_s=timeout)  # raises HostUnreachable naming the URI
        try:
            click.echo(f"libvirt {uri}: ok (host {hv.hostname()})")
        finally:
            hv.close()
    for ep in endpoints:
        store = connect_store([ep], timeout=timeout)  # raises StoreUnavailable naming it
        try:
            click.echo(f"etcd {ep}: ok (revision {store.revision()})")
        finally:
            store.close()



