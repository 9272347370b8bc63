"""Issue 12 case 0: a configuration under which no host can ever be declared dead is
refused, by `drctl policy check` and by the controller at start-up (one line, exit 2)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from drctl.cli.main import cli
from drctl.config.settings import parse_config
from drctl.control.service import run
from drctl.model.errors import ConfigError
from drctl.policy.quorum import never_dead
from drctl.store.memory import MemoryStore

POLICY = """version: 1
name: strict
evidence: {{witness_quorum: {quorum}}}
rules:
  - name: dead
    when: {{state: dead}}
    action: restart
"""


def _policy(tmp_path: Path, quorum: object) -> Path:
    p = tmp_path / "strict.yaml"
    p.write_text(POLICY.format(quorum=quorum))
    return p


def test_never_dead() -> None:
    assert never_dead(None, 2) is None and never_dead(2, 2) is None and never_dead(1, 3) is None
    assert "witness_quorum 3 can never be met" in (never_dead(3, 2) or "")
    assert "witness no peers" in (never_dead(None, 0) or "")


def test_policy_check_refuses_a_quorum_above_the_witnesses(tmp_path: Path) -> None:
    path = _policy(tmp_path, 3)
    result = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"drctl: error: {path}: policy strict: evidence.witness_quorum: ")
    assert "each host has at most 2 witnesses" in lines[0] and "Traceback" not in result.output
    # the same policy is fine when agents witness 3 peers each, and `majority` always is
    assert CliRunner().invoke(cli, ["policy", "check", "--witnesses", "3", str(path)]).exit_code == 0
    assert CliRunner().invoke(cli, ["policy", "check", str(_policy(tmp_path, "majority"))]).exit_code == 0


def test_controller_refuses_to_start(tmp_path: Path) -> None:
    cfg = parse_config(f"controller: {{name: c1, witness_quorum: 3, policy: {_policy(tmp_path, 'majority')}}}\n"
                       "agent: {host: hv1, witnesses: 2}\n", "drctl.yaml")
    store = MemoryStore()
    try:
        with pytest.raises(ConfigError) as e:
            run(cfg, store, threading.Event(), lambda _line: None)
        assert str(e.value).startswith("drctl.yaml: witness_quorum 3 can never be met")
        # the policy's quorum counts too, and agents that witness nobody are refused
        cfg = parse_config(f"controller: {{name: c1, policy: {_policy(tmp_path, 3)}}}\n", "drctl.yaml")
        with pytest.raises(ConfigError, match="witness_quorum 3 can never be met"):
            run(cfg, store, threading.Event(), lambda _line: None)
        cfg = parse_config("controller: {name: c1}\nagent: {host: hv1, witnesses: 0}\n", "drctl.yaml")
        with pytest.raises(ConfigError, match="witness no peers"):
            run(cfg, store, threading.Event(), lambda _line: None)
    finally:
        store.close()
