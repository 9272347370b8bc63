"""Fuzzing the loader: whatever the input, it returns a Policy or raises PolicyError.

Nothing else may escape (no KeyError, TypeError, RecursionError, yaml errors...): a
controller reloading a half-written policy must get a clear validation error.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drctl.policy import Policy, PolicyError, compile_policy, load_policy
from drctl.policy.compiler import TOP_KEYS
from drctl.policy.rules import RULE_KEYS, WHEN_KEYS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
EXAMPLE_TEXTS = [p.read_text() for p in EXAMPLES]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compiles_or_config_error(text: str) -> Policy | None:
    try:
        return compile_policy(text, "fuzz.yaml")
    except PolicyError as e:
        assert e.problems and all(str(p).startswith("fuzz.yaml:") for p in e.problems)
        return None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_truncation_of_an_example(path: Path) -> None:
    text = path.read_text()
    for end in range(0, len(text), 17):  # every 17th byte keeps this near a second
        compiles_or_config_error(text[:end])


@FAST
@given(st.sampled_from(EXAMPLE_TEXTS), st.data())
def test_mutated_examples(text: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    junk = data.draw(st.text(max_size=12))
    compiles_or_config_error(text[:start] + junk + text[end:])


@FAST
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    compiles_or_config_error(text)


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_from_a_file(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_bytes(blob)
    try:
        load_policy(path)
    except PolicyError:
        pass


# Random documents built from the format's own words, so they get deep into the compiler.
_WORDS = list(TOP_KEYS + RULE_KEYS + WHEN_KEYS) + [
    "names", "labels", "tags", "not", "min_priority", "live-migrate", "restart", "leave-alone",
    "dead", "degraded", "30s", "5m", "20%", "above 20%", "64MiB/s", "Mon-Fri 01:00-05:00",
    "requested", "must", "avoid", "priority", "size-asc", "cluster", "per_source", "groups",
    "affinity", "anti_affinity", "name", "hosts", "vms", "rule", "require", "fence", "majority",
]
_scalars = st.one_of(st.sampled_from(_WORDS), st.integers(-5, 10**20), st.booleans(), st.none(),
                     st.floats(allow_nan=True), st.text(max_size=8))
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(_WORDS), inner, max_size=5)),
    max_leaves=30,
)


@FAST
@given(st.dictionaries(st.sampled_from(_WORDS), _docs, max_size=8))
def test_random_nested_documents(doc: dict) -> None:
    compiles_or_config_error(yaml.safe_dump(doc))


@FAST
@given(_docs)
def test_random_rule(rule: object) -> None:
    doc = {"version": 1, "name": "fuzz", "rules": [rule]}
    compiles_or_config_error(yaml.safe_dump(doc))


def test_deep_nesting_and_alias_bombs_are_config_errors() -> None:
    deep = "rules: " + "[" * 100_000 + "]" * 100_000
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c, *c]\n"
    cycle = "&a [*a]"
    for text in (deep, bomb, cycle):
        with pytest.raises(PolicyError):
            compile_policy(text, "fuzz.yaml")
