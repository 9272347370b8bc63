"""Fixtures for tests against the real lab (libvirt hosts + etcd), marked `lab`.

The lab is brought up by the first test that needs it (idempotent: a lab that `.ci/run`
already started is kept) and taken down at the end of the session if this session
started it.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterator

import pytest

from drctl.lab import cluster, guests
from drctl.lab.cluster import LabConfig
from tests.lab_env import test_lab_config
from tests.requires import skip_unless

LAB_HOSTS = int(os.environ.get("DRCTL_TEST_LAB_HOSTS", "3"))


@pytest.fixture(scope="session")
def lab() -> Iterator[LabConfig]:
    skip_unless(os.geteuid() == 0, "the lab needs root")
    cfg = test_lab_config()
    etcd_ok, hosts = cluster.status(cfg)
    was_up = etcd_ok and len(hosts) >= LAB_HOSTS and all(h.responds for h in hosts)
    cluster.up(cfg, LAB_HOSTS, echo=lambda _msg: None)
    yield cfg
    if not was_up and not os.environ.get("DRCTL_TEST_KEEP_LAB"):
        cluster.down(cfg, echo=lambda _msg: None)


def _remove_guests(lab: LabConfig) -> None:
    """Delete every guest, then wait until the agents have seen them go.

    Tests delete guests behind drctl's back (straight through libvirt). Until each host's
    agent publishes its next inventory, etcd still says those VMs run there, and a host
    killed by the next test would have them "restarted" by the controller - correctly, on
    what it knows, but not what that test is about."""
    gone = [g.name for g in guests.locate_all(lab)]
    for name in gone:
        guests.delete(lab, name)
    if not gone:
        return
    from drctl.store.etcd import EtcdStore
    from drctl.store.keys import Keys

    keys = Keys()
    store = EtcdStore([lab.etcd_endpoint], timeout=3)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            defs, _ = store.get_prefix(keys.vm_definitions_prefix())
            invs = [json.loads(kv.value) for kv in store.get_prefix(keys.hosts_prefix())[0]
                    if kv.key.endswith("/inventory")]
            listed = {str(v.get("name")) for inv in invs for v in inv.get("vms") or ()}
            if not ({Keys.last_segment(kv.key) for kv in defs} | listed) & set(gone):
                return
            time.sleep(0.5)
    finally:
        store.close()


@pytest.fixture
def clean_lab(lab: LabConfig) -> Iterator[LabConfig]:
    """The lab with every guest removed before and after the test, and every host up."""
    cluster.up(lab, LAB_HOSTS, install=False, echo=lambda _msg: None)  # restart a host a test killed
    _remove_guests(lab)
    yield lab
    cluster.up(lab, LAB_HOSTS, install=False, echo=lambda _msg: None)
    _remove_guests(lab)
