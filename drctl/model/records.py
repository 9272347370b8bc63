"""The records drctl keeps in etcd, typed, with one parser each.

Every reader of etcd goes through these parsers instead of indexing JSON dicts by string
keys. A parser checks each field's type and raises `RecordError` naming the key and the
field; it ignores fields it does not know, so a newer writer (a rolling upgrade) does not
stop an older reader. What the writers put in etcd is unchanged: the `to_json` methods
write exactly what the agents, the runner and `drctl drain` wrote before these types.

    hosts/<h>/health          HealthRecord    (agent, bound to its lease)
    hosts/<h>/witness/<peer>  WitnessReport   (peer's agent, bound to the peer's lease)
    hosts/<h>/inventory       InventoryRecord (agent)
    hosts/<h>/maintenance     MaintenanceRecord (drctl drain)
    vm-definitions/<vm>       DefinitionRecord (agent; plain domain XML is accepted too)
    vms/<vm>                  PlacementRecord (runner, after a verified move)
    fence-proofs/<host>       FenceProof (leader; its type and parser are in model/proof.py)

Intents and incidents have their types in drctl.control (intents.py, tick.py); their
parsers live next to them and use `RecordReader` from here, so every record fails the
same way. This module is pure: no store, no I/O.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, TypeVar

from drctl.model.cluster import HostState
from drctl.model.errors import DrctlError

T = TypeVar("T")
E = TypeVar("E", bound=Enum)


class RecordError(DrctlError):
    """A record in etcd that cannot be read: which key, which field, why."""

    def __init__(self, key: str, field_name: str, reason: str) -> None:
        self.key, self.field, self.reason = key, field_name, reason
        where = f"field {field_name!r}: " if field_name else ""
        super().__init__(f"{key or 'record'}: {where}{reason}")


_MISSING: Any = object()


class RecordReader:
    """Typed access to one JSON object read from `key`; every failure is a RecordError."""

    def __init__(self, key: str, raw: bytes | str | Mapping[str, Any], prefix: str = "") -> None:
        self.key, self.prefix = key, prefix
        if isinstance(raw, Mapping):
            self.data: Mapping[str, Any] = raw
            return
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordError(key, "", f"not JSON ({e})") from None
        if not isinstance(data, dict):
            raise RecordError(key, "", f"not a JSON object but {type(data).__name__}")
        self.data = data

    def fail(self, name: str, reason: str) -> RecordError:
        return RecordError(self.key, self.prefix + name, reason)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def _get(self, name: str, default: Any, ok: Callable[[Any], bool], what: str) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise self.fail(name, "missing")
            return default
        if not ok(value):
            raise self.fail(name, f"expected {what}, got {type(value).__name__} {value!r:.40}")
        return value

    def text(self, name: str, default: Any = _MISSING) -> str:
        return self._get(name, default, lambda v: isinstance(v, str), "a string")  # type: ignore[no-any-return]

    def integer(self, name: str, default: Any = _MISSING) -> int:
        return self._get(name, default, lambda v: isinstance(v, int) and not isinstance(v, bool),  # type: ignore[no-any-return]
                         "an integer")

    def number(self, name: str, default: Any = _MISSING) -> float:
        v = self._get(name, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
        return float(v)

    def optional_number(self, name: str) -> float | None:
        return None if self.data.get(name) is None else self.number(name)

    def flag(self, name: str, default: Any = _MISSING) -> bool:
        return self._get(name, default, lambda v: isinstance(v, bool), "true or false")  # type: ignore[no-any-return]

    def texts(self, name: str) -> tuple[str, ...]:
        items = self._get(name, [], lambda v: isinstance(v, list), "a list")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{name}[{i}]", f"expected a string, got {type(item).__name__}")
        return tuple(items)

    def mapping(self, name: str) -> dict[str, Any]:
        return dict(self._get(name, {}, lambda v: isinstance(v, dict), "an object"))

    def text_map(self, name: str) -> dict[str, str]:
        out = self.mapping(name)
        for k, v in out.items():
            if not isinstance(v, str):
                raise self.fail(f"{name}.{k}", f"expected a string, got {type(v).__name__}")
        return out

    def enum(self, name: str, kind: type[E], default: Any = _MISSING) -> E:
        value = self.text(name, default)
        if isinstance(value, kind):
            return value
        try:
            return kind(value)
        except ValueError:
            raise self.fail(name, f"{value!r} is not one of {', '.join(str(m.value) for m in kind)}") from None

    def objects(self, name: str) -> list["RecordReader"]:
        items = self._get(name, [], lambda v: isinstance(v, list), "a list")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{name}[{i}]", f"expected an object, got {type(item).__name__}")
            out.append(RecordReader(self.key, item, f"{self.prefix}{name}[{i}]."))
        return out

    def child(self, name: str) -> "RecordReader":
        return RecordReader(self.key, self.mapping(name), f"{self.prefix}{name}.")


# ---------------------------------------------------------------- health and witnesses


class Grade(str, Enum):
    """A host's (or one probe's) own grade, worst last."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def state(self) -> HostState:
        return HostState(self.value)


