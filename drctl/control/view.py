"""The cluster view: what etcd says, read once, typed, and graded.

One prefix read (`read_records`) gives every record at one store revision, each parsed by
its one parser (drctl.model.records, Intent, Incident); `build_view` turns that into host
verdicts (drctl.health.grading, one quorum rule) and the planning snapshot. The leader
builds one view per tick and publishes it in a `SharedView`; the runner in the same
process reads host URIs and states from it, and a follower's service refreshes it on its
own (the leader's loop is the only reader while it leads).

A record that cannot be parsed is skipped and reported once (audit `record.unreadable`
with its key and the reason); one bad record never stops the controller or a runner.

Sources, by key (drctl/store/keys.py):
- hosts/<h>/inventory      capacity, CPU model, networks, pools, labels, VMs seen (agent)
- hosts/<h>/health, witness/*  -> drctl.health.grading verdicts (state + evidence)
- hosts/<h>/maintenance    a drain request (drctl drain)
- vm-definitions/<vm>      definition + the host whose agent last saw it (agent)
- vms/<vm>                 placement record: where the VM must run (runner, after verify)
- intents/<id>             moves: open ones count on their destination's memory already
- incidents/<id>           incidents (controller)
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from drctl.clock import Clock, SystemClock
from drctl.control.intents import Intent, parse_intent, report_unreadable
from drctl.control.tick import Incident, IncidentKind, IncidentPhase
from drctl.health.grading import HostVerdict, RecordAges, host_state
from drctl.model.cluster import VM, Host, HostState, Snapshot
from drctl.model.proof import FenceProof, parse_proof
from drctl.model.errors import StoreError
from drctl.model.records import (DefinitionRecord, HealthRecord, InventoryRecord, MaintenanceRecord,
                                 PlacementRecord, RecordError, RecordReader, WitnessReport, parse_definition,
                                 parse_health, parse_inventory, parse_maintenance, parse_placement, parse_witness)
from drctl.policy import Policy
from drctl.store import KV, Store
from drctl.store.keys import Keys


# ---------------------------------------------------------------- incidents (type in tick.py)


def parse_incident(key: str, raw: bytes) -> Incident:
    r = RecordReader(key, raw)
    closed_at = r.optional_number("closed_at")
    return Incident(id=r.text("id"), kind=r.enum("kind", IncidentKind), host=r.text("host", ""), rule=r.text("rule", ""),
                    policy=r.text("policy", ""), opened_at=r.number("opened_at", 0.0),
                    phase=r.enum("phase", IncidentPhase), reason=r.text("reason", ""), evidence=r.texts("evidence"),
                    fenced=r.flag("fenced", False), intents=r.texts("intents"), closed_at=closed_at,
                    outcome=r.text("outcome", ""), rounds=r.integer("rounds", 0),
                    planned_at=r.number("planned_at", 0.0))


# ---------------------------------------------------------------- records at one revision


@dataclass(frozen=True)
class ClusterRecords:
    """Every record the controller reads, parsed, at one store revision."""

    revision: int = 0
    hosts: frozenset[str] = frozenset()  # every host with any record (a dead host keeps its inventory)
    health: Mapping[str, HealthRecord] = field(default_factory=dict)
    witnesses: Mapping[str, Mapping[str, WitnessReport]] = field(default_factory=dict)  # host -> witness -> report
    inventories: Mapping[str, InventoryRecord] = field(default_factory=dict)
    maintenance: Mapping[str, MaintenanceRecord] = field(default_factory=dict)
    definitions: Mapping[str, DefinitionRecord] = field(default_factory=dict)
    placements: Mapping[str, PlacementRecord] = field(default_factory=dict)
    intents: tuple[Intent, ...] = ()  # every intent, terminal ones included
    incidents: tuple[Incident, ...] = ()  # every incident, closed ones included
    # hosts whose health key exists (so their lease lives) but cannot be parsed: why
    unreadable_health: Mapping[str, str] = field(default_factory=dict)
    # host -> its fence proof (fence-proofs/<host>, model/proof.py); an unreadable one is absent
    proofs: Mapping[str, FenceProof] = field(default_factory=dict)


def records_from(kvs: Iterable[KV], keys: Keys, revision: int = 0) -> ClusterRecords:
    """Parse what one prefix read returned; unreadable records are reported and skipped."""
    hosts: set[str] = set()
    health: dict[str, HealthRecord] = {}
    witnesses: dict[str, dict[str, WitnessReport]] = {}
    inv: dict[str, InventoryRecord] = {}
    maint: dict[str, MaintenanceRecord] = {}
    defs: dict[str, DefinitionRecord] = {}
    plc: dict[str, PlacementRecord] = {}
    intents: list[Intent] = []
    incidents: list[Incident] = []
    bad_health: dict[str, str] = {}
    proofs: dict[str, FenceProof] = {}
    for kv in kvs:
        try:
            if kv.key.startswith(keys.hosts_prefix()):
                parsed = keys.parse_host_key(kv.key)
                if parsed is None:
                    continue
                host, rest = parsed
                hosts.add(host)
                if rest == "health":
                    try:
                        health[host] = parse_health(kv.key, kv.value, kv.lease, kv.mod_revision)
                    except RecordError as e:
                        # the key is bound to the agent's lease: present = the host lives,
                        # whatever a newer agent wrote in it; never read it as "lease gone"
                        bad_health[host] = str(e)
                        raise
                elif rest.startswith("witness/"):
                    witnesses.setdefault(host, {})[rest.removeprefix("witness/")] = parse_witness(kv.key, kv.value,
                                                                                   kv.mod_revision)
                elif rest == "inventory":
                    inv[host] = parse_inventory(kv.key, kv.value, host, kv.mod_revision)
                elif rest == "maintenance":
                    try:
                        maint[host] = parse_maintenance(kv.key, kv.value, host)
                    except RecordError as e:
                        # an operator asked for something: an unreadable request still drains
                        report_unreadable(e)
                        maint[host] = MaintenanceRecord(host, reason="unreadable maintenance request")
            elif kv.key.startswith(keys.vm_definitions_prefix()):
                vm = Keys.last_segment(kv.key)
                defs[vm] = parse_definition(kv.key, kv.value, vm)
            elif kv.key.startswith(keys.vms_prefix()):
                vm = Keys.last_segment(kv.key)
                plc[vm] = parse_placement(kv.key, kv.value, vm)
            elif kv.key.startswith(keys.intents_prefix()):
                intents.append(parse_intent(kv.key, kv.value, kv.mod_revision))
            elif kv.key.startswith(keys.incidents_prefix()):
                incidents.append(parse_incident(kv.key, kv.value))
            elif kv.key.startswith(keys.fence_proofs_prefix()):
                proof = parse_proof(kv.key, kv.value)
                if proof.host != Keys.last_segment(kv.key):
                    raise RecordError(kv.key, "host", f"names {proof.host!r}: a proof backs only the host of its key")
                proofs[proof.host] = proof
        except RecordError as e:
            report_unreadable(e)
    return ClusterRecords(revision, frozenset(hosts), health, witnesses, inv, maint, defs, plc, tuple(intents),
                          tuple(incidents), bad_health, proofs)


def read_records(store: Store, keys: Keys) -> ClusterRecords:
    """One read of the whole prefix: a consistent view at one revision."""
    kvs, rev = store.get_prefix(keys.prefix)
    return records_from(kvs, keys, rev)


# ---------------------------------------------------------------- verdicts and snapshot (pure)


class RecordClock:
    """Ages of the health and witness records, judged by the reader alone (issue 12 case 17).

    A record's `ts` is its writer's wall clock: comparing it with ours makes a host whose
    clock is behind look stalled for ever. Instead each read notes every record's etcd mod
    revision (every rewrite changes it, even with the same content) and when, on this
    reader's own monotonic clock, it first saw that revision: the record's age is the time
    since. A record already there at the reader's first read is aged from that read (a
    lower bound): a new leader trusts what it finds for one staleness threshold, then only
    what keeps being rewritten.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, float]] = {}  # (host, writer) -> revision, first seen
        self._lock = threading.Lock()

    def ages(self, records: ClusterRecords, mono: float) -> dict[str, RecordAges]:
        with self._lock:
            seen: dict[tuple[str, str], tuple[int, float]] = {}

            def age(host: str, writer: str, revision: int) -> float:
                prev = self._seen.get((host, writer))
                if prev is None or prev[0] != revision:
                    prev = (revision, mono)  # rewritten since the last read (or new): age 0
                seen[(host, writer)] = prev
                return mono - prev[1]

            out: dict[str, RecordAges] = {}
            for h in sorted(records.hosts):
                rec = records.health.get(h)
                health = age(h, "", rec.revision) if rec is not None else 0.0
                out[h] = RecordAges(health, {w: age(h, w, r.revision) for w, r in records.witnesses.get(h, {}).items()})
            self._seen = seen
            return out


