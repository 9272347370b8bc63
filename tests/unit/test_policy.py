"""Behaviour of compiled policies: what the controller asks them, and `drctl policy check`."""
from __future__ import annotations

import calendar
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drctl.cli.main import cli
from drctl.model.cluster import VM, Host, HostState, Snapshot
from drctl.policy import (
    Action,
    EvidenceKind,
    PolicyError,
    compile_policy,
    default_policy,
    load_policies,
    load_policy,
)
from drctl.policy.units import parse_duration, parse_percent, parse_rate_mibs, parse_size_mib, parse_window

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"


def utc(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, 0)))


MONDAY_0200 = utc(2024, 1, 1, 2)  # 2024-01-01 was a Monday
MONDAY_1200 = utc(2024, 1, 1, 12)


def host(name: str = "hv1", **kw) -> Host:
    return Host(name=name, memory_mib=65536, cpus=16, **kw)


def vm(name: str, **kw) -> VM:
    return VM(name=name, host=kw.pop("host", "hv1"), memory_mib=kw.pop("memory_mib", 1024), **kw)


# ---------------------------------------------------------------- examples


def test_every_example_policy_loads() -> None:
    policies = load_policies(POLICIES)
    names = {p.name for p in policies}
    assert {"maintenance", "proactive-evacuation", "disaster-recovery", "nightly-rebalance"} <= names
    for p in policies:
        assert p.version == 1 and p.actions and not p.dropped, p.name


def test_proactive_evacuation_rules() -> None:
    p = load_policy(POLICIES / "proactive-evacuation.yaml")
    hv = host()
    assert p.rule_for(hv, HostState.DEGRADED, held_s=10, now=0) is None  # not held long enough
    rule = p.rule_for(hv, HostState.DEGRADED, held_s=30, now=0)
    assert rule is not None and rule.name == "evacuate-degraded"
    assert rule.action_for(vm("web-1")).action is Action.LIVE_MIGRATE
    assert rule.action_for(vm("pin", tags=frozenset({"pinned"}))).action is Action.LEAVE_ALONE
    assert rule.action_for(vm("loc", tags=frozenset({"local-disk"}))).action is Action.LIVE_MIGRATE_WITH_STORAGE
    failing = p.rule_for(hv, HostState.FAILING, held_s=10, now=0)
    assert failing.name == "evacuate-failing" and failing.fallback is Action.RESTART
    # degraded spares are not evacuated: the rule's host selector excludes them
    assert p.rule_for(host(labels={"role": "spare"}), HostState.DEGRADED, 60, 0) is None
    assert p.rule_for(hv, HostState.HEALTHY, held_s=1e6, now=0) is None
    assert p.anti_affinity_group(vm("db-3")) == "db-replicas"
    assert p.anti_affinity_group(vm("db-3", anti_affinity_group="own")) == "own"  # inventory wins
    assert p.blast_radius.exceeded(hosts_acted=2, vms_acted=1, vms_total=100)
    assert p.blast_radius.exceeded(hosts_acted=1, vms_acted=30, vms_total=100)
    assert not p.blast_radius.exceeded(hosts_acted=1, vms_acted=25, vms_total=100)


def test_disaster_recovery_needs_fencing() -> None:
    p = load_policy(POLICIES / "disaster-recovery.yaml")
    rule = p.rule_for(host(), HostState.DEAD, held_s=5, now=0)
    assert rule.action is Action.RESTART and rule.action.intent_kind.value == "restart"
    assert p.evidence.required == frozenset(EvidenceKind) and p.evidence.fence_agent == "ipmi"
    assert p.evidence.witness_quorum is None  # majority
    assert rule.action_for(vm("tmp", tags=frozenset({"ephemeral"}))).action.intent_kind is None


def test_maintenance_rule_fires_on_drain_request_only() -> None:
    p = load_policy(POLICIES / "maintenance.yaml")
    compute = {"role": "compute"}
    assert p.rule_for(host(labels=compute, maintenance=True), HostState.HEALTHY, 0, 0).name == "drain"
    assert p.rule_for(host(labels=compute), HostState.HEALTHY, 0, 0) is None
    assert p.limits.bandwidth_mibs == 128 and p.limits.max_per_source == 2


