"""Build the controller's cluster snapshot from what is in etcd.

Pure functions over records (`build_snapshot`) plus one reader (`read_cluster`) that does
a single prefix read, so every tick decides on one consistent revision.

Sources, by key (drctl/store/keys.py):
- hosts/<h>/inventory      capacity, CPU model, networks, pools, labels, VMs seen (agent)
- hosts/<h>/health, witness/*  -> drctl.health.grading verdicts (state + evidence)
- hosts/<h>/maintenance    a drain request (drctl drain)
- vm-definitions/<vm>      definition + the host whose agent last saw it (agent)
- vms/<vm>                 placement record: where the VM must run (runner, after verify)
- intents/<id>             open moves: their memory counts on the destination already
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from drctl.health.grading import HostVerdict, default_quorum, host_states_from
from drctl.control.intents import Intent
from drctl.model.cluster import VM, Host, HostState, Snapshot
from drctl.store import KV, Store
from drctl.store.keys import Keys


@dataclass(frozen=True)
class ClusterRecords:
    """Everything the controller reads, at one store revision."""

    revision: int
    host_kvs: tuple[KV, ...]
    inventories: Mapping[str, dict[str, Any]]
    maintenance: Mapping[str, dict[str, Any]]
    definitions: Mapping[str, dict[str, Any]]
    placements: Mapping[str, dict[str, Any]]
    intents: tuple[Intent, ...]  # every intent, terminal ones included


def _json(kv: KV) -> dict[str, Any]:
    try:
        v = json.loads(kv.value)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def read_cluster(store: Store, keys: Keys) -> ClusterRecords:
    """One read of the whole prefix: a consistent view at one revision."""
    kvs, rev = store.get_prefix(keys.prefix)
    host_kvs, inv, maint, defs, plc, intents = [], {}, {}, {}, {}, []
    for kv in kvs:
        if kv.key.startswith(keys.hosts_prefix()):
            parsed = keys.parse_host_key(kv.key)
            if parsed is None:
                continue
            host, rest = parsed
            host_kvs.append(kv)
            if rest == "inventory":
                inv[host] = _json(kv)
            elif rest == "maintenance":
                maint[host] = _json(kv)
        elif kv.key.startswith(keys.vm_definitions_prefix()):
            defs[Keys.last_segment(kv.key)] = _json(kv)
        elif kv.key.startswith(keys.vms_prefix()):
            plc[Keys.last_segment(kv.key)] = _json(kv)
        elif kv.key.startswith(keys.intents_prefix()):
            try:
                intents.append(Intent.from_json(kv.value, kv.mod_revision))
            except (ValueError, KeyError, TypeError):
                continue  # a record we cannot read is reported by `drctl intents`, not fatal here
    return ClusterRecords(rev, tuple(host_kvs), inv, maint, defs, plc, tuple(intents))


def verdicts_of(records: ClusterRecords, keys: Keys, quorum: int | None, now: float) -> dict[str, HostVerdict]:
    """Every host's state. quorum: witnesses needed to call a host dead; None = a
    majority of the other hosts (each host's peers are its possible witnesses)."""
    if quorum is None:
        quorum = default_quorum(max(1, len(records.inventories) - 1))
    return host_states_from(records.host_kvs, keys, quorum, now)


def vm_locations(records: ClusterRecords) -> dict[str, str]:
    """vm -> host it is on: the placement record if any (written after a verified move),
    else the host whose agent last published its definition."""
    where = {vm: str(d.get("host", "")) for vm, d in records.definitions.items() if d.get("host")}
    for vm, p in records.placements.items():
        if p.get("host"):
            where[vm] = str(p["host"])
    return where


def build_snapshot(records: ClusterRecords, verdicts: Mapping[str, HostVerdict], now: float) -> Snapshot:
    """The cluster as the placement code sees it (pure)."""
    where = vm_locations(records)
    vms: dict[str, VM] = {}
    for vm, host in sorted(where.items()):
        d = records.definitions.get(vm, {})
        inv_vm = _inventory_vm(records.inventories.get(host, {}), vm)
        memory = int(d.get("memory_mib") or inv_vm.get("memory_mib") or 0)
        vms[vm] = VM(name=vm, host=host, memory_mib=memory, vcpus=int(d.get("vcpus") or inv_vm.get("vcpus") or 1),
                     priority=int(d.get("priority", 0)), tags=frozenset(d.get("tags", ())))
    used: dict[str, int] = {}
    cpu: dict[str, int] = {}
    for v in vms.values():
        used[v.host] = used.get(v.host, 0) + v.memory_mib
        cpu[v.host] = cpu.get(v.host, 0) + v.vcpus
    # memory already promised to moves in flight counts on their destinations
    for i in records.intents:
        if not i.state.terminal and i.dst and i.vm in vms and vms[i.vm].host != i.dst:
            used[i.dst] = used.get(i.dst, 0) + vms[i.vm].memory_mib
    hosts: dict[str, Host] = {}
    for name in sorted(set(records.inventories) | set(verdicts)):
        inv = records.inventories.get(name, {})
        verdict = verdicts.get(name)
        hosts[name] = Host(
            name=name,
            memory_mib=int(inv.get("memory_total_mib") or 0) or 1,
            cpus=int(inv.get("cpus") or 1),
            memory_used_mib=used.get(name, 0),
            reserved_mib=int(inv.get("reserved_mib") or 0),
            cpu_used=float(cpu.get(name, 0)),
            cpu_model=str(inv.get("cpu_model") or "qemu64"),
            networks=frozenset(inv.get("networks") or ()),
            storage_pools=frozenset(inv.get("storage_pools") or ()),
            labels=dict(inv.get("labels") or {}),
            state=verdict.state if verdict else HostState.UNREACHABLE,
            maintenance=name in records.maintenance,
        )
    # a VM on a host nobody has heard of cannot be planned; keep it out rather than crash
    return Snapshot(hosts, {n: v for n, v in vms.items() if v.host in hosts}, taken_at=now)


def _inventory_vm(inv: Mapping[str, Any], vm: str) -> dict[str, Any]:
    for entry in inv.get("vms") or ():
        if isinstance(entry, dict) and entry.get("name") == vm:
            return entry
    return {}


def running_on(records: ClusterRecords) -> dict[str, list[str]]:
    """vm -> hosts whose latest inventory lists it running (a duplicate shows as two)."""
    out: dict[str, list[str]] = {}
    for host, inv in sorted(records.inventories.items()):
        for entry in inv.get("vms") or ():
            if isinstance(entry, dict) and entry.get("state") == "running":
                out.setdefault(str(entry.get("name")), []).append(host)
    return out
