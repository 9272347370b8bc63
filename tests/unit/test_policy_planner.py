"""The planner consumes the compiled policy: changing the policy changes the plan.

Small hand-built snapshots; one policy text with a knob turned per test.
"""
from __future__ import annotations


from drctl.planning import planner
from drctl.model.cluster import VM, Host, Snapshot
from drctl.policy import Policy, compile_policy

BASE = """\
version: 1
name: t
rules:
  - name: drain
    when: {maintenance: requested}
    action: live-migrate
"""


def policy(extra: str = "") -> Policy:
    return compile_policy(BASE + extra, "t.yaml")


def host(name: str, **kw) -> Host:
    return Host(name=name, memory_mib=16384, cpus=16, incoming_limit=8, **kw)


def cluster(vms: list[VM], *extra_hosts: Host) -> Snapshot:
    hosts = [host("hv1", maintenance=True), host("hv2"), host("hv3"), *extra_hosts]
    return Snapshot(hosts={h.name: h for h in hosts}, vms={v.name: v for v in vms})


def plan(p: Policy, snap: Snapshot):
    # the controller's path: groups from the policy applied to the snapshot, then plan
    return planner.plan_evacuation(p.apply_groups(snap), ["hv1"], p.rules, p.limits)


def destinations(result) -> dict[str, str]:
    return {m.vm: m.dst for m in result.moves}


def test_anti_affinity_group_spreads_replicas() -> None:
    # db-2 already runs on hv2; with anti-affinity db-1 must not join it there
    vms = [VM("db-1", "hv1", 1024), VM("db-2", "hv2", 1024), VM("filler", "hv3", 4096)]
    snap = cluster(vms)
    without = destinations(plan(policy(), snap))
    with_group = destinations(plan(policy(
        "placement:\n  groups:\n    anti_affinity:\n      - {name: db, vms: {names: ['db-*']}}\n"), snap))
    assert without["db-1"] == "hv2"  # the emptier host, when nothing says otherwise
    assert with_group["db-1"] == "hv3"


def test_spare_hosts_avoided_or_preferred() -> None:
    vms = [VM("a", "hv1", 1024), VM("b", "hv1", 1024)]
    snap = cluster(vms, host("spare1", labels={"role": "spare"}))
    spares = "placement:\n  spare_hosts: {hosts: {labels: {role: spare}}, mode: %s}\n"
    avoid = set(destinations(plan(policy(spares % "avoid"), snap)).values())
    prefer = set(destinations(plan(policy(spares % "prefer"), snap)).values())
    only = set(destinations(plan(policy(spares % "only"), snap)).values())
    assert "spare1" not in avoid
    assert prefer == only == {"spare1"}


def test_must_not_host_rule_keeps_vms_off_hosts() -> None:
    vms = [VM("db-1", "hv1", 1024)]
    snap = cluster(vms)
    free = destinations(plan(policy(), snap))["db-1"]
    banned = policy("placement:\n  host_affinity:\n"
                    f"    - {{vms: {{names: ['db-*']}}, hosts: {{names: [{free}]}}, rule: must-not}}\n")
    assert destinations(plan(banned, snap))["db-1"] not in (free, "hv1")


def test_concurrency_limit_turns_into_waves() -> None:
    vms = [VM(f"vm{i}", "hv1", 512) for i in range(4)]
    snap = cluster(vms)
    wide = plan(policy("limits:\n  concurrency: {cluster: 4, per_source: 4, per_destination: 4}\n"), snap)
    narrow = plan(policy("limits:\n  concurrency: {cluster: 1, per_source: 1, per_destination: 1}\n"), snap)
    assert wide.waves == 1 and {m.wave for m in wide.moves} == {1}
    assert narrow.waves == 4 and sorted(m.wave for m in narrow.moves) == [1, 2, 3, 4]


def test_memory_headroom_decides_what_fits() -> None:
    vms = [VM("big", "hv1", 12288)]
    snap = cluster(vms)
    assert plan(policy("placement:\n  memory_headroom: 10%\n"), snap).moves
    tight = plan(policy("placement:\n  memory_headroom: 40%\n"), snap)
    assert not tight.moves and [u.vm for u in tight.unplaced] == ["big"]
