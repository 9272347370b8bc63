"""One controller replica as a process: the election loop plus a migration runner.

Every replica runs a runner (claims keep two runners off one intent, and a dead replica's
claims lapse with its lease), but only the leader decides. The runner learns hosts'
libvirt URIs and states from the one cluster view of this process (drctl.control.view.
SharedView): the leader's loop builds it once per tick; while this replica does not lead,
a background thread refreshes it every second so its runner can finish intents too.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.clock import SystemClock
from drctl.control.view import SharedView, configured_quorum
from drctl.config.settings import AgentConfig, Config
from drctl.control.tick import Settings
from drctl.control.loop import ControllerLoop
from drctl.control.plugins import load_guest_health
from drctl.model.errors import ConfigError, DrctlError
from drctl.fencing.agents import FenceAgent, make_agent
from drctl.policy import Policy, default_policy, load_policy
from drctl.policy.quorum import never_dead
from drctl.store import Store
from drctl.store.keys import Keys

Echo = Callable[[str], None]


def load_controller_policy(path: str) -> Policy:
    if not path:
        return default_policy()
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"controller.policy: {path} is a directory; name one policy file")
    return load_policy(p)


def check_quorum(quorum: int | None, cfg: Config) -> None:
    """Refuse to run a configuration under which no host can ever be declared dead."""
    witnesses = cfg.agent.witnesses if cfg.agent is not None else AgentConfig.witnesses
    problem = never_dead(quorum, witnesses)
    if problem:
        raise ConfigError(f"{cfg.path}: {problem}")


def fence_agents(cfg: Config) -> dict[str, FenceAgent]:
    assert cfg.controller is not None
    return {name: make_agent(name, spec.spec()) for name, spec in cfg.controller.fence_agents.items()}


def run(cfg: Config, store: Store, stop: threading.Event, echo: Echo) -> None:
    """Run one replica until `stop` is set."""
    from drctl.hypervisor.libvirt_adapter import connect
    from drctl.runner.executor import Runner, RunnerConfig

    if cfg.controller is None:
        raise ConfigError(f"{cfg.path}: no `controller:` section")
    cc = cfg.controller
    keys = Keys(cfg.etcd.prefix)
    policy = load_controller_policy(cc.policy)
    agents = fence_agents(cfg)
    if policy.evidence.fence_agent and policy.evidence.fence_agent not in agents:
        raise ConfigError(f"{cfg.path}: policy {policy.name} fences with {policy.evidence.fence_agent!r}, "
                          f"but controller.fence_agents has {sorted(agents) or 'none'}")
    quorum = configured_quorum(cc.witness_quorum, policy)
    check_quorum(quorum, cfg)
    shared = SharedView(store, keys, quorum)
    shared.refresh(SystemClock().now())
    runner = None
    if cc.runner_enabled:
        health = load_guest_health(cc.guest_health, f"{cfg.path}: controller.guest_health")
        # the live mapping of the shared view: hosts join as their agents publish
        runner = Runner(store, keys, shared.uris, lambda uri: connect(uri, timeout_s=15), SystemClock(),
                        RunnerConfig(runner_id=cc.name, limits=policy.limits, lease_ttl_s=cc.runner_lease_ttl_s),
                        health=health, host_state=shared.host)
    loop = ControllerLoop(store, keys, policy, cc.name, fence_agents=agents, lease_ttl=cc.lease_ttl_s,
                          tick_interval_s=cc.tick_interval_s, quorum=quorum, echo=echo, shared=shared,
                          settings=Settings(stale_after_s=cc.stale_after_s, reopen_after_s=cc.reopen_after_s))
    threads = [threading.Thread(target=_refresh_forever, args=(shared, stop), name="cluster-view", daemon=True)]
    if runner is not None:
        threads.append(threading.Thread(target=_run_runner, args=(runner, stop), name="runner", daemon=True))
    for t in threads:
        t.start()
    audit.emit(events.CONTROLLER_STARTED, name=cc.name, policy=policy.name, runner=bool(runner))
    echo(f"{cc.name}: controller started (policy {policy.name}, runner {'on' if runner else 'off'})")
    try:
        loop.run(stop)
    finally:
        stop.set()
        if runner is not None:
            runner.close()


def _refresh_forever(shared: SharedView, stop: threading.Event, every_s: float = 1.0) -> None:
    """Keep the view fresh while no loop does: a leading loop publishes one per tick, and
    then this thread reads nothing. Time is the view's own clock (the simulator's, in
    drctl sim)."""
    clock = shared.clock
    while not stop.is_set():
        now = clock.now()
        if now - shared.latest.taken_at >= every_s:
            try:
                shared.refresh(now)
            except DrctlError as e:
                audit.warn(events.CONTROLLER_VIEW_FAILED, error=str(e))
        stop.wait(every_s / 2)


def _run_runner(runner, stop: threading.Event, retry_s: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    """Run the runner until `stop`, through any etcd outage: paused once, resumed once.
    The pause is timed on the runner's clock."""
    paused_at: float | None = None
    while not stop.is_set():
        try:
            if paused_at is not None:
                runner.run_pending()  # raises while the store is still away
                audit.emit(events.RUNNER_RESUMED, paused_s=round(runner.clock.monotonic() - paused_at, 1))
                paused_at = None
            runner.run_forever(stop)
        except DrctlError as e:  # etcd outage: report, wait, carry on
            if paused_at is None:
                audit.warn(events.RUNNER_PAUSED, error=str(e))
                paused_at = runner.clock.monotonic()
            stop.wait(retry_s)
