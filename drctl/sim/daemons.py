"""ALL the glue between the simulator and the production daemons, in one module: when a
daemon's API changes, this is the one place the simulator changes.

The simulator runs the production code itself: `Agent.run`, `ControllerLoop.run` (election
+ view + tick + guarded writes + fencing), and the replica's runner and cluster-view threads from
`drctl.control.service` (`_run_runner`, `_refresh_forever`). It never re-implements their
decisions. What it substitutes, all here:

- `threading` inside the modules in `PATCHED_MODULES` becomes `SimThreading` (threads are
  actors, events wait on simulated time), so blocking code steps deterministically;
- the runner's worker pool (`Runner._pool`) becomes a `SimExecutor`;
- `uuid` in `drctl.control.intents` becomes a seeded counter (intent ids), and
  `time` in `drctl.health.probes` reads the simulated clock (probe latencies);
- `libvirt_adapter.connect` (the loop's stale-copy removal) connects to the simulated host
  on behalf of the calling process;
- the replica's shared view (`SharedView`) gets the machine's simulated clock, which the
  view thread (`service._refresh_forever`) and the runner's pause timing read through it.

The processes are wired as `drctl.control.service.run` and `drctl agent` wire them, with
the simulated store client, hypervisor connections and fence agents in place of etcd,
libvirt and fence-agents commands.
"""
from __future__ import annotations

import importlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from drctl.sim.sched import Process, Scheduler, SimEvent, SimExecutor, SimThreading
from drctl.sim.world import NodeClock, SimFenceAgent, World

PATCHED_MODULES = (
    "drctl.control.loop",
    "drctl.control.election",
    "drctl.runner.executor",
    "drctl.runner.migration",
    "drctl.hypervisor.deadline",
    "drctl.health.agent",
    "drctl.health.probes",
)
FENCE_AGENT = "sim"  # the fence agent's name policies refer to in scenarios


class _Uuid:
    """uuid.uuid4() stand-in: ids from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def uuid4(self) -> Any:
        import uuid

        return uuid.UUID(int=self._rng.getrandbits(128), version=4)


class _Time:
    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched

    def monotonic(self) -> float:
        return self._sched.monotonic()

    def time(self) -> float:
        return self._sched.now()

    def sleep(self, s: float) -> None:
        self._sched.sleep(s)


class _NoLock:
    """SimCluster's lock is meant for real threads; under the baton one actor runs at a
    time, and a real lock held across a simulated wait would stop every other actor."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@contextmanager