def test_rebalance_only_inside_its_windows() -> None:
    p = load_policy(POLICIES / "nightly-rebalance.yaml")
    assert p.rebalance_rule(spread_pct=25, now=MONDAY_0200).name == "rebalance"
    assert p.rebalance_rule(spread_pct=25, now=MONDAY_1200) is None
    assert p.rebalance_rule(spread_pct=15, now=MONDAY_0200) is None
    assert p.rebalance.target_spread_pct == 10 and p.rebalance.max_moves == 8
    assert [w.text for w in p.rebalance.windows] == ["Mon-Fri 01:00-05:00", "Sat,Sun 00:00-06:00"]


def test_default_policy() -> None:
    p = default_policy()
    assert p.rule_for(host(), HostState.DEAD, 0, 0).action is Action.RESTART
    assert p.rule_for(host(), HostState.FAILING, 30, 0).action is Action.LIVE_MIGRATE
    assert p.rule_for(host(maintenance=True), HostState.HEALTHY, 0, 0).name == "drain"
    assert not p.dry_run and default_policy() is p


# ---------------------------------------------------------------- rule helpers


def test_order_vms() -> None:
    p = compile_policy(
        "version: 1\nname: o\nrules:\n"
        "  - {name: a, when: {state: dead}, action: restart, order: [priority, size-desc]}\n", "o.yaml")
    vms = [vm("small", memory_mib=512), vm("big", memory_mib=8192), vm("vip", priority=10), vm("b2", memory_mib=8192)]
    assert [v.name for v in p.actions[0].order_vms(vms)] == ["vip", "b2", "big", "small"]


def test_vms_outside_the_rule_are_left_alone() -> None:
    p = compile_policy(
        "version: 1\nname: o\nrules:\n"
        "  - {name: a, when: {state: dead}, vms: {tags: [prod], min_priority: 5}, action: restart}\n", "o.yaml")
    rule = p.actions[0]
    assert rule.action_for(vm("x", tags=frozenset({"prod"}), priority=5)).action is Action.RESTART
    assert rule.action_for(vm("x", tags=frozenset({"prod"}))).action is Action.LEAVE_ALONE


def test_apply_groups_fills_the_snapshot() -> None:
    p = load_policy(POLICIES / "proactive-evacuation.yaml")
    snap = Snapshot(hosts={"hv1": host()}, vms={"db-1": vm("db-1"), "web": vm("web", tags=frozenset({"web"}))})
    out = p.apply_groups(snap)
    assert out.vms["db-1"].anti_affinity_group == "db-replicas"
    assert out.vms["web"].anti_affinity_group == "web-frontends"
    assert snap.vms["db-1"].anti_affinity_group == ""  # the input is untouched


def test_must_not_compiles_to_an_exclusion() -> None:
    p = compile_policy(
        "version: 1\nname: o\nrules: [{name: a, when: {state: dead}, action: restart}]\n"
        "placement:\n  host_affinity:\n"
        "    - {vms: {tags: [db]}, hosts: {names: ['old-*']}, rule: must-not}\n", "o.yaml")
    (aff,) = p.rules.host_affinity
    assert aff.required and not aff.hosts.matches(host("old-1")) and aff.hosts.matches(host("new-1"))


def test_dry_run_flag() -> None:
    text = "version: 1\nname: o\ndry_run: true\nrules: [{name: a, when: {state: dead}, action: restart}]\n"
    assert compile_policy(text, "o.yaml").dry_run


