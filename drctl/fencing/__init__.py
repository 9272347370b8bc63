"""Fencing: proof that a host is off before its VMs start elsewhere.

Owns the fence-agent seam and the command agent that speaks the fence-agents convention
(options on stdin as `name=value` lines; drctl sends `action=off`, then `action=status`
to confirm). May import model only. See docs/controller.md.
"""
