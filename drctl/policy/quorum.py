"""Can a host ever be declared dead? A configuration check shared by `drctl policy check`
and the controller at start-up.

A host is DEAD when its lease is gone and `quorum` of its witnesses confirm that its
libvirtd does not answer (drctl.health.grading.quorum_for). Each agent witnesses its
`witnesses` ring successors, so every host has at most `witnesses` witnesses (fewer in a
cluster with fewer other hosts). A fixed quorum above that, or agents that witness no one,
means no host is ever declared dead and disaster recovery never fires.
"""
from __future__ import annotations


def never_dead(quorum: int | None, witnesses_per_host: int) -> str | None:
    """Why no host could ever be declared dead, or None when one can.

    quorum: the fixed witness quorum in force (None: a majority of each host's witnesses).
    witnesses_per_host: the agents' `witnesses` setting.
    """
    if witnesses_per_host <= 0:
        return ("agents witness no peers (agent `witnesses: 0`): no witness can confirm a host dead, "
                "so no host is ever declared dead")
    if quorum is not None and quorum > witnesses_per_host:
        return (f"witness_quorum {quorum} can never be met: each host has at most {witnesses_per_host} witnesses "
                f"(agent `witnesses: {witnesses_per_host}`), so no host is ever declared dead; "
                f"use `majority` or at most {witnesses_per_host}")
    return None
