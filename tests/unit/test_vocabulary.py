"""Vocabularies are enums defined once; what they write to disk stays the plain strings."""
from __future__ import annotations

import ast
import json
from enum import Enum
from pathlib import Path

import pytest

from drctl.audit import events
from drctl.audit.events import EvidenceSource, IncidentOutcome
from drctl.audit.postmortem import AnomalyKind, PhaseName, SegmentKind
from drctl.control.intents import Intent, IntentParams
from drctl.control.tick import IncidentKind, IncidentPhase
from drctl.model.cluster import DEFAULT_ESCALATION, EscalationStep, IntentKind, IntentState
from drctl.policy import compile_policy
from drctl.policy.sections import HostRuleKind
from drctl.runner.migration import CopyMode

VOCABULARIES: list[type[Enum]] = [EscalationStep, CopyMode, IntentKind, IntentState, IncidentKind, IncidentPhase,
                                  IncidentOutcome, EvidenceSource, SegmentKind, PhaseName, AnomalyKind,
                                  HostRuleKind]


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



def test_escalation_given_as_members_is_kept() -> None:
    """The runner hands the intent's parsed steps (members, not strings) to the stall
    escalation: none may be dropped, or every stalled migration aborts at once."""
    from drctl.model.cluster import escalation_steps
    from drctl.runner.convergence import next_step

    assert escalation_steps(DEFAULT_ESCALATION) == DEFAULT_ESCALATION
    assert escalation_steps(["post-copy", EscalationStep.ABORT, "bogus"]) == (EscalationStep.POST_COPY,
                                                                             EscalationStep.ABORT)
    assert next_step(IntentParams().escalation, [], False) is EscalationStep.RAISE_DOWNTIME

# ---------------------------------------------------------------- audit event names

DRCTL = Path(__file__).resolve().parents[2] / "drctl"


def literal_event_names(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: name` for each audit emit/warn call whose event name is not an `events.X` name."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        audit_call = ((isinstance(f, ast.Attribute) and f.attr in ("emit", "warn")
                       and isinstance(f.value, ast.Name) and f.value.id in ("audit", "writer"))
                      or (isinstance(f, ast.Name) and f.id in ("emit", "warn")))
        if not audit_call:
            continue
        name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "event"), None)
        named = (isinstance(name, ast.Attribute) and isinstance(name.value, ast.Name) and name.value.id == "events"
                 and name.attr in _CONSTANTS)
        if not named:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(name) if name else '(no event name)'}")
    return found


_CONSTANTS = {k for k, v in vars(events).items() if k.isupper() and isinstance(v, str) and v in events.SCHEMA}


def test_every_audit_event_drctl_writes_is_named_in_the_schema() -> None:
    found = [hit for path in sorted(DRCTL.rglob("*.py"))
             for hit in literal_event_names(path.read_text(), str(path.relative_to(DRCTL.parent)))]
    assert not found, "audit events must be named by drctl.audit.events constants:\n" + "\n".join(found)


def test_the_event_name_scan_finds_literals() -> None:
    src = ("audit.emit('agent.started', host=h)\naudit.warn(f'{x}.failed')\nemit(event='x.y')\n"
           "audit.emit(events.AGENT_STARTED, host=h)\nwarnings.warn('not audit')\n")
    assert [h.split(": ", 1)[1] for h in literal_event_names(src)] == ["'agent.started'", "f'{x}.failed'", "'x.y'"]
