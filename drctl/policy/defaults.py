"""The policy drctl runs when none is given: conservative, and written in the policy format
itself so that it is validated by the same compiler and printed the same way."""
from __future__ import annotations

from functools import lru_cache

from drctl.policy.types import Policy

DEFAULT_POLICY_YAML = """\
version: 1
name: default
description: Built-in policy used when no policy file is given.
rules:
  # A dead host cannot be live-migrated from: restart its VMs once evidence is in.
  - name: restart-dead
    when: {state: dead}
    action: restart
    order: priority
  # Degraded or failing for a while: move VMs off while the host still answers.
  - name: evacuate-unhealthy
    when: {state: [degraded, failing], for: 30s}
    action: live-migrate
    order: [priority, size-asc]
  - name: drain
    when: {maintenance: requested}
    action: live-migrate
    order: [priority, size-asc]
"""


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    """The built-in policy (compiled once; Policy is frozen, so sharing it is safe)."""
    from drctl.policy.compiler import compile_policy

    return compile_policy(DEFAULT_POLICY_YAML, "<default>")
