"""`controller.guest_health`: the default, a plugin named by the configuration and loaded
by drctl/control/plugins.py, and the clear errors for the removed lab-only switches."""
from __future__ import annotations

from pathlib import Path

import pytest

from drctl.config.controller import PluginSpec
from drctl.config.settings import parse_config
from drctl.control.plugins import load_guest_health
from drctl.hypervisor import Hypervisor
from drctl.model.errors import ConfigError
from drctl.runner.verification import Health

PRODUCTION = Path(__file__).resolve().parents[2] / "drctl"


class AlwaysHealthy:
    def __init__(self, detail: str = "ok") -> None:
        self.detail = detail

    def mark(self, vm: str) -> object:
        return None

    def check(self, vm: str, host: str, hv: Hypervisor, mark: object, timeout_s: float) -> Health:
        return Health(True, self.detail)


def parse(text: str):  # type: ignore[no-untyped-def]
    cfg = parse_config(text, "c.yaml")
    assert cfg.controller is not None
    return cfg.controller.guest_health


def test_default_and_domain_mean_no_plugin() -> None:
    assert parse("controller: {}") is None
    assert parse("controller: {guest_health: domain}") is None
    assert load_guest_health(None, "c.yaml: controller.guest_health") is None


def test_a_plugin_is_read_and_loaded_with_its_options() -> None:
    spec = parse("controller:\n  guest_health:\n    plugin: tests.unit.test_guest_health_plugin:AlwaysHealthy\n"
                 "    options: {detail: fine}\n")
    assert spec == PluginSpec("tests.unit.test_guest_health_plugin:AlwaysHealthy", {"detail": "fine"})
    health = load_guest_health(spec, "c.yaml: controller.guest_health")
    assert isinstance(health, AlwaysHealthy) and health.detail == "fine"


def test_the_lab_plugin_loads_by_name() -> None:
    from drctl.lab.console_health import ConsoleTicks
    from drctl.lab.controllers import guest_health_config
    from drctl.lab.cluster import LabConfig

    got = guest_health_config(LabConfig(dir=Path("/srv/lab")))
    health = load_guest_health(PluginSpec(got["plugin"], got["options"]), "x")
    assert isinstance(health, ConsoleTicks) and health.cfg.dir == Path("/srv/lab")


@pytest.mark.parametrize("spec, message", [
    (PluginSpec("no_such_module_xyz:f"), "c.yaml: controller.guest_health.plugin: cannot load 'no_such_module_xyz:f'"),
    (PluginSpec("pathlib:NoSuchThing"), "cannot load 'pathlib:NoSuchThing'"),
    (PluginSpec("tests.unit.test_guest_health_plugin:AlwaysHealthy", {"colour": "red"}),
     "controller.guest_health.options: tests.unit.test_guest_health_plugin:AlwaysHealthy refused them"),
    (PluginSpec("pathlib:PurePath"), "returned PurePosixPath, which has no mark, check()"),
])
def test_a_plugin_that_cannot_be_used_is_a_config_error(spec: PluginSpec, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_guest_health(spec, "c.yaml: controller.guest_health")
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("controller: {guest_health: lab}", "c.yaml:1:28: controller.guest_health: `lab` was removed"),
    ("controller: {guest_health: ticks}", "guest_health: unknown value 'ticks' (domain, or {plugin: module.path:factory"),
    ("controller: {guest_health: {options: {}}}", "controller.guest_health.plugin: missing"),
    ("controller: {guest_health: {plugin: not-a-target}}", "expected `module.path:factory`"),
    ("controller: {lab_dir: /x}", "controller.lab_dir: removed with `guest_health: lab`"),
    ("controller: {fence_agents: {lab: {type: lab}}}", "controller.fence_agents.lab.type: `lab` was removed"),
    ("controller: {fence_agents: {x: {type: command, command: [f], lab_dir: /x}}}",
     "controller.fence_agents.x.lab_dir: removed with `type: lab`"),
])
def test_removed_and_bad_settings_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    assert message in str(e.value)


def test_no_production_module_imports_the_lab() -> None:
    # the lab's own package and its `drctl lab` commands may; nothing else
    offenders = [f"{p.relative_to(PRODUCTION)}:{n}"
                 for p in PRODUCTION.rglob("*.py") if p.relative_to(PRODUCTION).parts[0] not in ("lab", "cli")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if line.lstrip().startswith(("from drctl.lab", "import drctl.lab", "from drctl import lab"))]
    assert offenders == []