def host_verdicts(records: ClusterRecords, quorum: int | None, now: float,
                  ages: Mapping[str, RecordAges] | None = None) -> dict[str, HostVerdict]:
    """Every host's state. quorum: a fixed number of witnesses that must confirm a host
    dead, or None for a majority of the witnesses it has (drctl.health.grading.quorum_for).
    ages: the records' ages by the reader's clock (RecordClock); without them (a one-shot
    reader) the writers' timestamps are compared with `now`."""
    out = {h: host_state(h, records.health.get(h), records.witnesses.get(h, {}), quorum, now,
                         ages.get(h, RecordAges()) if ages is not None else None)
           for h in sorted(records.hosts)}
    for h, why in records.unreadable_health.items():
        out[h] = HostVerdict(h, HostState.UNREACHABLE, f"health record present (lease lives) but unreadable: {why}",
                             (f"unreadable health record: {why}",), lease_present=True)
    return out


def short_of_quorum(records: ClusterRecords, quorum: int | None) -> dict[str, int]:
    """host -> its witness count, for hosts with fewer witnesses than a fixed quorum: such
    a host can never be declared dead (a cluster smaller than the configuration assumed,
    or witnesses gone). Empty with the default quorum, a majority of what each host has."""
    if quorum is None:
        return {}
    counts = {h: len(records.witnesses.get(h, {})) for h in sorted(records.hosts)}
    return {h: n for h, n in counts.items() if n < quorum}


