"""Vocabularies are enums defined once; what they write to disk stays the plain strings."""
from __future__ import annotations

import json
from enum import Enum

import pytest

from drctl.audit.events import IncidentOutcome
from drctl.audit.postmortem import SegmentKind
from drctl.control.intents import Intent, IntentParams
from drctl.control.tick import IncidentKind, IncidentPhase
from drctl.model.cluster import DEFAULT_ESCALATION, EscalationStep, IntentKind, IntentState
from drctl.policy import compile_policy
from drctl.runner.migration import CopyMode

VOCABULARIES: list[type[Enum]] = [EscalationStep, CopyMode, IntentKind, IntentState, IncidentKind, IncidentPhase,
                                  IncidentOutcome, SegmentKind]


@pytest.mark.parametrize("vocab", VOCABULARIES, ids=lambda v: v.__name__)
def test_members_serialise_to_their_plain_value(vocab: type[Enum]) -> None:
    for member in vocab:
        assert json.dumps(member) == json.dumps(member.value)
        assert json.dumps({member: [member]}) == json.dumps({member.value: [member.value]})


def test_policy_escalation_steps_compile_to_the_enum() -> None:
    p = compile_policy("version: 1\nname: p\nrules:\n  - name: r\n    when: {state: failing}\n"
                       "    action: live-migrate\nlimits:\n  escalation: {steps: [post-copy, abort]}\n", "p.yaml")
    assert p.escalation.steps == (EscalationStep.POST_COPY, EscalationStep.ABORT)
    assert all(isinstance(s, EscalationStep) for s in p.limits.escalation)


def test_stored_intent_escalation_is_parsed_at_the_edge() -> None:
    it = Intent(id="mig-1", incident="inc-1", kind=IntentKind.MIGRATE, vm="v", src="a", dst="b")
    raw = json.loads(it.to_json())
    assert raw["params"]["escalation"] == ["raise-downtime", "auto-converge", "post-copy", "abort"]
    raw["params"]["escalation"] = ["post-copy", "not-a-step", "abort"]
    back = Intent.from_json(json.dumps(raw).encode())
    assert back.params.escalation == (EscalationStep.POST_COPY, EscalationStep.ABORT)
    assert all(isinstance(s, EscalationStep) for s in back.params.escalation)
    assert IntentParams().escalation == DEFAULT_ESCALATION
