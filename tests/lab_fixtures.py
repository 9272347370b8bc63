"""Fixtures for tests against the real lab (libvirt hosts + etcd), marked `lab`.

The lab is brought up by the first test that needs it (idempotent: a lab that `.ci/run`
already started is kept) and taken down at the end of the session if this session
started it.
"""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from drctl.lab import cluster, guests
from drctl.lab.cluster import LabConfig
from tests.lab_env import test_lab_config

LAB_HOSTS = int(os.environ.get("DRCTL_TEST_LAB_HOSTS", "3"))


@pytest.fixture(scope="session")
def lab() -> Iterator[LabConfig]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    cfg = test_lab_config()
    etcd_ok, hosts = cluster.status(cfg)
    was_up = etcd_ok and len(hosts) >= LAB_HOSTS and all(h.responds for h in hosts)
    cluster.up(cfg, LAB_HOSTS, echo=lambda _msg: None)
    yield cfg
    if not was_up and not os.environ.get("DRCTL_TEST_KEEP_LAB"):
        cluster.down(cfg, echo=lambda _msg: None)


@pytest.fixture
def clean_lab(lab: LabConfig) -> Iterator[LabConfig]:
    """The lab with every guest removed before and after the test, and every host up."""
    cluster.up(lab, LAB_HOSTS, install=False, echo=lambda _msg: None)  # restart a host a test killed
    for g in guests.locate_all(lab):
        guests.delete(lab, g.name)
    yield lab
    cluster.up(lab, LAB_HOSTS, install=False, echo=lambda _msg: None)
    for g in guests.locate_all(lab):
        guests.delete(lab, g.name)
