"""Hypothesis strategies for small random clusters, shared by the placement and planner tests."""
from __future__ import annotations

import random

from hypothesis import strategies as st

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

FEATURES = ("avx2", "avx512f")
NETWORKS = ("br-prod", "br-storage")
POOLS = ("ceph", "local")


def _subset(rnd: random.Random, items: tuple[str, ...]) -> frozenset[str]:
    return frozenset(i for i in items if rnd.random() < 0.6)


def _hosts(rnd: random.Random, n: int) -> dict[str, Host]:
    out = {}
    states = [HostState.HEALTHY] * 5 + list(HostState)
    for i in range(n):
        memory = rnd.choice([4096, 8192, 16384, 32768])
        labels = {}
        if rnd.randint(0, 5):  # mostly labelled; an unlabelled host is its own domain
            labels["rack"] = f"r{rnd.randint(0, 3)}"
        if rnd.randint(0, 4) == 0:
            labels["spare"] = "yes"
        out[f"hv{i}"] = Host(
            name=f"hv{i}",
            memory_mib=memory,
            cpus=rnd.choice([4, 16, 32]),
            memory_used_mib=rnd.randint(0, memory * 3 // 4),
            reserved_mib=rnd.choice([0, 512, 1024]),
            cpu_used=float(rnd.randint(0, 40)),
            cpu_features=_subset(rnd, FEATURES),
            hypervisor_version=rnd.choice(["", "8.2.0", "9.0.0", "9.0.0"]),
            networks=_subset(rnd, NETWORKS),
            storage_pools=_subset(rnd, POOLS),
            labels=labels,
            state=rnd.choice(states),
            maintenance=rnd.randint(0, 6) == 0,
            incoming_limit=rnd.randint(0, 3),
        )
    return out


def _vm(rnd: random.Random, i: int, hosts: list[str]) -> VM:
    disks = ()
    if rnd.random() < 0.5:
        disks = (Disk("vda", 10.0, rnd.choice(list(StorageKind)), rnd.choice(("", *POOLS))),)
    return VM(
        name=f"vm{i}",
        host=rnd.choice(hosts),
        memory_mib=rnd.choice([512, 1024, 2048, 4096, 8192]),
        vcpus=rnd.randint(1, 8),
        cpu_features=_subset(rnd, FEATURES) if rnd.randint(0, 3) == 0 else frozenset(),
        networks=_subset(rnd, NETWORKS),
        disks=disks,
        priority=rnd.randint(0, 3),
        tags=frozenset({"db"}) if i % 3 == 0 else frozenset(),
        affinity_group=rnd.choice(["", "", "x"]),
        anti_affinity_group=rnd.choice(["", "a", "b"]),
        migratable=rnd.randint(0, 9) > 0,
        dirty_rate_mibs=rnd.choice([None, 1.0, 100.0]),
    )


@st.composite
def snapshots(draw: st.DrawFn, max_hosts: int = 10, max_vms: int = 30) -> Snapshot:
    # Sizes come from hypothesis (they shrink well); the contents from a seeded generator,
    # which is ~20x faster to draw than one strategy per field and keeps the suite quick.
    n_hosts = draw(st.integers(2, max_hosts))
    n_vms = draw(st.integers(0, max_vms))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    hosts = _hosts(rnd, n_hosts)
    names = sorted(hosts)
    return Snapshot(hosts=hosts, vms={f"vm{i}": _vm(rnd, i, names) for i in range(n_vms)})


@st.composite
def rules(draw: st.DrawFn) -> PlacementRules:
    affinity = ()
    if draw(st.booleans()):
        affinity = (
            HostAffinity(
                vms=VMSelector(tags=frozenset({"db"})),
                hosts=HostSelector(labels={"rack": draw(st.sampled_from(["r0", "r1"]))}),
                required=draw(st.booleans()),
            ),
        )
    return PlacementRules(
        memory_headroom_pct=draw(st.sampled_from([0.0, 10.0, 25.0])),
        spread_anti_affinity_across_domains=draw(st.booleans()),
        host_affinity=affinity,
        spare_hosts=HostSelector(labels={"spare": "yes"}) if draw(st.booleans()) else None,
        spare_mode=draw(st.sampled_from(list(SpareMode))),
    )