_SEVERITY = {Grade.HEALTHY: 0, Grade.DEGRADED: 1, Grade.FAILING: 2}


@dataclass(frozen=True)
class HealthRecord:
    """`hosts/<host>/health`, bound to the agent's lease: present = the lease lives."""

    host: str
    grade: Grade
    reason: str
    ts: float
    seq: int
    interval_s: float = 1.0  # how often the agent rewrites it: tells a stalled agent apart
    lease: int = 0  # the lease the key is bound to (from etcd, not stored in the value)
    samples: Mapping[str, Any] = field(default_factory=dict)
    revision: int = 0  # etcd mod revision it was read at (not stored): tells a rewrite apart

    def to_json(self) -> bytes:
        return json.dumps({"host": self.host, "grade": self.grade.value, "reason": self.reason, "ts": self.ts,
                           "seq": self.seq, "interval_s": self.interval_s, "samples": dict(self.samples)},
                          sort_keys=True).encode()


def parse_health(key: str, raw: bytes, lease: int = 0, revision: int = 0) -> HealthRecord:
    r = RecordReader(key, raw)
    return HealthRecord(r.text("host"), r.enum("grade", Grade), r.text("reason", ""), r.number("ts"), r.integer("seq", 0),
                        r.number("interval_s", 1.0), lease, r.mapping("samples"), revision)


@dataclass(frozen=True)
class WitnessReport:
    """`hosts/<host>/witness/<witness>`: what one peer saw of the host, bound to the
    peer's lease (a report disappears with the witness)."""

    host: str
    witness: str
    libvirt_reachable: bool
    lease_seen: bool  # the witness saw the host's health key (its lease) present
    ts: float
    interval_s: float = 1.0
    latency_s: float | None = None
    detail: str = ""
    revision: int = 0  # etcd mod revision it was read at (not stored)

    def to_json(self) -> bytes:
        return json.dumps({"host": self.host, "witness": self.witness, "libvirt_reachable": self.libvirt_reachable,
                           "lease_seen": self.lease_seen, "ts": self.ts, "interval_s": self.interval_s,
                           "latency_s": self.latency_s, "detail": self.detail}, sort_keys=True).encode()


def parse_witness(key: str, raw: bytes, revision: int = 0) -> WitnessReport:
    r = RecordReader(key, raw)
    return WitnessReport(r.text("host"), r.text("witness"), r.flag("libvirt_reachable"), r.flag("lease_seen", False),
                         r.number("ts"), r.number("interval_s", 1.0), r.optional_number("latency_s"), r.text("detail", ""),
                         revision)


# ---------------------------------------------------------------- inventory and definitions


@dataclass(frozen=True)
class InventoryVM:
    name: str
    state: str  # a libvirt domain state as the agent saw it ("running", "shutoff", ...)
    memory_mib: int = 0
    vcpus: int = 0
    reason: str = ""  # libvirt's state reason of a stopped domain (drctl.hypervisor.StateReason values)


