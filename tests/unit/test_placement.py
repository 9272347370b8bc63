"""Placement: each rule rejects with its own reason; scores spread load; the ledger reserves."""
from __future__ import annotations

from drctl.model.cluster import (
    VM,
    Disk,
    Host,
    HostAffinity,
    HostSelector,
    HostState,
    PlacementRules,
    Snapshot,
    SpareMode,
    StorageKind,
    VMSelector,
)
from drctl.planning.placement import Candidate, Ledger, choose, evaluate

RULES = PlacementRules()


def _snap(*hosts: Host, vms: tuple[VM, ...] = ()) -> Snapshot:
    src = Host("src", 65536, 32)
    return Snapshot({h.name: h for h in (src, *hosts)}, {v.name: v for v in vms})


def _reasons(vm: VM, snap: Snapshot, rules: PlacementRules = RULES, **kw) -> dict[str, tuple[str, ...]]:
    return {c.host: c.reasons for c in evaluate(vm, snap, rules, **kw)}


def test_every_host_but_its_own_is_judged() -> None:
    snap = _snap(Host("a", 8192, 4), Host("b", 8192, 4, maintenance=True))
    out = evaluate(VM("v", "src", 1024), snap, RULES)
    assert [c.host for c in out] == ["a", "b"]
    assert out[0] == Candidate("a", True, out[0].score, ())
    assert out[1] == Candidate("b", False, 0.0, ("maintenance",))


def test_memory_needs_headroom() -> None:
    snap = _snap(Host("a", 10000, 4, memory_used_mib=7000))  # 3000 free, 1000 headroom
    assert _reasons(VM("v", "src", 2000), snap)["a"] == ()
    assert _reasons(VM("v", "src", 2001), snap)["a"] == ("memory: needs 2001 MiB + 10% headroom, 3000 MiB free",)


def test_static_rules_each_give_a_specific_reason() -> None:
    host = Host(
        "a", 65536, 32, cpu_model="EPYC", cpu_features=frozenset({"avx2"}), machine_types=frozenset({"pc-q35-7.2"}),
        networks=frozenset({"br-prod"}), storage_pools=frozenset({"ceph"}),
    )
    vm = VM(
        "v", "src", 1024, cpu_model="Cascadelake-Server", cpu_features=frozenset({"avx2", "avx512f"}),
        machine_type="pc-q35-8.0", networks=frozenset({"br-prod", "br-storage"}),
        disks=(Disk("vda", 10, StorageKind.SHARED, "rbd"), Disk("vdb", 5, StorageKind.LOCAL, "nvme")),
    )
    assert _reasons(vm, _snap(host))["a"] == (
        "cpu: model Cascadelake-Server required, host has EPYC",
        "cpu: missing features avx512f",
        "machine-type: pc-q35-8.0 not offered",
        "network: missing br-storage",
        "storage: missing pool rbd",
        "storage: no pool nvme for local disk",
    )


def test_qemu64_runs_anywhere_and_local_disk_without_pool_is_precreated() -> None:
    vm = VM("v", "src", 1024, cpu_model="qemu64", disks=(Disk("vda", 10, StorageKind.LOCAL),))
    assert _reasons(vm, _snap(Host("a", 65536, 8, cpu_model="EPYC")))["a"] == ()


def test_host_state_maintenance_evacuating_incoming_zero() -> None:
    snap = _snap(
        Host("deg", 65536, 8, state=HostState.DEGRADED),
        Host("dead", 65536, 8, state=HostState.DEAD, maintenance=True),
        Host("evac", 65536, 8),
        Host("closed", 65536, 8, incoming_limit=0),
    )
    r = _reasons(VM("v", "src", 1024), snap, exclude=frozenset({"evac", "src"}))
    assert r["deg"] == ("state: host is degraded",)
    assert r["dead"] == ("state: host is dead", "maintenance")
    assert r["evac"] == ("evacuating",)
    assert r["closed"] == ("incoming limit 0 reached",)


def test_anti_affinity_on_host_and_failure_domain() -> None:
    rack = {"rack": "r2"}
    snap = _snap(
        Host("hv3", 65536, 8, labels=rack),
        Host("hv4", 65536, 8, labels=rack),
        Host("hv5", 65536, 8, labels={"rack": "r3"}),
        vms=(VM("db-2", "hv3", 1024, anti_affinity_group="db"),),
    )
    vm = VM("db-1", "src", 1024, anti_affinity_group="db")
    assert _reasons(vm, snap)["hv3"] == ("anti-affinity: group db already on hv3",)
    assert _reasons(vm, snap)["hv4"] == ()
    spread = PlacementRules(spread_anti_affinity_across_domains=True)
    assert _reasons(vm, snap, spread)["hv4"] == ("failure-domain: group db already in rack r2",)
    assert choose(vm, snap, spread).host == "hv5"


