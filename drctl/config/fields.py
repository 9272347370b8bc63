"""Field readers shared by the sections of drctl's configuration file (agent, controller)."""
from __future__ import annotations

import yaml

from drctl.policy.reader import Reader
from drctl.policy.units import parse_duration


def duration(r: Reader, node: yaml.Node, path: str) -> float:
    """A positive duration in seconds ("500ms", "2s", "5m")."""
    seconds = r.parsed(node, path, parse_duration)
    if seconds <= 0:
        raise r.fail(node, path, "must be more than 0s")
    return seconds


def lease_ttl(r: Reader, node: yaml.Node, path: str) -> int:
    """An etcd lease TTL: whole seconds, at least etcd's minimum of 2 s."""
    seconds = r.parsed(node, path, parse_duration)
    if seconds < 2 or seconds != int(seconds):
        raise r.fail(node, path, f"must be whole seconds, at least 2s (etcd's minimum), got {seconds:g}s")
    return int(seconds)


def str_map(r: Reader, node: yaml.Node, path: str) -> dict[str, str]:
    """A mapping of free-form keys to strings (labels, fence-agent options)."""
    got = r.mapping(node, path, [k.value for k, _ in node.value] if isinstance(node, yaml.MappingNode) else ())
    return {k: r.string(v, f"{path}.{k}") for k, v in got.items()}
