"""drctl's command line: argument parsing, configuration, output; wiring only.

The one place that picks adapters (etcd or memory store, libvirt hypervisor, fence agents) and
hands them to the parts below. May import every part; nothing imports it.
"""
