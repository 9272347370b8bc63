"""Code that the configuration names and drctl loads, instead of importing it.

Guest health is the one such seam today: `controller.guest_health: {plugin:
"module.path:factory", options: {...}}` makes the runner judge a moved or restarted guest
by `factory(**options)`, an object with the GuestHealth methods (drctl/runner/verification.py).

Why an in-process plugin rather than a command like the fence agents: the runner calls
guest health inside its verification loop with the open hypervisor connection, and keeps
the object `mark` returned before the move until `check` after it; a process boundary
would have to serialise marks and reconnect to libvirt on every poll, and verification
would no longer behave as it does. Fencing, by contrast, talks to a BMC outside the
process and has an industry convention (fence-agents) to follow. Loading by name keeps
production code free of any import of the lab (docs/controller.md), which configures
`drctl.lab.console_health:console_ticks` for its controllers.
"""
from __future__ import annotations

import importlib

from drctl.config.controller import PluginSpec
from drctl.model.errors import ConfigError
from drctl.runner.verification import GuestHealth


def load_guest_health(spec: PluginSpec | None, where: str) -> GuestHealth | None:
    """The configured guest health, or None for the default (a running domain is healthy).
    `where` names the setting in errors, e.g. "ctl.yaml: controller.guest_health"."""
    if spec is None:
        return None
    module_name, _, attr = spec.target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}.plugin: cannot load {spec.target!r}: {e}") from e
    try:
        health = factory(**dict(spec.options))
    except (TypeError, ValueError, ConfigError) as e:
        raise ConfigError(f"{where}.options: {spec.target} refused them: {e}") from e
    missing = [m for m in ("mark", "check") if not callable(getattr(health, m, None))]
    if missing:
        raise ConfigError(f"{where}.plugin: {spec.target} returned {type(health).__name__}, "
                          f"which has no {', '.join(missing)}() (see GuestHealth in drctl/runner/verification.py)")
    return health  # type: ignore[no-any-return]
