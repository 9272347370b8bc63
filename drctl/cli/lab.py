"""`drctl lab ...`: the multi-host lab on one machine (see drctl/lab/)."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from drctl.lab import cluster
from drctl.lab.faults import FAULTS


def lab_options(fn):
    """Options every lab command shares; defaults from DRCTL_LAB_* environment variables."""
    fn = click.option("--dir", "lab_dir", type=click.Path(path_type=Path), envvar="DRCTL_LAB_DIR",
                      default=str(cluster.LabConfig.dir), show_default=True, help="lab directory")(fn)
    fn = click.option("--etcd-port", type=int, envvar="DRCTL_LAB_ETCD_PORT", default=2379, show_default=True)(fn)
    fn = click.option("--etcd-peer-port", type=int, envvar="DRCTL_LAB_ETCD_PEER_PORT", default=2380,
                      show_default=True)(fn)
    fn = click.option("--addr-prefix", envvar="DRCTL_LAB_ADDR_PREFIX", default="127.0.1", show_default=True,
                      help="host N listens on PREFIX.N")(fn)
    fn = click.option("--migration-port-base", type=int, envvar="DRCTL_LAB_MIGRATION_PORT_BASE", default=49152,
                      show_default=True, help="host N migrates on BASE+100*N .. +99")(fn)
    return fn


def make_config(lab_dir: Path, etcd_port: int, etcd_peer_port: int, addr_prefix: str,
                migration_port_base: int) -> cluster.LabConfig:
    return cluster.LabConfig(dir=lab_dir, etcd_port=etcd_port, etcd_peer_port=etcd_peer_port,
                             addr_prefix=addr_prefix, migration_port_base=migration_port_base)


@click.group()
def lab() -> None:
    """Run a lab of real libvirt hosts and an etcd member on this machine."""


@lab.command()
@click.option("--hosts", type=int, default=3, show_default=True)
@click.option("--no-install", is_flag=True, help="do not apt-get install missing packages")
@click.option("--agents/--no-agents", default=True, show_default=True,
              help="start one health agent (and its etcd relay) per host")
@lab_options
@click.option("--controllers", type=int, default=0, show_default=True,
              help="also run this many controller replicas (lab policy deploy/lab/lab-policy.yaml)")
def up(hosts: int, no_install: bool, agents: bool, controllers: int, **kw: object) -> None:
    """Bring the lab up (idempotent: a running lab is kept, a dead daemon restarted)."""
    cfg = make_config(**kw)  # type: ignore[arg-type]
    cluster.up(cfg, hosts, install=not no_install, echo=click.echo, agents=agents, controllers=controllers)


@lab.command()
@lab_options
def down(**kw: object) -> None:
    """Stop everything the lab started (by PID) and remove its state."""
    cluster.down(make_config(**kw), echo=click.echo)  # type: ignore[arg-type]


@lab.command()
@click.option("--json", "as_json", is_flag=True)
@lab_options
def status(as_json: bool, **kw: object) -> int:
    """Show etcd and each lab host; exit 1 if anything is down."""
    cfg = make_config(**kw)  # type: ignore[arg-type]
    etcd_ok, hosts = cluster.status(cfg)
    ok = etcd_ok and bool(hosts) and all(h.responds for h in hosts)
    if as_json:
        click.echo(json.dumps({
            "etcd": {"endpoint": cfg.etcd_endpoint, "healthy": etcd_ok},
            "hosts": [{"name": h.name, "uri": h.uri, "pid": h.pid, "running": h.running,
                       "responds": h.responds, "guests": list(h.guests)} for h in hosts],
        }))
        return 0 if ok else 1
    t = Table(title=f"drctl lab ({cfg.dir})")
    for col in ("component", "address", "pid", "state", "guests"):
        t.add_column(col)
    t.add_row("etcd", cfg.etcd_endpoint, "", "[green]healthy[/]" if etcd_ok else "[red]down[/]", "")
    for h in hosts:
        state = "[green]up[/]" if h.responds else ("[yellow]not answering[/]" if h.running else "[red]down[/]")
        t.add_row(h.name, h.uri, str(h.pid or ""), state, " ".join(h.guests))
    Console().print(t)
    return 0 if ok else 1


@lab.command()
@click.option("--migration-only", is_flag=True, help="just boot one guest and live-migrate it")
@lab_options
def demo(migration_only: bool, **kw: object) -> None:
    """drctl at work on a 3-host lab: a degraded host evacuated live, a dead host's VMs
    restarted elsewhere, narrated from the audit trail as it happens."""
    from drctl.lab.demo import controller_demo, migration_demo

    cfg = make_config(**kw)  # type: ignore[arg-type]
    (migration_demo if migration_only else controller_demo)(cfg, click.echo)


@lab.group()
def vm() -> None:
    """Test guests in the lab."""


@vm.command("create")
@click.argument("name")
@click.option("--host", "host", required=True, help="lab host name, e.g. labhost1")
@click.option("--memory", type=int, default=128, show_default=True, help="MiB")
@click.option("--dirty", type=int, default=0, show_default=True, help="MiB of memory rewritten per second")
@click.option("--disk", "disk_mib", type=int, default=0, help="add a local qcow2 disk of this many MiB")
@click.option("--no-wait", is_flag=True, help="do not wait for the first tick")
@lab_options
def vm_create(name: str, host: str, memory: int, dirty: int, disk_mib: int, no_wait: bool, **kw: object) -> None:
    """Define and start a ticking guest on a lab host."""
    from drctl.lab import guests

    cfg = make_config(**kw)  # type: ignore[arg-type]
    tick = guests.create(cfg, name, host, memory, dirty, disk_mib=disk_mib, wait=not no_wait)
    click.echo(f"started {name} on {host}" + (f" (tick {tick.count})" if tick else ""))


@vm.command("list")
@lab_options
def vm_list(**kw: object) -> None:
    """Where every lab guest runs and its last console tick."""
    from drctl.lab import guests

    cfg = make_config(**kw)  # type: ignore[arg-type]
    for row in guests.locate_all(cfg):
        click.echo(f"{row.name:20} {','.join(row.hosts) or '-':30} tick {row.tick.count if row.tick else '-'}")


@vm.command("delete")
@click.argument("name")
@lab_options
def vm_delete(name: str, **kw: object) -> None:
    """Destroy and undefine a guest wherever it runs."""
    from drctl.lab import guests

    cfg = make_config(**kw)  # type: ignore[arg-type]
    click.echo(f"deleted {name} from {', '.join(guests.delete(cfg, name)) or 'nowhere'}")


@lab.command()
@click.argument("host")
@click.argument("fault", type=click.Choice(list(FAULTS)))
@click.argument("seconds", type=click.FloatRange(min=0), required=False)
@lab_options
def inject(host: str, fault: str, seconds: float | None, **kw: object) -> None:
    """Break a lab host on purpose; `clear` undoes every fault of HOST.

    \b
    memory-errors      raise the host's (fake) EDAC corrected-error counter
    libvirt-stop       SIGSTOP its libvirtd (libvirt-hang: the older name)
    libvirt-cont       SIGCONT its libvirtd
    libvirt-restart    restart its libvirtd alone; its guests keep running
    agent-kill         SIGKILL its health agent
    host-kill          SIGKILL libvirtd, guests, agent and relay (power cut)
    partition          SIGSTOP its relay: agent cut off from etcd
    fence-slow [SECS]  the lab fence agent waits SECS (10) before off/on
    fence-fail         the lab fence agent fails every action on HOST
    etcd-kill          SIGKILL the lab's etcd (HOST: `etcd` or any lab host)
    etcd-start         start the lab's etcd again
    clear              SIGCONT, restart what is dead, reset counters and fence faults
    """
    from drctl.lab import faults

    faults.inject(make_config(**kw), host, fault, echo=click.echo, seconds=seconds)  # type: ignore[arg-type]
