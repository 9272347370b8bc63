"""Fence agents: proof that a dead host is really off before its VMs run elsewhere.

One interface, one production agent: `CommandFenceAgent` follows the fence-agents
conventions (`fence_ipmilan`, `fence_redfish`, ...): options as `name=value` lines on
stdin, `action=off|on|status`, exit code 0 = success; for `status`, 0 = on, 2 = off,
anything else = unknown. The lab fences its hosts through this same path, with its own
agent in that convention (`python -m drctl.lab.fence_agent`, see docs/lab.md).

A fence is confirmed only when `status` afterwards says off: an agent that exits 0 on
`off` but cannot show the host off has not proven anything.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Protocol

from drctl.model.errors import ConfigError


class PowerState(str, Enum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class FenceResult:
    host: str
    agent: str
    confirmed_off: bool
    detail: str


class FenceAgent(Protocol):
    name: str

    def off(self, host: str) -> FenceResult: ...

    def status(self, host: str) -> PowerState: ...


# ------------------------------------------------------------------ fence-agents commands


@dataclass(frozen=True)
class CommandFenceAgent:
    """Runs an external fence agent with options on stdin (fence-agents convention)."""

    name: str
    command: tuple[str, ...]  # e.g. ("fence_ipmilan",)
    options: Mapping[str, str] = field(default_factory=dict)  # shared by every host
    per_host: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # e.g. ip, plug
    timeout_s: float = 30.0

    def _run(self, host: str, action: str) -> subprocess.CompletedProcess[str]:
        opts = {**self.options, **self.per_host.get(host, {}), "action": action}
        stdin = "".join(f"{k}={v}\n" for k, v in opts.items())
        try:
            return subprocess.run(list(self.command), input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(self.command), 124, "", f"timed out after {self.timeout_s:g}s")
        except OSError as e:
            return subprocess.CompletedProcess(list(self.command), 127, "", str(e))

    def status(self, host: str) -> PowerState:
        r = self._run(host, "status")
        return {0: PowerState.ON, 2: PowerState.OFF}.get(r.returncode, PowerState.UNKNOWN)

    def off(self, host: str) -> FenceResult:
        r = self._run(host, "off")
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
            return FenceResult(host, self.name, False, f"{self.command[0]} off exited {r.returncode}: {why[0]}")
        state = self.status(host)
        return FenceResult(host, self.name, state is PowerState.OFF,
                           f"{self.command[0]} off ok; status says {state.value}")


def make_agent(name: str, spec: Mapping[str, object]) -> FenceAgent:
    """Build a fence agent from the controller configuration's `fence_agents.<name>`."""
    kind = spec.get("type")
    if kind == "command":
        cmd = spec.get("command")
        if not cmd:
            raise ConfigError(f"fence_agents.{name}.command: required for type command")
        return CommandFenceAgent(
            name=name,
            command=tuple(cmd) if isinstance(cmd, (list, tuple)) else (str(cmd),),
            options={str(k): str(v) for k, v in dict(spec.get("options") or {}).items()},  # type: ignore[call-overload]
            per_host={str(h): {str(k): str(v) for k, v in dict(o).items()}  # type: ignore[call-overload]
                      for h, o in dict(spec.get("hosts") or {}).items()},  # type: ignore[call-overload]
            timeout_s=float(spec.get("timeout_s", 30)),  # type: ignore[arg-type]
        )
    raise ConfigError(f"fence_agents.{name}.type: unknown value {kind!r} (expected 'command')")
