"""What an agent publishes about its host besides health: the inventory (capacity, CPU
model, networks, storage pools, labels, its VMs) and each VM's definition, so a VM of a
dead host can be defined and started elsewhere.

    hosts/<host>/inventory   not bound to the lease: a dead host must still be known
    vm-definitions/<vm>      written by the agent of the host the VM is on

A definition is deleted by the agent that wrote it only while it is still exactly what
that agent wrote (a guarded transaction): after a migration the destination's agent owns
the record and the source's stale view cannot remove it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from drctl.config.settings import AgentConfig
from drctl.model.errors import DrctlError
from drctl.hypervisor import Hypervisor
from drctl.store import Compare, Delete, Store
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
        "vms": [{"name": d.name, "state": d.state.value, "memory_mib": d.memory_mib, "vcpus": d.vcpus}
                for d in domains],
        "ts": now,
    }
    return HostView(inventory, definitions)


class Publisher:
    """Writes a HostView, remembering what it wrote so unchanged records are not
    rewritten and only its own stale definitions are removed."""

    def __init__(self, store: Store, keys: Keys, host: str) -> None:
        self._store = store
        self._keys = keys
        self._host = host
        self._written: dict[str, bytes] = {}

    def publish(self, view: HostView) -> list[str]:
        """Write the view; the names of VM definitions added, changed or removed."""
        self._store.put(self._keys.inventory(self._host), json.dumps(view.inventory, sort_keys=True).encode())
        changed = []
        for vm, record in sorted(view.definitions.items()):
            if self._written.get(vm) != record:
                self._store.put(self._keys.vm_definition(vm), record)
                self._written[vm] = record
                changed.append(vm)
        for vm in sorted(set(self._written) - set(view.definitions)):
            key = self._keys.vm_definition(vm)
            self._store.txn([Compare.equals(key, self._written.pop(vm))], [Delete(key)])
            changed.append(vm)
        return changed
