"""Load, validate and save the cluster snapshot file (JSON; YAML accepted).

The controller builds a `model.Snapshot` from etcd and libvirt; saved to a file it can be
replayed (`drctl plan --snapshot FILE`). Every error is a ConfigError naming the file and
the path of the offending field (`vms[3].memory_mib: must be >= 0`), because an operator
fixing a 20,000-line snapshot needs to know where to look, not a Python traceback.

`hosts` and `vms` may each be a list of objects with a `name`, or a mapping from name to
object; error paths follow the shape of the input (`vms[3].host` or `vms.web-1.host`).
Unknown keys are errors: a typo such as `memory_mb` must not silently become a default.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from drctl.model.errors import ConfigError
from drctl.model.cluster import VM, Disk, Host, HostState, Snapshot, StorageKind

FORMAT_VERSION = 1


class _Invalid(Exception):
    """Internal: a field failed validation; becomes a ConfigError with the file name."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


# ------------------------------------------------------------------ scalar readers
# Each reader takes (value, path) and returns the converted value or raises _Invalid.


def _int(minimum: int) -> Callable[[Any, str], int]:
    def read(value: object, path: str) -> int:  # object, not Any: the checks below narrow it
        # bool is an int in Python; `true` as a memory size is a mistake, not 1 MiB
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise _Invalid(path, f"must be an integer, got {value!r}")
        if value < minimum:
            raise _Invalid(path, f"must be >= {minimum}")
        return value

    return read