def patched(sched: Scheduler, world: World, seed: int, disabled: tuple[str, ...] = ()) -> Iterator[None]:
    """Swap the substitutes in for the duration of one simulation."""
    shim = SimThreading(sched)
    saved: list[tuple[Any, str, Any]] = []

    def swap(obj: Any, attr: str, value: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    for name in PATCHED_MODULES:
        swap(importlib.import_module(name), "threading", shim)
    swap(importlib.import_module("drctl.control.intents"), "uuid", _Uuid(random.Random(seed ^ 0x5EED)))
    swap(importlib.import_module("drctl.health.probes"), "time", _Time(sched))
    from drctl.hypervisor import libvirt_adapter

    def connect(uri: str, timeout_s: float = 5.0) -> Any:
        actor = sched.actor()
        assert actor is not None, "libvirt connect outside a simulated process"
        return world.connect_for(actor.process)(uri, timeout_s)

    swap(libvirt_adapter, "connect", connect)
    if "claims" in disabled:
        _disable_claims(swap)
    world.cluster.lock = _NoLock()  # type: ignore[assignment]
    state = random.getstate()
    random.seed(seed)  # tenacity's jitter uses the module-level generator
    try:
        yield
    finally:
        random.setstate(state)
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def _disable_claims(swap: Any) -> None:
    """Every runner takes every intent (the teeth test: the search must notice)."""
    from drctl.control import intents
    from drctl.store import Compare

    def claim(store: Any, keys: Any, intent_id: str, runner_id: str, lease_id: int) -> bool:
        store.put(keys.intent_claim(intent_id), intents.claim_token(runner_id, lease_id), lease=lease_id)
        return True

    def claim_guard(keys: Any, intent_id: str, runner_id: str, lease_id: int) -> Any:
        return Compare.absent(keys.prefix + "sim/no-claim-guard")

    def holds_claim(store: Any, keys: Any, intent_id: str, runner_id: str, lease_id: int) -> bool:
        return True

    swap(intents, "claim", claim)
    swap(intents, "claim_guard", claim_guard)
    swap(intents, "holds_claim", holds_claim)


# ====================================================================== agent


class HardwareProbe:
    """The host's hardware health as the scenario sets it (the lab's EDAC counters)."""

    def __init__(self, world: World, host: str) -> None:
        from drctl.health.probes import ProbeSpec

        self.spec = ProbeSpec("command", "hardware", 1.0, 1.0, None, None, {})
        self._world, self._host = world, host

    def sample(self, now: float) -> Any:
        from drctl.health.grading import Grade, Sample

        grade = Grade(self._world.hardware[self._host])
        return Sample("hardware", grade, None, None, f"hardware {grade.value} (simulated)", now)


def start_agent(world: World, keys: Any, host: str, witnesses: int = 2) -> Process:
    from drctl.config.settings import AgentConfig
    from drctl.health.agent import Agent
    from drctl.health.probes import ProbeSpec, build

    sched = world.sched
    proc = sched.new_process(f"agent@{host}", host, "agent")
    connect = world.connect_for(proc)
    uri = world.cluster.uri(host)
    libvirt_spec = ProbeSpec("libvirt", "libvirt", 1.0, 1.0, None, None, {"uri": ""})
    probes = [build(libvirt_spec, connect, uri), HardwareProbe(world, host)]
    cfg = AgentConfig(host=host, libvirt_uri=uri, witnesses=witnesses, probes=(libvirt_spec,),
                      labels={"rack": f"rack-{host}"})
    agent = Agent(cfg, world.store_for(proc), keys, connect, NodeClock(world, host), probes=probes,
                  background=False)
    stop = SimEvent(sched)
    proc.data.update(agent=agent, stop=stop)
    sched.spawn(proc, "main", lambda: agent.run(stop))  # type: ignore[arg-type]
    return proc


# ====================================================================== controller replica


def start_replica(world: World, keys: Any, policy: Any, name: str, settings: dict[str, Any] | None = None,
                  guard_writes: bool = True) -> Process:
    """One controller replica, wired as drctl.control.service.run wires it: one shared
    view (refreshed by the loop each tick, by the view thread while it does not lead), the
    runner reading host URIs and states from it."""
    from drctl.config.controller import ControllerConfig
    from drctl.control import service
    from drctl.control.loop import ControllerLoop
    from drctl.control.tick import Settings
    from drctl.control.view import SharedView, configured_quorum
    from drctl.runner.executor import Runner, RunnerConfig

    sched = world.sched
    cc = ControllerConfig(name=name)
    opts = settings or {}
    proc = sched.new_process(name, name, "loop")
    store = world.store_for(proc)
    connect = world.connect_for(proc)
    quorum = opts.get("witness_quorum") or configured_quorum(cc.witness_quorum, policy)
    clock = NodeClock(world, name)
    shared = SharedView(store, keys, quorum, clock=clock)
    runner = Runner(store, keys, shared.uris, lambda uri: connect(uri, 15), clock,
                    RunnerConfig(runner_id=name, limits=policy.limits, lease_ttl_s=cc.runner_lease_ttl_s),
                    host_state=shared.host)
    runner._pool = SimExecutor(sched, "exec")  # type: ignore[assignment]
    loop = ControllerLoop(store, keys, policy, name, fence_agents={FENCE_AGENT: SimFenceAgent(world, FENCE_AGENT, proc)},
                          clock=clock, lease_ttl=cc.lease_ttl_s, tick_interval_s=cc.tick_interval_s,
                          quorum=quorum, shared=shared, settings=Settings(stale_after_s=cc.stale_after_s,
                                                                          reopen_after_s=cc.reopen_after_s))
    if not guard_writes:
        _unguard(loop)
    stop = SimEvent(sched)
    proc.data.update(loop=loop, runner=runner, shared=shared, stop=stop)

    def main() -> None:
        shared.refresh(clock.now())
        sched.spawn(proc, "cluster-view", lambda: service._refresh_forever(shared, stop), role="view")  # type: ignore[arg-type]
        sched.spawn(proc, "runner", lambda: service._run_runner(runner, stop), role="runner")  # type: ignore[arg-type]
        loop.run(stop)  # type: ignore[arg-type]

    sched.spawn(proc, "loop", main, role="loop")
    return proc


def without_fencing(policy: Any) -> Any:
    """The policy with the fence dropped from the evidence a restart needs (teeth test only)."""
    from dataclasses import replace

    from drctl.policy.types import EvidenceKind

    ev = policy.evidence
    return replace(policy, evidence=replace(ev, required=ev.required - {EvidenceKind.FENCE}))


def _unguard(loop: Any) -> None:
    """Switch off the lease guard on the leader's writes (the search's teeth test only):
    every leadership this loop wins guards nothing, so each guarded write (incidents,
    intents, the fence's record) lands whoever leads."""
    from drctl.control.election import Leadership

    class Unguarded(Leadership):
        def guard(self) -> list[Any]:
            return []

    won = loop.election.wait_for_leadership

    def wait_for_leadership(stop: Any, *args: Any, **kw: Any) -> Any:
        lead = won(stop, *args, **kw)
        return None if lead is None else Unguarded(lead.key, lead.term)

    loop.election.wait_for_leadership = wait_for_leadership


def leader_key_of(proc: Process) -> str:
    loop = proc.data.get("loop")
    return str(getattr(loop.election, "_key", "")) if loop is not None else ""


# ====================================================================== operator


def operator_drain(world: World, keys: Any, proc: Process, host: str, reason: str = "planned maintenance") -> None:
    """What `drctl drain HOST --no-wait` writes."""
    request = {"host": host, "reason": reason, "requested_by": "operator", "ts": world.sched.now()}
    world.store_for(proc).put(keys.maintenance(host), json.dumps(request).encode())


def operator_undrain(world: World, keys: Any, proc: Process, host: str) -> None:
    world.store_for(proc).delete(keys.maintenance(host))


def stop_process(world: World, proc: Process) -> None:
    world.sched.kill(proc)
