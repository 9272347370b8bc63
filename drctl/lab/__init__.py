"""The lab: a multi-host libvirt cluster on one machine, for demos and the lab tests.

Owns the lab hosts (`cluster`), guests, faults, the demo and the lab's own controllers. May
import every other part; production code never imports it: the one importer outside it is
`drctl.cli.lab` (the `drctl lab` command). See docs/lab.md.
"""
