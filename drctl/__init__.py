"""drctl: disaster-recovery failover controller for libvirt/KVM clusters."""

__version__ = "0.1.0"
