"""The agent's start-up check: no stale copy of a VM keeps running on a returning host.

A host that was fenced (or partitioned) while its VMs were restarted elsewhere comes back
with their old definitions, and libvirtd starts those with autostart set as soon as it
starts. Before the agent publishes anything about its host, it compares every local
domain with the VM's placement record (`vms/<vm>`, written by the runner after a
verified move):

- a restart of the VM from this host to another host P is in flight (the runner has not
  written the placement yet): this host was fenced for it, so it is treated like a
  placement naming P;
- placement names this host, or there is none, or another move of the VM is in flight:
  ours, nothing to do;
- placement names another host P:
  - an active copy here (running, paused) is stopped, unless P is alive and its
    inventory, published after the placement record was written (by etcd revision), says
    the VM is *not* running there (then ours is the only copy: the placement record is out
    of date, reported, left running). An older inventory proves nothing (seen on the lab:
    the new host had not yet published the restarted VM, and the copy here was kept);
  - autostart is switched off on the copy left behind;
  - the copy is undefined only when the VM is verified running on P (P alive, its
    inventory lists it running): a definition is never the last one removed here.

Every action is audited (`agent.stale_copy`). docs/health.md describes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.control.intents import parse_intent, report_unreadable
from drctl.hypervisor import DomainState, Hypervisor
from drctl.model.cluster import IntentKind
from drctl.model.records import PlacementRecord, RecordError, parse_inventory, parse_placement
from drctl.store import Store
from drctl.store.keys import Keys

ACTIVE = (DomainState.RUNNING, DomainState.PAUSED, DomainState.CRASHED, DomainState.OTHER)


@dataclass(frozen=True)
class ClusterFacts:
    """What the check reads from etcd: placements, VMs with a move in flight, and per
    host whether its lease lives and which VMs its inventory lists as active."""

    placements: dict[str, PlacementRecord]
    moving: frozenset[str]  # VMs with a move in flight (restarts excepted)
    alive: frozenset[str]
    active_on: dict[str, frozenset[str]]  # host -> VMs its inventory lists running/paused
    restarts: dict[str, tuple[str, str]] = field(default_factory=dict)  # vm -> (src, dst) of a restart in flight
    placement_revision: dict[str, int] = field(default_factory=dict)  # vm -> etcd mod revision
    inventory_revision: dict[str, int] = field(default_factory=dict)  # host -> etcd mod revision


def read_facts(store: Store, keys: Keys) -> ClusterFacts:
    """One read of the whole prefix (StoreError propagates: the check waits for etcd)."""
    kvs, _rev = store.get_prefix(keys.prefix)
    placements: dict[str, PlacementRecord] = {}
    moving: set[str] = set()
    restarts: dict[str, tuple[str, str]] = {}
    placement_rev: dict[str, int] = {}
    inventory_rev: dict[str, int] = {}
    alive: set[str] = set()
    active_on: dict[str, frozenset[str]] = {}
    for kv in kvs:
        try:
            if kv.key.startswith(keys.vms_prefix()):
                vm = Keys.last_segment(kv.key)
                placements[vm] = parse_placement(kv.key, kv.value, vm)
                placement_rev[vm] = kv.mod_revision
            elif kv.key.startswith(keys.intents_prefix()):
                intent = parse_intent(kv.key, kv.value, kv.mod_revision)
                if intent.state.terminal:
                    continue
                if intent.kind is IntentKind.RESTART:
                    restarts[intent.vm] = (intent.src, intent.dst)
                else:
                    moving.add(intent.vm)
            elif kv.key.startswith(keys.hosts_prefix()):
                parsed = keys.parse_host_key(kv.key)
                if parsed is None:
                    continue
                host, rest = parsed
                if rest == "health":
                    alive.add(host)  # bound to the agent's lease: present = the lease lives
                elif rest == "inventory":
                    inv = parse_inventory(kv.key, kv.value, host)
                    active_on[host] = frozenset(v.name for v in inv.vms if v.state in ("running", "paused"))
                    inventory_rev[host] = kv.mod_revision
        except RecordError as e:
            report_unreadable(e)
    return ClusterFacts(placements, frozenset(moving), frozenset(alive), active_on, restarts, placement_rev,
                        inventory_rev)


def stale_copies(hv: Hypervisor, host: str, facts: ClusterFacts) -> list[str]:
    """Stop, disable autostart on and (when safe) undefine the local copies of VMs placed
    on another host; one sentence per copy acted on."""
    done: list[str] = []
    for d in hv.list_domains():
        restart = facts.restarts.get(d.name)
        fenced_for_it = restart is not None and restart[0] == host
        if fenced_for_it:
            assert restart is not None
            owner = restart[1]  # restarted elsewhere because this host was fenced
        else:
            placement = facts.placements.get(d.name)
            if (placement is None or not placement.host or placement.host == host or d.name in facts.moving
                    or restart is not None):
                continue
            owner = placement.host
        runs_there = owner in facts.alive and d.name in facts.active_on.get(owner, frozenset())
        actions: list[str] = []
        # the owner's inventory says it does not run the VM, and was published after the
        # placement record: only then may ours be the only copy
        owner_current = facts.inventory_revision.get(owner, 0) > facts.placement_revision.get(d.name, 0)
        if d.state in ACTIVE:
            if not fenced_for_it and owner in facts.alive and owner_current and not runs_there:
                audit.warn(events.AGENT_STALE_COPY, vm=d.name, host=host, placement=owner, state=d.state.value,
                           actions=["kept running"],
                           reason=f"placement names {owner}, which is alive and does not run it: this is the "
                                  f"only copy (placement record out of date)")
                done.append(f"kept {d.name} (only copy; placement says {owner})")
                continue
            hv.destroy(d.name)
            actions.append("stopped")
        if d.persistent and hv.autostart(d.name):
            hv.set_autostart(d.name, False)
            actions.append("autostart off")
        if d.persistent and runs_there:
            hv.undefine(d.name)
            actions.append("undefined")
        if not actions:
            continue
        why = (f"placement names {owner}, where it runs" if runs_there
               else f"placement names {owner} (not verified running there: definition kept)")
        audit.warn(events.AGENT_STALE_COPY, vm=d.name, host=host, placement=owner, state=d.state.value,
                   actions=actions, reason=why)
        done.append(f"{d.name}: {', '.join(actions)}")
    return done
