"""The controller: from health changes to incidents, placements and intents.

`tick` is the pure decision function (no I/O); `view` builds one cluster view per tick from typed
records; `loop` is the leader's shell around it (election, guarded writes, fencing requests);
`intents` is the intent records' one write path; `service` wires a replica together. May import
model, policy, planning, health grading, fencing, store and hypervisor seams; never the lab.
See docs/controller.md.
"""
