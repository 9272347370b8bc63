"""The `controller:` section of drctl's configuration file.

    controller:
      name: ctl-a                  # default: this machine's hostname
      policy: /etc/drctl/policies/disaster-recovery.yaml   # one policy file (default: built-in)
      lease_ttl: 2s                # election lease; failover takes about this long
      tick_interval: 500ms         # periodic resync; changes in etcd wake the loop at once
      stale_after: 10s             # freeze when the view is older than this
      reopen_after: 60s            # a host's next incident waits this long after its last
      witness_quorum: 2            # default: the policy's, else a majority of the host's witnesses
      audit_file: /var/log/drctl/controller.jsonl
      runner:                      # the migration runner in this process
        enabled: true
        lease_ttl: 5s              # claims on intents; a dead runner's claims lapse after it
      guest_health: domain         # domain (running = healthy), or a plugin:
      #   guest_health: {plugin: "my.module:factory", options: {url: ...}}
      # factory(**options) returns a GuestHealth (drctl/runner/verification.py)
      fence_agents:
        ipmi:                      # fence-agents convention: options on stdin
          type: command
          command: [fence_ipmilan]
          timeout: 30s
          options: {username: admin, password_script: /etc/drctl/ipmi-pass, lanplus: "1"}
          hosts: {hv1: {ip: 10.0.0.11}, hv2: {ip: 10.0.0.12}}
"""
from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from drctl.config.fields import duration, lease_ttl, str_map
from drctl.policy.reader import Reader


@dataclass(frozen=True)
class FenceAgentConfig:
    type: str
    command: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    hosts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    timeout_s: float = 30.0

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "command": list(self.command), "options": dict(self.options),
                "hosts": {h: dict(o) for h, o in self.hosts.items()}, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class PluginSpec:
    """Code named by the configuration, not imported by drctl: `module.path:factory`,
    called as factory(**options) when the controller starts (drctl/control/plugins.py)."""

    target: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ControllerConfig:
    name: str = field(default_factory=socket.gethostname)
    policy: str = ""  # "" = the built-in default policy
    lease_ttl_s: int = 2
    tick_interval_s: float = 0.5
    stale_after_s: float = 10.0
    reopen_after_s: float = 60.0
    witness_quorum: int | None = None
    audit_file: str = ""
    runner_enabled: bool = True
    runner_lease_ttl_s: int = 5
    guest_health: PluginSpec | None = None  # None = domain: running is healthy
    fence_agents: Mapping[str, FenceAgentConfig] = field(default_factory=dict)


def _fence_agent(r: Reader, node: yaml.Node, path: str) -> FenceAgentConfig:
    got = r.mapping(node, path, ("type", "command", "options", "hosts", "timeout", "lab_dir"))
    if "type" not in got:
        raise r.fail(node, f"{path}.type", "missing (command)")
    if isinstance(got["type"], yaml.ScalarNode) and got["type"].value == "lab":
        raise r.fail(got["type"], f"{path}.type", "`lab` was removed: the lab fences with a command agent in "
                     "the fence-agents convention (`drctl lab up --controllers N` writes it; docs/lab.md)")
    if "lab_dir" in got:
        raise r.fail(got["lab_dir"], f"{path}.lab_dir", "removed with `type: lab`: the lab's fence agent "
                     "takes it as options.lab_dir (docs/lab.md)")
    kind = r.choice(got["type"], f"{path}.type", ("command",))
    out: dict[str, Any] = {"type": kind}
    if "command" in got:
        out["command"] = tuple(r.each(got["command"], f"{path}.command", r.word, scalar_ok=True))
    elif kind == "command":
        raise r.fail(node, f"{path}.command", "missing: the fence agent to run, e.g. [fence_ipmilan]")
    if "options" in got:
        out["options"] = str_map(r, got["options"], f"{path}.options")
    if "hosts" in got:
        hn = got["hosts"]
        names = [k.value for k, _ in hn.value] if isinstance(hn, yaml.MappingNode) else ()
        out["hosts"] = {h: str_map(r, v, f"{path}.hosts.{h}") for h, v in r.mapping(hn, f"{path}.hosts", names).items()}
    if "timeout" in got:
        out["timeout_s"] = duration(r, got["timeout"], f"{path}.timeout")
    return FenceAgentConfig(**out)


_PLUGIN_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _guest_health(r: Reader, node: yaml.Node, path: str) -> PluginSpec | None:
    if isinstance(node, yaml.ScalarNode):
        if node.value == "lab":
            raise r.fail(node, path, "`lab` was removed: the lab names its plugin, {plugin: "
                         "drctl.lab.console_health:console_ticks, options: {lab_dir: DIR}} (docs/lab.md)")
        if node.value != "domain":
            raise r.fail(node, path, f"unknown value {node.value!r} (domain, or {{plugin: module.path:factory, "
                         "options: {...}}})")
        return None
    got = r.mapping(node, path, ("plugin", "options"))
    if "plugin" not in got:
        raise r.fail(node, f"{path}.plugin", "missing: `module.path:factory`, called with the options")
    target = r.string(got["plugin"], f"{path}.plugin")
    if not _PLUGIN_TARGET.match(target):
        raise r.fail(got["plugin"], f"{path}.plugin", f"expected `module.path:factory`, got {target!r}")
    options = str_map(r, got["options"], f"{path}.options") if "options" in got else {}
    return PluginSpec(target, options)


def read_controller(r: Reader, node: yaml.Node, path: str) -> ControllerConfig:
    fields = ("name", "policy", "lease_ttl", "tick_interval", "stale_after", "reopen_after", "witness_quorum",
              "audit_file", "runner", "guest_health", "lab_dir", "fence_agents")
    got = r.mapping(node, path, fields)
    out: dict[str, Any] = {}
    p = lambda k: f"{path}.{k}"
    if "name" in got:
        out["name"] = r.word(got["name"], p("name"))
    if "lab_dir" in got:
        raise r.fail(got["lab_dir"], p("lab_dir"), "removed with `guest_health: lab`: the lab's guest-health "
                     "plugin takes it as guest_health.options.lab_dir (docs/lab.md)")
    for key in ("policy", "audit_file"):
        if key in got:
            out[key] = r.string(got[key], p(key))
    if "lease_ttl" in got:
        out["lease_ttl_s"] = lease_ttl(r, got["lease_ttl"], p("lease_ttl"))
    for key in ("tick_interval", "stale_after", "reopen_after"):
        if key in got:
            out[f"{key}_s"] = duration(r, got[key], p(key))
    if "witness_quorum" in got:
        out["witness_quorum"] = r.integer(got["witness_quorum"], p("witness_quorum"), minimum=1, maximum=64)
    if "guest_health" in got:
        out["guest_health"] = _guest_health(r, got["guest_health"], p("guest_health"))
    if "runner" in got:
        rn = r.mapping(got["runner"], p("runner"), ("enabled", "lease_ttl"))
        if "enabled" in rn:
            out["runner_enabled"] = r.boolean(rn["enabled"], p("runner.enabled"))
        if "lease_ttl" in rn:
            out["runner_lease_ttl_s"] = lease_ttl(r, rn["lease_ttl"], p("runner.lease_ttl"))
    if "fence_agents" in got:
        fa = got["fence_agents"]
        names = [k.value for k, _ in fa.value] if isinstance(fa, yaml.MappingNode) else ()
        out["fence_agents"] = {n: _fence_agent(r, v, p(f"fence_agents.{n}"))
                               for n, v in r.mapping(fa, p("fence_agents"), names).items()}
    return ControllerConfig(**out)
