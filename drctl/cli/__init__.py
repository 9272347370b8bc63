"""drctl's command line: argument parsing, configuration, output; wiring only.

Commands load the configuration and connect the store adapter; `drctl controller` hands the
rest to `control.service`, which wires a replica (libvirt connections, fence agents, guest
health). May import every part; nothing imports it.
"""