def _float(minimum: float) -> Callable[[Any, str], float]:
    def read(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid(path, f"must be a number, got {value!r}")
        if value < minimum:
            raise _Invalid(path, f"must be >= {minimum:g}")
        return float(value)

    return read


def _optional_float(minimum: float) -> Callable[[Any, str], float | None]:
    inner = _float(minimum)
    return lambda value, path: None if value is None else inner(value, path)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"must be a string, got {value!r}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, f"must be true or false, got {value!r}")
    return value


def _strset(value: Any, path: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise _Invalid(path, f"must be a list of strings, got {value!r}")
    return frozenset(_str(v, f"{path}[{i}]") for i, v in enumerate(value))


def _labels(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(path, f"must be a mapping of strings, got {value!r}")
    return {_str(k, path): _str(v, f"{path}.{k}") for k, v in value.items()}


def _enum(kind: type[Enum]) -> Callable[[Any, str], Any]:
    def read(value: Any, path: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise _Invalid(path, f"must be one of {allowed}, got {value!r}") from None

    return read


@dataclass(frozen=True)
class _Field:
    read: Callable[[Any, str], Any]
    required: bool = False


def _disks(value: Any, path: str) -> tuple[Disk, ...]:
    if not isinstance(value, list):
        raise _Invalid(path, f"must be a list of disks, got {value!r}")
    return tuple(Disk(**_object(d, f"{path}[{i}]", _DISK_FIELDS)) for i, d in enumerate(value))


_DISK_FIELDS: Mapping[str, _Field] = {
    "name": _Field(_str, required=True),
    "size_gib": _Field(_float(0), required=True),
    "storage": _Field(_enum(StorageKind)),
    "pool": _Field(_str),
}

_HOST_FIELDS: Mapping[str, _Field] = {
    "name": _Field(_str, required=True),
    "memory_mib": _Field(_int(1), required=True),
    "cpus": _Field(_int(1), required=True),
    "memory_used_mib": _Field(_int(0)),
    "reserved_mib": _Field(_int(0)),
    "cpu_used": _Field(_float(0)),
    "cpu_model": _Field(_str),
    "cpu_features": _Field(_strset),
    "hypervisor_version": _Field(_str),
    "machine_types": _Field(_strset),
    "networks": _Field(_strset),
    "storage_pools": _Field(_strset),
    "labels": _Field(_labels),
    "state": _Field(_enum(HostState)),
    "maintenance": _Field(_bool),
    "incoming_limit": _Field(_int(0)),
}

_VM_FIELDS: Mapping[str, _Field] = {
    "name": _Field(_str, required=True),
    "host": _Field(_str, required=True),
    "memory_mib": _Field(_int(0), required=True),
    "vcpus": _Field(_int(0)),
    "cpu_model": _Field(_str),
    "cpu_features": _Field(_strset),
    "machine_type": _Field(_str),
    "networks": _Field(_strset),
    "disks": _Field(_disks),
    "priority": _Field(_int(-(2**31))),
    "tags": _Field(_strset),
    "affinity_group": _Field(_str),
    "anti_affinity_group": _Field(_str),
    "migratable": _Field(_bool),
    "dirty_rate_mibs": _Field(_optional_float(0)),
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _object(value: Any, path: str, fields: Mapping[str, _Field]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path or "snapshot", f"must be an object, got {type(value).__name__}")
    for key in value:
        if key not in fields:
            raise _Invalid(_join(path, key), "unknown field")
    out = {}
    for key, spec in fields.items():
        if key in value:
            out[key] = spec.read(value[key], _join(path, key))
        elif spec.required:
            raise _Invalid(_join(path, key), "missing required field")
    return out


def _entries(value: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, object) pairs from a list of named objects or a name -> object mapping."""
    if isinstance(value, list):
        return [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = []
        for name, v in value.items():
            p = f"{path}.{name}"
            if isinstance(v, dict):
                if "name" in v and v["name"] != name:
                    raise _Invalid(f"{p}.name", f"{v['name']!r} differs from its key {name!r}")
                v = {**v, "name": name}
            out.append((p, v))
        return out
    raise _Invalid(path, "must be a list of objects or a mapping from name to object")


def parse_snapshot(data: Any, source: str = "<snapshot>") -> Snapshot:
    """Validate a decoded snapshot document and build a Snapshot. Raises ConfigError."""
    try:
        return _parse(data)
    except _Invalid as e:
        raise ConfigError(f"{source}: {e}") from None


def _parse(data: Any) -> Snapshot:
    doc = _object(
        data,
        "",
        {
            "format": _Field(_int(1)),
            "taken_at": _Field(_float(0)),
            "hosts": _Field(lambda v, p: v, required=True),
            "vms": _Field(lambda v, p: v, required=True),
        },
    )
    if doc.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise _Invalid("format", f"unsupported version {doc['format']}, expected {FORMAT_VERSION}")
    hosts: dict[str, Host] = {}
    for path, raw in _entries(doc["hosts"], "hosts"):
        host = Host(**_object(raw, path, _HOST_FIELDS))
        if host.name in hosts:
            raise _Invalid(f"{path}.name", f"duplicate host {host.name!r}")
        if host.reserved_mib > host.memory_mib:
            raise _Invalid(f"{path}.reserved_mib", "must not exceed memory_mib")
        hosts[host.name] = host
    vms: dict[str, VM] = {}
    for path, raw in _entries(doc["vms"], "vms"):
        vm = VM(**_object(raw, path, _VM_FIELDS))
        if vm.name in vms:
            raise _Invalid(f"{path}.name", f"duplicate vm {vm.name!r}")
        if vm.host not in hosts:
            raise _Invalid(f"{path}.host", f"unknown host {vm.host!r}")
        vms[vm.name] = vm
    return Snapshot(hosts=hosts, vms=vms, taken_at=doc.get("taken_at", 0.0))


def load_snapshot(path: str | Path) -> Snapshot:
    """Read a snapshot file (.json, or YAML for any other suffix). Raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{p}: {where}invalid YAML: {getattr(e, 'problem', e)}") from None
    return parse_snapshot(data, str(p))


# ------------------------------------------------------------------ writing


def _dump_fields(obj: Any, fields: Mapping[str, _Field]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in fields:
        value = getattr(obj, key)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, (HostState, StorageKind)):
            value = value.value
        elif isinstance(value, tuple):  # disks
            value = [_dump_fields(d, _DISK_FIELDS) for d in value]
        elif isinstance(value, Mapping):
            value = dict(sorted(value.items()))
        out[key] = value
    return out


def dump_snapshot(snap: Snapshot) -> dict[str, Any]:
    """The snapshot as a JSON-ready document that `parse_snapshot` reads back unchanged."""
    return {
        "format": FORMAT_VERSION,
        "taken_at": snap.taken_at,
        "hosts": [_dump_fields(snap.hosts[n], _HOST_FIELDS) for n in sorted(snap.hosts)],
        "vms": [_dump_fields(snap.vms[n], _VM_FIELDS) for n in sorted(snap.vms)],
    }


def save_snapshot(snap: Snapshot, path: str | Path) -> None:
    """Write the snapshot as JSON (stable key order, so saved snapshots diff cleanly)."""
    Path(path).write_text(json.dumps(dump_snapshot(snap), indent=1) + "\n", encoding="utf-8")
