"""The controller section of the configuration, and the documented example file."""
from __future__ import annotations

from pathlib import Path

import pytest

from drctl.config.settings import load_config, parse_config
from drctl.model.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "drctl.example.yaml"


def test_documented_example_loads_with_every_section() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.etcd.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379")
    assert cfg.agent is not None and cfg.agent.host == "hv1" and len(cfg.agent.probes) == 8
    c = cfg.controller
    assert c is not None and c.name == "ctl-a" and c.lease_ttl_s == 2 and c.tick_interval_s == 0.5
    assert c.fence_agents["ipmi"].command == ("fence_ipmilan",)
    assert c.fence_agents["ipmi"].hosts["hv2"] == {"ip": "10.0.1.12"}


@pytest.mark.parametrize("text, message", [
    ("controller: {nmae: x}", "t.yaml:1:14: controller.nmae: unknown key (did you mean 'name'?)"),
    ("controller: {lease_ttl: 1s}", "controller.lease_ttl: must be whole seconds, at least 2s"),
    ("controller: {fence_agents: {ipmi: {type: command}}}", "controller.fence_agents.ipmi.command: missing"),
    ("controller: {guest_health: lab}", "controller.guest_health: `lab` was removed"),
])
def test_bad_controller_section_names_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "t.yaml")
    assert message in str(e.value)