def test_ledger_moves_group_membership_and_memory() -> None:
    snap = _snap(Host("a", 8192, 4))
    ledger = Ledger(snap)
    first, second = VM("x1", "src", 4096, anti_affinity_group="g"), VM("x2", "src", 4096, anti_affinity_group="g")
    ledger.reserve(first, choose(first, snap, RULES, ledger).host)
    assert choose(second, snap, RULES, ledger) is None
    assert ledger.location == {"x1": "a"} and ledger.reserved_mib == {"a": 4096}
    assert _reasons(second, snap, ledger=ledger)["a"] == (
        "memory: needs 4096 MiB + 10% headroom, 4096 MiB free",
        "anti-affinity: group g already on a",
    )


def test_incoming_limit_is_a_rule_only_when_the_ledger_says_so() -> None:
    snap = _snap(Host("a", 65536, 8, incoming_limit=1))
    vm = VM("v", "src", 1024)
    assert choose(vm, snap, RULES, Ledger(snap, in_flight={"a": 1})) is not None
    ledger = Ledger(snap, limit_incoming=True, in_flight={"a": 1})
    assert _reasons(vm, snap, ledger=ledger)["a"] == ("incoming limit 1 reached",)


def test_score_spreads_load_and_ties_break_by_name() -> None:
    snap = _snap(Host("b", 65536, 8), Host("a", 65536, 8), Host("busy", 65536, 8, memory_used_mib=30000))
    out = evaluate(VM("v", "src", 1024), snap, RULES)
    assert [c.host for c in out] == ["a", "b", "busy"] and out[0].score == out[1].score > out[2].score
    assert choose(VM("v", "src", 1024), snap, RULES).host == "a"


def test_spare_modes() -> None:
    spare = Host("spare", 65536, 8, labels={"role": "spare"})
    busy = Host("busy", 65536, 8, memory_used_mib=40000)
    snap = _snap(spare, busy)
    vm = VM("v", "src", 1024)
    sel = HostSelector(labels={"role": "spare"})
    assert choose(vm, snap, PlacementRules(spare_hosts=sel, spare_mode=SpareMode.AVOID)).host == "busy"
    assert choose(vm, snap, PlacementRules(spare_hosts=sel, spare_mode=SpareMode.PREFER)).host == "spare"
    only = PlacementRules(spare_hosts=sel, spare_mode=SpareMode.ONLY)
    assert _reasons(vm, snap, only)["busy"] == ("spare: only spare hosts allowed",)
    big = VM("big", "src", 30000)  # does not fit the busy host: the spare is used after all
    assert choose(big, snap, PlacementRules(spare_hosts=sel, spare_mode=SpareMode.AVOID)).host == "spare"


def test_host_affinity_required_and_preferred() -> None:
    snap = _snap(Host("ssd1", 65536, 8, labels={"disk": "ssd"}, memory_used_mib=30000), Host("hdd1", 65536, 8))
    db = VM("db", "src", 1024, tags=frozenset({"db"}))
    web = VM("web", "src", 1024)
    rule = HostAffinity(VMSelector(tags=frozenset({"db"})), HostSelector(labels={"disk": "ssd"}))
    required = PlacementRules(host_affinity=(rule,))
    assert _reasons(db, snap, required)["hdd1"] == ("host-affinity: requires disk=ssd",)
    assert _reasons(web, snap, required)["hdd1"] == ()
    preferred = PlacementRules(host_affinity=(HostAffinity(rule.vms, rule.hosts, required=False),))
    assert choose(db, snap, preferred).host == "ssd1"  # despite being busier
    assert choose(web, snap, preferred).host == "hdd1"


def test_affinity_group_prefers_its_members_host() -> None:
    snap = _snap(
        Host("a", 65536, 8, memory_used_mib=20000),
        Host("b", 65536, 8),
        vms=(VM("c1", "a", 1024, affinity_group="cache"),),
    )
    assert choose(VM("c2", "src", 1024, affinity_group="cache"), snap, RULES).host == "a"
    assert choose(VM("other", "src", 1024), snap, RULES).host == "b"


def test_no_migration_to_an_older_hypervisor() -> None:
    hosts = {n: Host(n, 65536, 8, hypervisor_version=v) for n, v in (("src", "9.0.0"), ("old", "8.2.0"), ("new", "9.1"), ("unknown", ""))}
    r = _reasons(VM("v", "src", 1024), Snapshot(hosts, {}))
    assert r == {"old": ("hypervisor: 8.2.0 older than source 9.0.0",), "new": (), "unknown": ()}
