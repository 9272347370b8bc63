"""What an agent publishes about its host besides health: the inventory (capacity, CPU
model, networks, storage pools, labels, its VMs) and each VM's definition, so a VM of a
dead host can be defined and started elsewhere.

    hosts/<host>/inventory   not bound to the lease: a dead host must still be known
    vm-definitions/<vm>      written by the agent of the host the VM is on

A definition record belongs to the host the VM's placement record (`vms/<vm>`) names;
before any move (no placement record) to the host whose agent wrote it first. Only its
owner writes or deletes it, each in a transaction guarded by the placement record's (and
the definition's) revision, and a delete also only while the record is still exactly what
that agent wrote. So a host that returns with a stale copy of a VM that was restarted
elsewhere neither overwrites the record nor, once its copy is undefined, deletes the only
definition a later restart needs (issue 12, case 11).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from drctl.config.settings import AgentConfig
from drctl.model.errors import DrctlError
from drctl.hypervisor import Hypervisor
from drctl.audit import events
from drctl.audit import writer as audit
from drctl.model.records import RecordError, parse_definition, parse_placement
from drctl.store import KV, Compare, Delete, Put, Store
from drctl.store.keys import Keys


@dataclass(frozen=True)
class HostView:
    """One read of the local hypervisor."""

    inventory: dict[str, Any]
    definitions: dict[str, bytes]  # vm -> record (JSON)


def _optional_list(hv: Hypervisor, method: str) -> list[str] | None:
    """Networks and pools are not part of the Hypervisor seam (yet): use them when an
    adapter offers them, else the operator's list from the configuration stands."""
    fn = getattr(hv, method, None)
    if fn is None:
        return None
    try:
        return sorted(str(x) for x in fn())
    except DrctlError:
        return None


def read_host(hv: Hypervisor, cfg: AgentConfig, now: float) -> HostView:
    cap = hv.capacity()
    domains = hv.list_domains()
    definitions = {}
    for d in domains:
        if not d.persistent:
            continue
        try:
            xml = hv.domain_xml(d.name)
        except DrctlError:
            continue  # migrated away between list and read
        definitions[d.name] = json.dumps({"vm": d.name, "host": cfg.host, "uuid": d.uuid, "xml": xml,
                                          "memory_mib": d.memory_mib, "vcpus": d.vcpus}, sort_keys=True).encode()
    networks = _optional_list(hv, "list_networks") or sorted(cfg.networks)
    pools = _optional_list(hv, "list_storage_pools") or sorted(cfg.storage_pools)
    inventory = {
        "host": cfg.host, "uri": cfg.libvirt_uri, "hostname": cap.hostname,
        "memory_total_mib": cap.memory_total_mib, "memory_free_mib": cap.memory_free_mib,
        "cpus": cap.cpus, "cpu_model": cap.cpu_model, "networks": networks, "storage_pools": pools,
        "labels": dict(cfg.labels),
        "vms": [{"name": d.name, "state": d.state.value, "reason": d.reason.value, "memory_mib": d.memory_mib,
                 "vcpus": d.vcpus} for d in domains],
        "ts": now,
    }
    return HostView(inventory, definitions)


class Publisher:
    """Writes a HostView, remembering what it wrote so unchanged records are not
    rewritten and only its own definitions are removed, and only while it owns them."""

    def __init__(self, store: Store, keys: Keys, host: str) -> None:
        self._store = store
        self._keys = keys
        self._host = host
        self._written: dict[str, bytes] = {}
        self._not_owned: dict[str, str] = {}  # vm -> owner, reported once

    def _owner_guards(self, vm: str) -> tuple[str, list[Compare]] | None:
        """(owner, guards that hold while it stays the owner), None if nobody can tell yet."""
        pkey, dkey = self._keys.vm(vm), self._keys.vm_definition(vm)
        placement = self._store.get(pkey)
        if placement is not None:
            try:
                owner = parse_placement(pkey, placement.value, vm).host
            except RecordError:
                return None  # unreadable: the controller reports it; write nothing meanwhile
            return owner, [Compare.mod_at(pkey, placement.mod_revision)]
        current = self._store.get(dkey)
        guards = [Compare.absent(pkey)]
        if current is None:
            return self._host, [*guards, Compare.absent(dkey)]
        return _writer(current, vm) or self._host, [*guards, Compare.mod_at(dkey, current.mod_revision)]

    def _mine(self, vm: str) -> list[Compare] | None:
        found = self._owner_guards(vm)
        if found is None:
            return None
        owner, guards = found
        if owner == self._host:
            self._not_owned.pop(vm, None)
            return guards
        if self._not_owned.get(vm) != owner:
            self._not_owned[vm] = owner
            audit.emit(events.VM_DEFINITION_NOT_OWNED, vm=vm, host=self._host, owner=owner)
        return None

    def publish(self, view: HostView) -> list[str]:
        """Write the view; the names of VM definitions added, changed or removed."""
        self._store.put(self._keys.inventory(self._host), json.dumps(view.inventory, sort_keys=True).encode())
        changed = []
        for vm, record in sorted(view.definitions.items()):
            if self._written.get(vm) == record:
                continue
            guards = self._mine(vm)
            if guards is not None and self._store.txn(guards, [Put(self._keys.vm_definition(vm), record)]):
                self._written[vm] = record
                changed.append(vm)
        for vm in sorted(set(self._written) - set(view.definitions)):
            key = self._keys.vm_definition(vm)
            written = self._written.pop(vm)
            guards = self._mine(vm)
            if guards is not None and self._store.txn([*guards, Compare.equals(key, written)], [Delete(key)]):
                changed.append(vm)
        return changed


def _writer(kv: KV, vm: str) -> str:
    """The host a definition record names ("" for one an operator stored by hand)."""
    try:
        return parse_definition(kv.key, kv.value, vm).host
    except RecordError:
        return ""
