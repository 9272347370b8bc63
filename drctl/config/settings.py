"""drctl's configuration: one typed, frozen object, loaded once from one YAML file.

    etcd:                      # where the shared state lives
      endpoints: [127.0.0.1:2379]
      prefix: /drctl/
      timeout: 5s
    agent:                     # `drctl agent` (one per hypervisor host)
      host: hv1                # default: this machine's hostname (--host overrides)
      libvirt_uri: qemu:///system
      lease_ttl: 2s            # whole seconds, etcd's minimum is 2s
      report_interval: 1s      # the health record is rewritten at least this often
      peers: auto              # or a list of {name, uri}; auto = from the inventory in etcd
      witnesses: 2             # how many peers this agent watches
      witness_interval: 1s
      witness_timeout: 1s
      inventory_interval: 10s
      hysteresis: 3            # samples in a row before a probe's grade changes
      labels: {rack: r1}
      networks: [br0]          # what VMs may need here (the hypervisor seam does not list them)
      storage_pools: [default]
      audit_file: /var/log/drctl/agent.jsonl
      probes:                  # default: every built-in probe with default settings
        - {kind: libvirt, interval: 1s, timeout: 1s}
        - {kind: edac, root: /sys/devices/system/edac, degraded: 1}

Every problem is a ConfigError naming file, line, column and field, all of them in one
go. A section another part of drctl needs (the controller's) is one more entry in
`SECTIONS` and one more field on `Config`.
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from drctl.config.fields import duration as _duration
from drctl.config.fields import lease_ttl as _lease_ttl
from drctl.config.fields import str_map as _labels
from drctl.config.controller import ControllerConfig, read_controller
from drctl.model.errors import ConfigError
from drctl.policy.reader import Invalid, Reader, compose, join
from drctl.health.probes import ProbeSpec, default_probes, read_probes


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/drctl/"
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Peer:
    name: str
    uri: str


@dataclass(frozen=True)
class AgentConfig:
    host: str = field(default_factory=socket.gethostname)
    libvirt_uri: str = "qemu:///system"
    lease_ttl_s: int = 2
    report_interval_s: float = 1.0
    peers: tuple[Peer, ...] | None = None  # None = auto: peers from the inventory in etcd
    witnesses: int = 2
    witness_interval_s: float = 1.0
    witness_timeout_s: float = 1.0
    inventory_interval_s: float = 10.0
    hysteresis: int = 3
    labels: Mapping[str, str] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    storage_pools: tuple[str, ...] = ()
    audit_file: str = ""
    probes: tuple[ProbeSpec, ...] = field(default_factory=default_probes)


@dataclass(frozen=True)
class Config:
    path: str = ""
    etcd: EtcdConfig = EtcdConfig()
    agent: AgentConfig | None = None  # None: the file has no agent section
    controller: ControllerConfig | None = None  # None: the file has no controller section


SectionReader = Callable[[Reader, yaml.Node, str], Any]


def _strings(r: Reader, node: yaml.Node, path: str) -> tuple[str, ...]:
    return tuple(r.each(node, path, r.word, scalar_ok=True))


def _read_fields(r: Reader, node: yaml.Node, path: str, readers: Mapping[str, tuple[str, SectionReader]]) -> dict:
    """Read a section's keys: yaml key -> (dataclass field, reader). Bad fields are
    reported and left at their defaults so the rest is still checked."""
    out: dict[str, Any] = {}
    for key, value in r.mapping(node, path, readers).items():
        attr, read = readers[key]
        try:
            out[attr] = read(r, value, join(path, key))
        except Invalid:
            pass
    return out


def _read_etcd(r: Reader, node: yaml.Node, path: str) -> EtcdConfig:
    def prefix(r: Reader, n: yaml.Node, p: str) -> str:
        text = r.string(n, p)
        if not text.endswith("/"):
            raise r.fail(n, p, f"must end with '/' (else {text!r} also matches {text}-other/...)")
        return text

    return EtcdConfig(**_read_fields(r, node, path, {
        "endpoints": ("endpoints", _strings),
        "prefix": ("prefix", prefix),
        "timeout": ("timeout_s", _duration),
    }))


def _peers(r: Reader, node: yaml.Node, path: str) -> tuple[Peer, ...] | None:
    if isinstance(node, yaml.ScalarNode) and node.value == "auto":
        return None

    def peer(n: yaml.Node, p: str) -> Peer:
        got = r.mapping(n, p, ("name", "uri"))
        for key in ("name", "uri"):
            if key not in got:
                raise r.fail(n, f"{p}.{key}", "missing")
        return Peer(r.word(got["name"], f"{p}.name"), r.word(got["uri"], f"{p}.uri"))

    if not isinstance(node, yaml.SequenceNode):
        raise r.fail(node, path, "expected `auto` or a list of {name, uri}")
    return tuple(r.each(node, path, peer))


def _read_agent(r: Reader, node: yaml.Node, path: str) -> AgentConfig:
    def count(lo: int, hi: int) -> SectionReader:
        return lambda r, n, p: r.integer(n, p, minimum=lo, maximum=hi)

    return AgentConfig(**_read_fields(r, node, path, {
        "host": ("host", lambda r, n, p: r.word(n, p)),
        "libvirt_uri": ("libvirt_uri", lambda r, n, p: r.word(n, p)),
        "lease_ttl": ("lease_ttl_s", _lease_ttl),
        "report_interval": ("report_interval_s", _duration),
        "peers": ("peers", _peers),
        "witnesses": ("witnesses", count(0, 64)),
        "witness_interval": ("witness_interval_s", _duration),
        "witness_timeout": ("witness_timeout_s", _duration),
        "inventory_interval": ("inventory_interval_s", _duration),
        "hysteresis": ("hysteresis", count(1, 1000)),
        "labels": ("labels", _labels),
        "networks": ("networks", _strings),
        "storage_pools": ("storage_pools", _strings),
        "audit_file": ("audit_file", lambda r, n, p: r.string(n, p)),
        "probes": ("probes", read_probes),
    }))


# top-level section -> (Config field, reader). The controller adds its own entry here.
SECTIONS: dict[str, tuple[str, SectionReader]] = {
    "etcd": ("etcd", _read_etcd),
    "agent": ("agent", _read_agent),
    "controller": ("controller", read_controller),
}


def load_config(path: str | Path) -> Config:
    """Read and check a configuration file; ConfigError names every problem."""
    filename = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{filename}: cannot read configuration: {e.strerror or e}") from e
    return parse_config(text, filename)


def parse_config(text: str, filename: str = "<config>") -> Config:
    r = Reader(filename)
    root = compose(text, r)
    values: dict[str, Any] = {}
    if root is not None and not (isinstance(root, yaml.ScalarNode) and root.value == ""):
        values = _read_fields(r, root, "", SECTIONS)
    if r.problems:
        problems = sorted(r.problems, key=lambda p: (p.line, p.column))
        raise ConfigError("\n".join(str(p) for p in problems))
    known = {f.name for f in fields(Config)}
    return Config(path=filename, **{k: v for k, v in values.items() if k in known})