@dataclass(frozen=True)
class InventoryRecord:
    """`hosts/<host>/inventory`: not bound to a lease, so a dead host stays known. Every
    field is optional: an absent one reads as "unknown" (0, "", empty)."""

    host: str
    uri: str = ""
    hostname: str = ""
    memory_total_mib: int = 0
    memory_free_mib: int = 0
    cpus: int = 0
    cpu_model: str = ""
    networks: tuple[str, ...] = ()
    storage_pools: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    vms: tuple[InventoryVM, ...] = ()
    ts: float = 0.0
    reserved_mib: int = 0  # memory kept back from placement (not written by the agent today)
    revision: int = 0  # etcd mod revision it was read at (not stored): orders it among other records


    def vm(self, name: str) -> InventoryVM | None:
        return next((v for v in self.vms if v.name == name), None)


def parse_inventory(key: str, raw: bytes, host: str = "", revision: int = 0) -> InventoryRecord:
    r = RecordReader(key, raw)
    vms = tuple(InventoryVM(v.text("name"), v.text("state", ""), v.integer("memory_mib", 0), v.integer("vcpus", 0),
                            v.text("reason", "")) for v in r.objects("vms"))
    return InventoryRecord(r.text("host", host), r.text("uri", ""), r.text("hostname", ""), r.integer("memory_total_mib", 0),
                           r.integer("memory_free_mib", 0), r.integer("cpus", 0), r.text("cpu_model", ""), r.texts("networks"),
                           r.texts("storage_pools"), r.text_map("labels"), vms, r.number("ts", 0.0),
                           r.integer("reserved_mib", 0), revision)


@dataclass(frozen=True)
class DefinitionRecord:
    """`vm-definitions/<vm>`: the domain XML and the host whose agent last saw it."""

    vm: str
    xml: str
    host: str = ""
    uuid: str = ""
    memory_mib: int = 0
    vcpus: int = 0
    priority: int = 0
    tags: tuple[str, ...] = ()


def parse_definition(key: str, raw: bytes, vm: str = "") -> DefinitionRecord:
    """A JSON record, or plain domain XML (an operator may store one by hand)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RecordError(key, "", "not UTF-8") from None
    if not text.lstrip().startswith("{"):
        return DefinitionRecord(vm=vm, xml=text)
    r = RecordReader(key, text)
    return DefinitionRecord(r.text("vm", vm), r.text("xml", ""), r.text("host", ""), r.text("uuid", ""),
                            r.integer("memory_mib", 0), r.integer("vcpus", 0), r.integer("priority", 0), r.texts("tags"))


# ---------------------------------------------------------------- placement and maintenance


@dataclass(frozen=True)
class PlacementRecord:
    """`vms/<vm>`: where a VM must run, written only after a verified move."""

    vm: str
    host: str
    intent: str = ""
    incident: str = ""
    healthy: bool = True
    updated: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"vm": self.vm, "host": self.host, "intent": self.intent, "incident": self.incident,
                           "healthy": self.healthy, "updated": self.updated}, sort_keys=True).encode()


def parse_placement(key: str, raw: bytes, vm: str = "") -> PlacementRecord:
    r = RecordReader(key, raw)
    return PlacementRecord(r.text("vm", vm), r.text("host", ""), r.text("intent", ""), r.text("incident", ""),
                           r.flag("healthy", True), r.number("updated", 0.0))


@dataclass(frozen=True)
class MaintenanceRecord:
    """`hosts/<host>/maintenance`: a drain request (`drctl drain`)."""

    host: str
    reason: str = ""
    requested_by: str = ""
    ts: float = 0.0

    def to_json(self) -> bytes:
        # field order as `drctl drain` always wrote it (not sorted)
        return json.dumps({"host": self.host, "reason": self.reason, "requested_by": self.requested_by,
                           "ts": self.ts}).encode()


def parse_maintenance(key: str, raw: bytes, host: str = "") -> MaintenanceRecord:
    r = RecordReader(key, raw)
    return MaintenanceRecord(r.text("host", host), r.text("reason", ""), r.text("requested_by", ""), r.number("ts", 0.0))
