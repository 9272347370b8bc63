"""The `controller:` section of drctl's configuration file.

    controller:
      name: ctl-a                  # default: this machine's hostname
      policy: /etc/drctl/policies/disaster-recovery.yaml   # one policy file (default: built-in)
      lease_ttl: 2s                # election lease; failover takes about this long
      tick_interval: 500ms         # periodic resync; changes in etcd wake the loop at once
      stale_after: 10s             # freeze when the view is older than this
      reopen_after: 60s            # a host's next incident waits this long after its last
      witness_quorum: 2            # default: the policy's, else a majority of the other hosts
      audit_file: /var/log/drctl/controller.jsonl
      runner:                      # the migration runner in this process
        enabled: true
        lease_ttl: 5s              # claims on intents; a dead runner's claims lapse after it
      guest_health: domain         # domain (running = healthy) | lab (console ticks; lab only)
      lab_dir: /var/lib/drctl-lab  # with guest_health: lab
      fence_agents:
        ipmi:                      # fence-agents convention: options on stdin
          type: command
          command: [fence_ipmilan]
          timeout: 30s
          options: {username: admin, password_script: /etc/drctl/ipmi-pass, lanplus: "1"}
          hosts: {hv1: {ip: 10.0.0.11}, hv2: {ip: 10.0.0.12}}
        lab:                       # the lab's power switch: kills libvirtd and QEMU
          type: lab
          lab_dir: /var/lib/drctl-lab
"""
from __future__ import annotations

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
    lab_dir: str = ""

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "command": list(self.command), "options": dict(self.options),
                "hosts": {h: dict(o) for h, o in self.hosts.items()}, "timeout_s": self.timeout_s,
                "lab_dir": self.lab_dir}


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
    guest_health: str = "domain"
    lab_dir: str = ""
    fence_agents: Mapping[str, FenceAgentConfig] = field(default_factory=dict)


def _fence_agent(r: Reader, node: yaml.Node, path: str) -> FenceAgentConfig:
    got = r.mapping(node, path, ("type", "command", "options", "hosts", "timeout", "lab_dir"))
    if "type" not in got:
        raise r.fail(node, f"{path}.type", "missing (command or lab)")
    kind = r.choice(got["type"], f"{path}.type", ("command", "lab"))
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
    if "lab_dir" in got:
        out["lab_dir"] = r.string(got["lab_dir"], f"{path}.lab_dir")
    return FenceAgentConfig(**out)


def read_controller(r: Reader, node: yaml.Node, path: str) -> ControllerConfig:
    fields = ("name", "policy", "lease_ttl", "tick_interval", "stale_after", "reopen_after", "witness_quorum",
              "audit_file", "runner", "guest_health", "lab_dir", "fence_agents")
    got = r.mapping(node, path, fields)
    out: dict[str, Any] = {}
    p = lambda k: f"{path}.{k}"
    if "name" in got:
        out["name"] = r.word(got["name"], p("name"))
    for key in ("policy", "audit_file", "lab_dir"):
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
        out["guest_health"] = r.choice(got["guest_health"], p("guest_health"), ("domain", "lab"))
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
    if out.get("guest_health") == "lab" and not out.get("lab_dir"):
        raise r.fail(node, p("lab_dir"), "required with guest_health: lab")
    return ControllerConfig(**out)
