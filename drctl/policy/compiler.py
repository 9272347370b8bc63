"""Compile a policy file into a Policy: the one place policies are parsed and validated."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from drctl.policy.conflicts import resolve_groups, resolve_host_rules, resolve_shadowed
from drctl.policy.reader import Invalid, PolicyError, Problem, Reader, compose, join
from drctl.policy.rules import read_name, read_rules
from drctl.policy.sections import read_evidence, read_limits, read_placement, read_rebalance
from drctl.policy.types import Policy, Rebalance, Rule, TriggerKind

SUPPORTED_VERSIONS = (1,)
TOP_KEYS = ("version", "name", "description", "dry_run", "rules", "placement", "limits",
            "evidence", "rebalance")


def compile_policy(text: str, filename: str) -> Policy:
    """Validate and compile one policy. Raises PolicyError (a ConfigError) listing every problem."""
    r = Reader(filename)
    root = compose(text, r)
    policy = None
    if root is None and not r.problems:
        r.report(None, "", "the file is empty")
    elif root is not None:
        policy = r.attempt(lambda: _policy(r, root), None)
    if r.problems or policy is None:
        raise PolicyError(r.problems or [Problem(filename, 1, 1, "", "invalid policy")])
    return policy


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise PolicyError([Problem(str(path), 1, 1, "", f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError as e:
        raise PolicyError([Problem(str(path), 1, 1, "", f"not UTF-8 text (byte {e.start})")]) from None
    return compile_policy(text, str(path))


def load_policies(directory: str | Path) -> list[Policy]:
    """Every *.yaml policy in `directory`, sorted by file name; all problems in one error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([Problem(str(directory), 1, 1, "", "not a directory")])
    policies: list[Policy] = []
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            policies.append(load_policy(path))
        except PolicyError as e:
            problems.extend(e.problems)
    problems.extend(_duplicate_names(policies))
    if problems:
        raise PolicyError(problems)
    return policies


def _duplicate_names(policies: list[Policy]) -> list[Problem]:
    first: dict[str, str] = {}
    out = []
    for p in policies:
        if p.name in first:
            out.append(Problem(p.source, 1, 1, "name", f"{p.name!r} is also the name of {first[p.name]}"))
        first.setdefault(p.name, p.source)
    return out


# ---------------------------------------------------------------- the document


def _policy(r: Reader, root: yaml.Node) -> Policy:
    f = r.mapping(root, "", TOP_KEYS)
    for key in ("version", "name", "rules"):
        if key not in f:
            r.report(root, "", f"missing required key {key!r}")
    version = _version(r, f["version"]) if "version" in f else None
    name = r.attempt(lambda: read_name(r, f["name"], "name"), None) if "name" in f else None
    description = r.attempt(lambda: r.string(f["description"], "description"), "") if "description" in f else ""
    dry_run = r.attempt(lambda: r.boolean(f["dry_run"], "dry_run"), False) if "dry_run" in f else False
    rules = r.attempt(lambda: read_rules(r, f["rules"], "rules"), []) if "rules" in f else []
    placement = r.attempt(lambda: read_placement(r, f.get("placement"), "placement"), None)
    limits = r.attempt(lambda: read_limits(r, f.get("limits"), "limits"), None)
    evidence = r.attempt(lambda: read_evidence(r, f.get("evidence"), "evidence"), None)
    rebalance = r.attempt(lambda: read_rebalance(r, f.get("rebalance"), "rebalance"), None)
    if (r.problems or version is None or name is None or placement is None or limits is None
            or evidence is None or rebalance is None):
        raise Invalid()

    actions, drops = resolve_shadowed(rules)
    affinity, group_drops = resolve_groups(placement.affinity, placement.anti_affinity)
    host_affinity, host_drops = resolve_host_rules(placement.host_rules)
    limits_, escalation, blast = limits
    return Policy(
        name=name, version=version, source=r.filename, description=description.strip(),
        rules=replace(placement.rules, host_affinity=host_affinity),
        limits=limits_, actions=actions,
        affinity_groups=affinity, anti_affinity_groups=tuple(g for g, _, _ in placement.anti_affinity),
        escalation=escalation, blast_radius=blast, evidence=evidence,
        rebalance=_rebalance(r, rebalance, actions),
        dry_run=dry_run, dropped=tuple(drops + group_drops + host_drops),
    )


def _version(r: Reader, node: yaml.Node) -> int | None:
    version = r.attempt(lambda: r.integer(node, "version", minimum=0), None)
    if version is not None and version not in SUPPORTED_VERSIONS:
        r.report(node, "version", f"unsupported version {version} (this drctl reads version "
                                  f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        return None
    return version


def _rebalance(r: Reader, read: tuple[Rebalance, yaml.Node | None], actions: tuple[Rule, ...]) -> Rebalance:
    """Windows come from the imbalance rule; the target must sit below its threshold."""
    rebalance, target_node = read
    trigger = next((a.trigger for a in actions if a.trigger.kind is TriggerKind.IMBALANCE), None)
    if trigger is None:
        return rebalance
    if rebalance.target_spread_pct >= trigger.threshold_pct:
        r.report(target_node, join("rebalance", "target_spread"),
                 f"target {rebalance.target_spread_pct:g}% must be below the imbalance trigger "
                 f"({trigger.threshold_pct:g}%), or a rebalance never settles")
        raise Invalid()
    return replace(rebalance, windows=trigger.windows)