def host_states_from(kvs: Iterable[KV], keys: Keys, quorum: int | None, now: float) -> dict[str, HostVerdict]:
    """Verdicts for every host that has any record among `kvs` (the hosts prefix)."""
    return host_verdicts(records_from(kvs, keys), quorum, now)


def read_host_states(store: Store, keys: Keys, quorum: int | None, now: float) -> dict[str, HostVerdict]:
    """One read of the hosts prefix -> host -> verdict (see drctl.health.grading.host_state)."""
    kvs, _revision = store.get_prefix(keys.hosts_prefix())
    return host_states_from(kvs, keys, quorum, now)


def vm_locations(records: ClusterRecords) -> dict[str, str]:
    """vm -> host it is on: the placement record if any (written after a verified move),
    else the host whose agent last published its definition."""
    where = {vm: d.host for vm, d in records.definitions.items() if d.host}
    for vm, p in records.placements.items():
        if p.host:
            where[vm] = p.host
    return where


def build_snapshot(records: ClusterRecords, verdicts: Mapping[str, HostVerdict], now: float) -> Snapshot:
    """The cluster as the placement code sees it (pure)."""
    where = vm_locations(records)
    vms: dict[str, VM] = {}
    for vm, host in sorted(where.items()):
        d = records.definitions.get(vm)
        inventory = records.inventories.get(host)
        inv_vm = inventory.vm(vm) if inventory else None
        memory = (d.memory_mib if d else 0) or (inv_vm.memory_mib if inv_vm else 0)
        vcpus = (d.vcpus if d else 0) or (inv_vm.vcpus if inv_vm else 0) or 1
        vms[vm] = VM(name=vm, host=host, memory_mib=memory, vcpus=vcpus, priority=d.priority if d else 0,
                     tags=frozenset(d.tags if d else ()))
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
        inv = records.inventories.get(name) or InventoryRecord(name)
        verdict = verdicts.get(name)
        hosts[name] = Host(
            name=name,
            memory_mib=inv.memory_total_mib or 1,
            cpus=inv.cpus or 1,
            memory_used_mib=used.get(name, 0),
            reserved_mib=inv.reserved_mib,
            cpu_used=float(cpu.get(name, 0)),
            cpu_model=inv.cpu_model or "qemu64",
            networks=frozenset(inv.networks),
            storage_pools=frozenset(inv.storage_pools),
            labels=dict(inv.labels),
            state=verdict.state if verdict else HostState.UNREACHABLE,
            maintenance=name in records.maintenance,
        )
    # a VM on a host nobody has heard of cannot be planned; keep it out rather than crash
    return Snapshot(hosts, {n: v for n, v in vms.items() if v.host in hosts}, taken_at=now)


def running_on(records: ClusterRecords) -> dict[str, list[str]]:
    """vm -> hosts whose latest inventory lists it running (a duplicate shows as two)."""
    out: dict[str, list[str]] = {}
    for host, inv in sorted(records.inventories.items()):
        for entry in inv.vms:
            if entry.state == "running":
                out.setdefault(entry.name, []).append(host)
    return out


# ---------------------------------------------------------------- the view