# ---------------------------------------------------------------- units


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), ("1.5m", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30", "5 minutes", "-1s", "", "1e9s", "9999d"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_sizes_rates_percents() -> None:
    assert parse_size_mib("2GiB") == 2048 and parse_size_mib("512MiB") == 512
    assert parse_rate_mibs("32MiB/s") == 32 and parse_percent("20%") == 20
    for parse, bad in ((parse_size_mib, "2GB"), (parse_rate_mibs, "32MiB"), (parse_percent, "120%")):
        with pytest.raises(ValueError):
            parse(bad)


def test_windows_cross_midnight_and_week_end() -> None:
    w = parse_window("Fri 22:00-02:00")
    assert w.contains(utc(2024, 1, 5, 23)) and w.contains(utc(2024, 1, 6, 1))  # Fri late, Sat early
    assert not w.contains(utc(2024, 1, 5, 1)) and not w.contains(utc(2024, 1, 6, 23))
    weekend = parse_window("Sat-Mon 00:00-24:00")
    assert weekend.contains(utc(2024, 1, 1, 12)) and not weekend.contains(utc(2024, 1, 2, 12))
    assert parse_window("01:00-05:00").days == frozenset(range(7))


# ---------------------------------------------------------------- loading and the CLI


def test_load_policies_reports_every_file_and_duplicate_names(tmp_path: Path) -> None:
    good = "version: 1\nname: same\nrules: [{name: a, when: {state: dead}, action: restart}]\n"
    (tmp_path / "a.yaml").write_text(good)
    (tmp_path / "b.yaml").write_text(good)
    (tmp_path / "c.yaml").write_text("version: 1\nname: c\nrules: [{name: a, when: {state: dead}, action: restrat}]\n")
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    text = str(info.value)
    assert "b.yaml:1:1: name: 'same' is also the name of" in text
    assert "c.yaml:3:" in text and "did you mean 'restart'?" in text


def test_policy_error_is_a_config_error() -> None:
    from drctl.model.errors import ConfigError

    with pytest.raises(ConfigError):
        load_policy(POLICIES / "does-not-exist.yaml")


def test_check_prints_compiled_policies() -> None:
    result = CliRunner().invoke(cli, ["policy", "check", str(POLICIES)])
    assert result.exit_code == 0, result.output
    assert "policy maintenance (version 1)" in result.output and "dropped: none" in result.output


def test_check_json() -> None:
    result = CliRunner().invoke(cli, ["policy", "check", "--json", str(POLICIES / "maintenance.yaml")])
    assert result.exit_code == 0
    (doc,) = json.loads(result.output)
    assert doc["name"] == "maintenance" and doc["rules"][0]["action"] == "live-migrate"


def test_check_errors_exit_2_one_line_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nrules:\n  - name: a\n    when: {state: dead}\n    acton: restart\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        f"drctl: error: {bad}:4:5: rules[0]: missing required key 'action'",
        f"drctl: error: {bad}:6:5: rules[0].acton: unknown key (did you mean 'action'?)",
    ]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- issue 12, case 2: fencing by default


def test_default_evidence_requires_a_fence() -> None:
    """A policy that says nothing about evidence, and the built-in policy, fence before restarting."""
    bare = compile_policy("version: 1\nname: bare\nrules:\n  - name: r\n    when: {state: dead}\n    action: restart\n",
                          "bare.yaml")
    assert EvidenceKind.FENCE in bare.evidence.required and not bare.evidence.fence_waived
    assert EvidenceKind.FENCE in default_policy().evidence.required


def test_dropping_the_fence_must_be_said_explicitly() -> None:
    text = ("version: 1\nname: nofence\nrules:\n  - name: r\n    when: {state: dead}\n    action: restart\n"
            "evidence:\n  require: [lease-expired, witnesses]\n")
    with pytest.raises(PolicyError) as e:
        compile_policy(text, "nofence.yaml")
    assert "fence: waived" in str(e.value)
    waived = compile_policy(text + "  fence: waived\n", "nofence.yaml")
    assert EvidenceKind.FENCE not in waived.evidence.required and waived.evidence.fence_waived
    with pytest.raises(PolicyError):  # both at once is a contradiction
        compile_policy(text.replace("witnesses]", "witnesses, fence]") + "  fence_agent: x\n  fence: waived\n", "x.yaml")


def test_check_warns_when_a_policy_waives_fencing(tmp_path: Path) -> None:
    p = tmp_path / "nofence.yaml"
    p.write_text("version: 1\nname: nofence\nrules:\n  - name: r\n    when: {state: dead}\n    action: restart\n"
                 "evidence:\n  require: [lease-expired, witnesses]\n  fence: waived\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(p)])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "waives fencing" in result.output
    quiet = CliRunner().invoke(cli, ["policy", "check", str(POLICIES / "disaster-recovery.yaml")])
    assert "waives fencing" not in quiet.output
