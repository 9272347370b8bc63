"""Scenario folders: `tests/scenarios/NAME/` holds

    README         one line: what the scenario shows (and the known bug its log records)
    cluster.yaml   seed, duration, controllers, hosts, VMs (and optional bounds)
    policy.yaml    the drctl policy the controllers run
    timeline.yaml  faults and operator commands: [{at: 20s, do: host-kill, host: h1, for: 30s}, ...]
    expected.log   the decision log the run must produce (every audit event, in order, with
                   simulated time), violations of the invariants included

Bad input is reported as one line naming the file and field (ConfigError).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from drctl.model.errors import ConfigError
from drctl.policy import compile_policy
from drctl.policy.units import parse_duration
from drctl.sim.run import ACTIONS, Action, HostSpec, Result, Simulation, Spec, VmSpec

FILES = ("README", "cluster.yaml", "policy.yaml", "timeline.yaml", "expected.log")
HOST_ACTIONS = {"host-kill", "host-return", "host-freeze", "host-thaw", "libvirtd-hang", "libvirtd-cont",
                "libvirtd-kill", "libvirtd-restart", "agent-kill", "agent-start", "partition", "heal-partition",
                "degrade", "recover-hardware", "fence-mode", "fence-ok", "drain", "undrain"}


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None


def _seconds(path: Path, field: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_duration(str(value))
    except ValueError as e:
        raise ConfigError(f"{path}: {field}: {e}") from None


def load(folder: Path | str, seed: int | None = None) -> Spec:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a scenario folder (expected {', '.join(FILES)})")
    cpath, ppath, tpath = folder / "cluster.yaml", folder / "policy.yaml", folder / "timeline.yaml"
    c = _load_yaml(cpath)
    if not isinstance(c, dict):
        raise ConfigError(f"{cpath}: expected a mapping with hosts and vms")
    hosts = []
    for i, h in enumerate(c.get("hosts") or ()):
        h = {"name": h} if isinstance(h, str) else h
        if not isinstance(h, dict) or "name" not in h:
            raise ConfigError(f"{cpath}: hosts[{i}]: expected a name or {{name: ..., memory_mib: ...}}")
        hosts.append(HostSpec(str(h["name"]), int(h.get("memory_mib", 16384)), int(h.get("cpus", 8)),
                              tuple(h.get("features") or ())))
    if not hosts:
        raise ConfigError(f"{cpath}: hosts: at least one host is needed")
    names = {h.name for h in hosts}
    vms = []
    for i, v in enumerate(c.get("vms") or ()):
        if not isinstance(v, dict) or "name" not in v or "host" not in v:
            raise ConfigError(f"{cpath}: vms[{i}]: expected {{name: ..., host: ...}}")
        if v["host"] not in names:
            raise ConfigError(f"{cpath}: vms[{i}].host: unknown host {v['host']!r}")
        vms.append(VmSpec(str(v["name"]), str(v["host"]), int(v.get("memory_mib", 1024)),
                          tuple(v.get("requires") or ()), float(v.get("dirty", 0.0))))
    try:
        policy = compile_policy(ppath.read_text(), str(ppath))
    except OSError as e:
        raise ConfigError(f"{ppath}: cannot read: {e.strerror or e}") from None
    timeline = []
    t = _load_yaml(tpath) if tpath.exists() else []
    for i, a in enumerate(t or ()):
        if not isinstance(a, dict) or "at" not in a or "do" not in a:
            raise ConfigError(f"{tpath}: [{i}]: expected {{at: 20s, do: ACTION, ...}} (at: seconds from the start, "
                              f"or from the event named by `after`)")
        if a["do"] not in ACTIONS:
            raise ConfigError(f"{tpath}: [{i}].do: unknown action {a['do']!r} (one of: {', '.join(ACTIONS)})")
        args = {k: v for k, v in a.items() if k not in ("at", "do", "for", "after")}
        if a["do"] in HOST_ACTIONS and args.get("host") not in names:
            raise ConfigError(f"{tpath}: [{i}].host: unknown host {args.get('host')!r}")
        after = a.get("after", "")
        if after and (not isinstance(after, str) or any("=" not in p for p in after.split()[1:])):
            raise ConfigError(f"{tpath}: [{i}].after: expected 'EVENT key=value ...', got {after!r}")
        timeline.append(Action(_seconds(tpath, f"[{i}].at", a["at"]), str(a["do"]), args,
                               _seconds(tpath, f"[{i}].for", a["for"]) if "for" in a else None, after or ""))
    opt = c.get
    return Spec(
        hosts=tuple(hosts), vms=tuple(vms), policy=policy, timeline=tuple(timeline),
        controllers=tuple(opt("controllers") or ("c1", "c2")),
        duration_s=_seconds(cpath, "duration", opt("duration", "180s")),
        settle_s=_seconds(cpath, "settle", opt("settle", "90s")),
        recovery_bound_s=_seconds(cpath, "recovery_bound", opt("recovery_bound", "180s")),
        witnesses=int(opt("witnesses", 2)), seed=int(seed if seed is not None else opt("seed", 1)),
        restart_after_s=(None if opt("restart_crashed", "5s") in (None, False, "never")
                         else _seconds(cpath, "restart_crashed", opt("restart_crashed", "5s"))),
        bandwidth_mibs=float(opt("bandwidth_mibs", 1024.0)),
    )


def run(folder: Path | str) -> Result:
    return Simulation(load(folder)).run()


def render(result: Result) -> str:
    return "\n".join(result.log) + "\n"


def write(folder: Path, spec_yaml: dict[str, Any], policy_text: str, timeline: list[dict[str, Any]],
          readme: str, log: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README").write_text(readme.rstrip() + "\n")
    (folder / "cluster.yaml").write_text(yaml.safe_dump(spec_yaml, sort_keys=False, default_flow_style=None))
    (folder / "policy.yaml").write_text(policy_text)
    (folder / "timeline.yaml").write_text(yaml.safe_dump(timeline, sort_keys=False, default_flow_style=True,
                                                         width=200) if timeline else "[]\n")
    (folder / "expected.log").write_text(log)


def timeline_yaml(actions: tuple[Action, ...]) -> list[dict[str, Any]]:
    out = []
    for a in actions:
        d: dict[str, Any] = {"at": f"{a.at:g}s", "do": a.do, **a.args}
        if a.for_s is not None:
            d["for"] = f"{a.for_s:g}s"
        if a.after:
            d["after"] = a.after
        out.append(d)
    return out


def cluster_yaml(spec: Spec) -> dict[str, Any]:
    return {
        "seed": spec.seed, "duration": f"{spec.duration_s:g}s", "settle": f"{spec.settle_s:g}s",
        "recovery_bound": f"{spec.recovery_bound_s:g}s", "controllers": list(spec.controllers),
        "witnesses": spec.witnesses,
        "hosts": [{"name": h.name, "memory_mib": h.memory_mib, **({"features": list(h.features)} if h.features else {})}
                  for h in spec.hosts],
        "vms": [{"name": v.name, "host": v.host, "memory_mib": v.memory_mib,
                 **({"requires": list(v.requires)} if v.requires else {}), **({"dirty": v.dirty} if v.dirty else {})}
                for v in spec.vms],
    }