@dataclass(frozen=True)
class ClusterView:
    """One tick's picture of the cluster: records, verdicts and snapshot, all from one
    read. `ok` is False when etcd could not be read (the records are then empty)."""

    records: ClusterRecords = ClusterRecords()
    verdicts: Mapping[str, HostVerdict] = field(default_factory=dict)
    snapshot: Snapshot = field(default_factory=lambda: Snapshot({}, {}))
    taken_at: float = 0.0
    ok: bool = True
    # when the read this data came from was sent, on this process's monotonic clock; for
    # a view that is not ok, that of the last read that succeeded (SharedView.refresh)
    read_mono: float = 0.0

    def host(self, name: str) -> Host | None:
        return self.snapshot.hosts.get(name)

    def age_s(self, mono_now: float) -> float:
        """How old the data is: time since its read was sent, by the local monotonic
        clock alone (never another machine's wall clock, never ours jumping)."""
        return max(0.0, mono_now - self.read_mono)

    def uris(self) -> dict[str, str]:
        """host -> libvirt URI, from the agents' inventories."""
        return {h: inv.uri for h, inv in self.records.inventories.items() if inv.uri}


def build_view(records: ClusterRecords, quorum: int | None, now: float, ok: bool = True,
               ages: Mapping[str, RecordAges] | None = None) -> ClusterView:
    verdicts = host_verdicts(records, quorum, now, ages)
    return ClusterView(records, verdicts, build_snapshot(records, verdicts, now), now, ok)


def configured_quorum(controller_quorum: int | None, policy: Policy) -> int | None:
    """The fixed witness quorum in force, if any: the controller's `witness_quorum`, else
    the policy's; None = a majority of each host's witnesses (grading.quorum_for)."""
    return controller_quorum if controller_quorum is not None else policy.evidence.witness_quorum


def read_view(store: Store, keys: Keys, quorum: int | None, now: float) -> ClusterView:
    """Read etcd once and build the view; an unreadable etcd gives an empty view, not ok."""
    try:
        records = read_records(store, keys)
    except StoreError:
        return build_view(ClusterRecords(), quorum, now, ok=False)
    return build_view(records, quorum, now)


class SharedView:
    """The latest ClusterView of this process, shared by the controller loop (which
    publishes one per tick) and the runner (which reads host URIs and states from it).

    `uris` is a live read-only mapping: a host joins as soon as a view lists its URI, and
    a URI once seen is kept (an inventory that turns unreadable must not strand a move).
    `host` answers from the latest view etcd could be read for: during an outage the
    runner keeps what it knew, while the loop's tick sees the outage (`latest.ok`).
    """

    def __init__(self, store: Store, keys: Keys, quorum: int | None, clock: Clock | None = None) -> None:
        self.store, self.keys, self.quorum = store, keys, quorum
        self.clock = clock or SystemClock()
        self.record_clock = RecordClock()  # ages of records by this process's own clock
        self._lock = threading.Lock()
        self._view = ClusterView()
        self._last_ok = self._view
        self._uris: dict[str, str] = {}
        self.uris: Mapping[str, str] = _LiveUris(self)

    def refresh(self, now: float, mono: float | None = None) -> ClusterView:
        """Read etcd once, publish and return the new view. Its `read_mono` is when this
        read was sent if it succeeded, else when the last successful one was: the age
        of a view counts from the read its data came from. Health and witness records are
        aged on this process's monotonic clock (`mono`, default the view's clock), by
        their etcd revisions (RecordClock), never by their writers' clocks."""
        sent = self.clock.monotonic()
        try:
            records = read_records(self.store, self.keys)
        except StoreError:
            view = build_view(ClusterRecords(), self.quorum, now, ok=False)
        else:
            ages = self.record_clock.ages(records, sent if mono is None else mono)
            view = build_view(records, self.quorum, now, ages=ages)
        with self._lock:
            since = sent if view.ok else self._last_ok.read_mono
        view = replace(view, read_mono=since)
        self.publish(view)
        return view

    def publish(self, view: ClusterView) -> None:
        with self._lock:
            self._view = view
            if view.ok:
                self._last_ok = view
            self._uris.update(view.uris())

    @property
    def latest(self) -> ClusterView:
        with self._lock:
            return self._view

    def host(self, name: str) -> Host | None:
        with self._lock:
            return self._last_ok.host(name)

    def uri(self, host: str) -> str | None:
        with self._lock:
            return self._uris.get(host)


class _LiveUris(Mapping[str, str]):
    def __init__(self, shared: SharedView) -> None:
        self._shared = shared

    def _copy(self) -> dict[str, str]:
        with self._shared._lock:
            return dict(self._shared._uris)

    def __getitem__(self, host: str) -> str:
        return self._copy()[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._copy())

    def __len__(self) -> int:
        return len(self._copy())
