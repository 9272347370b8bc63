"""The lab the test suite uses: its own directory, addresses and ports, so it never
collides with a lab an operator runs for the demo (127.0.1.x, port 2379)."""
from __future__ import annotations

import os
from pathlib import Path

from drctl.lab.cluster import LabConfig


def test_lab_config() -> LabConfig:
    return LabConfig(
        dir=Path(os.environ.get("DRCTL_TEST_LAB_DIR", "/var/lib/drctl-test-lab")),
        etcd_port=int(os.environ.get("DRCTL_TEST_LAB_ETCD_PORT", "23791")),
        etcd_peer_port=int(os.environ.get("DRCTL_TEST_LAB_ETCD_PEER_PORT", "23801")),
        addr_prefix=os.environ.get("DRCTL_TEST_LAB_ADDR_PREFIX", "127.0.2"),
        migration_port_base=int(os.environ.get("DRCTL_TEST_LAB_MIGRATION_PORT_BASE", "50152")),
    )


# not a test function, despite the name pytest would collect
test_lab_config.__test__ = False  # type: ignore[attr-defined]
