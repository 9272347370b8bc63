"""Evacuation policies: versioned YAML files under policies/, compiled once into a Policy.

    from drctl.policy import load_policy, compile_policy, Policy

See docs/policies.md for the format. Compilation validates everything and raises
PolicyError (a ConfigError) naming file:line:column and field for each problem; the
compiled Policy is frozen and answers the controller's questions (`rule_for`,
`Rule.action_for`, `Rule.order_vms`, `apply_groups`) without failing.
"""
from drctl.policy.compiler import compile_policy, load_policies, load_policy
from drctl.policy.defaults import DEFAULT_POLICY_YAML, default_policy
from drctl.policy.reader import PolicyError, Problem
from drctl.policy.types import (
    Action,
    ActionSpec,
    BlastRadius,
    DroppedRule,
    Escalation,
    Evidence,
    EvidenceKind,
    Group,
    Order,
    Override,
    Policy,
    Rebalance,
    Rule,
    Trigger,
    TriggerKind,
)
from drctl.policy.units import Window

__all__ = [
    "Action", "ActionSpec", "BlastRadius", "DEFAULT_POLICY_YAML", "DroppedRule", "Escalation",
    "Evidence", "EvidenceKind", "Group", "Order", "Override", "Policy", "PolicyError", "Problem",
    "Rebalance", "Rule", "Trigger", "TriggerKind", "Window", "compile_policy", "default_policy",
    "load_policies", "load_policy",
]
