"""Getting a destination ready for a VM's host-local disks (storage copy).

libvirt copies local disks during migration (VIR_MIGRATE_NON_SHARED_DISK) but needs the
target image on the destination first: either pre-created at the same path with the exact
size, or a `dir` storage pool whose target is the image's directory, from which libvirt
creates it (docs/runner.md). Without either the migration fails at once (code 49).

`DirPoolPreparer` makes sure such a pool exists, through libvirt only, so it works the
same on a production host and in the lab (where /var/lib/libvirt/images is private to
each lab host's namespace). Another preparer (LVM, a SAN volume) plugs in through the
`StoragePreparer` protocol.
"""
from __future__ import annotations

import hashlib
import posixpath
from typing import Protocol

from drctl.hypervisor import Hypervisor
from drctl.runner.prechecks import DomainNeeds


class StoragePreparer(Protocol):
    def prepare(self, needs: DomainNeeds, dst: Hypervisor) -> str:
        """Make the destination able to receive the VM's local disks; a sentence saying what was done."""


def pool_name(directory: str) -> str:
    """A stable pool name per directory, so each host gets one pool per image directory."""
    base = posixpath.basename(directory.rstrip("/")) or "root"
    return f"drctl-{base}-{hashlib.sha1(directory.encode()).hexdigest()[:8]}"


class DirPoolPreparer:
    def prepare(self, needs: DomainNeeds, dst: Hypervisor) -> str:
        dirs = sorted({posixpath.dirname(f) for f in needs.local_files})
        for d in dirs:
            dst.ensure_dir_pool(pool_name(d), d)
        return f"dir pools for {', '.join(dirs)}" if dirs else "no local disks"
