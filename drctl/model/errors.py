"""drctl's exception tree.

Library errors (libvirt, etcd/grpc) are translated into these at the adapter edge, so the
core and the retry logic only ever see drctl's own types. Retries apply to TransientError
alone; a PermanentError moves on (next destination) or fails the intent with its reason.
"""
from __future__ import annotations


class DrctlError(Exception):
    """Base of every error drctl raises on purpose."""


class TransientError(DrctlError):
    """May succeed if tried again (connection refused, peer restarting, etcd election)."""


class PermanentError(DrctlError):
    """Will not succeed by trying again (bad input, incompatible CPU, no memory)."""


class ConfigError(PermanentError):
    """Bad configuration or input file. The message names file, line and field."""


# ------------------------------------------------------------------ store (etcd)


class StoreError(DrctlError):
    pass


class StoreUnavailable(StoreError, TransientError):
    """etcd did not answer (down, partitioned, timed out)."""


class LeaseLost(StoreError, TransientError):
    """Our lease expired or was revoked: anything bound to it is gone."""


class WatchCompacted(StoreError, PermanentError):
    """A watch asked for a revision that etcd has compacted away: re-list, then watch."""


# ------------------------------------------------------------------ hypervisor (libvirt)


class HypervisorError(DrctlError):
    pass


class HostUnreachable(HypervisorError, TransientError):
    """A host's libvirtd did not answer or refused the connection."""


class HypervisorTimeout(HypervisorError, TransientError):
    """A libvirt call did not return within our deadline (hung peer)."""


class MigrationFailed(HypervisorError, TransientError):
    """The migration broke off for a reason that may not repeat (peer QEMU died, socket)."""


class MigrationAborted(HypervisorError, PermanentError):
    """The migration job was aborted (by us, the watchdog or an operator)."""


class NoSuchDomain(HypervisorError, PermanentError):
    pass


class InsufficientResources(HypervisorError, PermanentError):
    """Destination cannot host the VM (memory, CPU, storage)."""


class IncompatibleHost(HypervisorError, PermanentError):
    """CPU model/features, machine type, network or storage do not match."""


class HypervisorPermanent(HypervisorError, PermanentError):
    """Any other libvirt error that trying again will not fix."""
