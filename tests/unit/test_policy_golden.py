"""Golden tests: compiled output of every example policy, and exact error messages.

Regenerate on purpose with UPDATE_GOLDEN=1, then review the diff:
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_policy_golden.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from drctl.policy import PolicyError, compile_policy
from drctl.policy.render import policy_to_dict, policy_to_text

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "policy"
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
ERROR_CASES = sorted((GOLDEN / "errors").glob("*.yaml"))
CONFLICT_CASES = sorted((GOLDEN / "conflicts").glob("*.yaml"))


def assert_golden(actual: str, path: Path) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(), f"differs from {path} (UPDATE_GOLDEN=1 to accept)"


def _compile(path: Path, shown_as: str):
    # A fixed name in messages keeps goldens independent of where the checkout lives.
    return compile_policy(path.read_text(), shown_as)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_compiles_to_golden_text(path: Path) -> None:
    policy = _compile(path, f"policies/{path.name}")
    assert_golden(policy_to_text(policy), GOLDEN / "compiled" / f"{path.stem}.txt")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_compiles_to_golden_json(path: Path) -> None:
    policy = _compile(path, f"policies/{path.name}")
    text = json.dumps(policy_to_dict(policy), indent=2, sort_keys=False) + "\n"
    assert_golden(text, GOLDEN / "compiled" / f"{path.stem}.json")


@pytest.mark.parametrize("path", ERROR_CASES, ids=lambda p: p.stem)
def test_error_messages_are_golden(path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        _compile(path, path.name)
    assert_golden(str(info.value) + "\n", path.with_suffix(".err"))


@pytest.mark.parametrize("path", CONFLICT_CASES, ids=lambda p: p.stem)
def test_conflicts_are_dropped_with_reasons(path: Path) -> None:
    policy = _compile(path, path.name)
    assert policy.dropped, "a conflict case must drop something"
    assert_golden(policy_to_text(policy), path.with_suffix(".txt"))


def test_golden_inputs_exist() -> None:
    assert len(EXAMPLES) >= 4 and len(ERROR_CASES) >= 4 and CONFLICT_CASES
