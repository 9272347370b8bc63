"""One simulated run: a cluster, a policy, a timeline of faults and operator commands, a
seed. Produces the decision log (every audit event, in order, with simulated time) and the
invariant violations found after every step."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from drctl.audit import writer as audit
from drctl.policy import Policy
from drctl.sim import daemons
from drctl.sim.invariants import Checker, Violation
from drctl.sim.sched import Process, Scheduler
from drctl.sim.world import ETCD, World, libvirt
from drctl.store.keys import Keys

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class HostSpec:
    name: str
    memory_mib: int = 16384
    cpus: int = 8
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class VmSpec:
    name: str
    host: str
    memory_mib: int = 1024
    requires: tuple[str, ...] = ()  # CPU features: a VM only some hosts can take
    dirty: float = 0.0  # share of memory dirtied per pass: near 1 never converges


@dataclass(frozen=True)
class Action:
    at: float
    do: str
    args: dict[str, Any] = field(default_factory=dict)
    for_s: float | None = None  # undo after this long (heal, thaw, restart...)
    # "EVENT k=v ...": instead of at a fixed time, `at` seconds after the first audit event
    # that matches (so a fault lands between two given steps whatever their timing)
    after: str = ""

    def describe(self) -> str:
        a = " ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return (f"{self.do} {a}".strip() + (f" for {self.for_s:g}s" if self.for_s is not None else "")
                + (f" after {self.after}" if self.after else ""))

    def matches(self, ev: dict[str, Any]) -> bool:
        name, *pairs = self.after.split()
        return ev.get("event") == name and all(str(ev.get(k)) == v for k, v in (p.split("=", 1) for p in pairs))


@dataclass(frozen=True)
class Spec:
    hosts: tuple[HostSpec, ...]
    vms: tuple[VmSpec, ...]
    policy: Policy
    timeline: tuple[Action, ...] = ()
    controllers: tuple[str, ...] = ("c1", "c2")
    duration_s: float = 180.0
    settle_s: float = 180.0  # I6: after the faults stop, incidents end within this
    recovery_bound_s: float = 180.0  # I2: a VM down longer must be reported to a human
    witnesses: int = 2
    seed: int = 1
    restart_after_s: float | None = 5.0  # a crashed daemon is restarted (systemd); None = never
    bandwidth_mibs: float = 1024.0
    # safety mechanisms switched off on purpose, in the simulator only (the search's teeth
    # test): "fence" (the fencing proof before a restart), "lease-guard" (the leader's
    # writes), "claims" (one runner per intent)
    disabled: tuple[str, ...] = ()


UNDO = {
    "host-kill": "host-return", "host-freeze": "host-thaw", "libvirtd-hang": "libvirtd-cont",
    "libvirtd-kill": "libvirtd-restart", "agent-kill": "agent-start", "controller-kill": "controller-start",
    "controller-freeze": "controller-thaw", "cut": "heal", "partition": "heal-partition", "etcd-down": "etcd-up",
    "degrade": "recover-hardware", "drain": "undrain", "fence-mode": "fence-ok",
}
ACTIONS = sorted(set(UNDO) | set(UNDO.values()) | {"migration-fault", "autostart", "vm-crash", "store-put",
                                                   "clock-drift"})


@dataclass
class Result:
    log: list[str]
    violations: list[Violation]
    steps: int
    sim_seconds: float
    wall_seconds: float
    crashes: int


class Simulation:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.sched = Scheduler(T0)
        self.world = World(self.sched, spec.seed, spec.bandwidth_mibs)
        self.keys = Keys()
        self.log: list[str] = []
        self.procs: dict[str, Process] = {}
        for h in spec.hosts:
            self.world.add_host(h.name, h.memory_mib, h.cpus, frozenset(h.features))
        for v in spec.vms:
            self.world.add_vm(v.name, v.host, v.memory_mib, v.requires, v.dirty)
        self.checker = Checker(self.world, self.keys, [v.name for v in spec.vms], spec.recovery_bound_s, T0)
        self.operator = self.sched.new_process("operator", "operator", "operator")
        self.finished = False
        self.triggers: list[Action] = []
        self.faults_end = 0.0  # simulated seconds at which the last fault applied so far ends

    # ------------------------------------------------------------------ log
    def _t(self) -> str:
        return f"{self.sched.now() - T0:9.3f}"

    def note(self, proc: str, event: str, **fields: Any) -> None:
        self.log.append(f"{self._t()} {proc:<12} {event}{_fields(fields)}")

    def _audit_line(self, ev: dict[str, Any]) -> None:
        actor = self.sched.actor()
        if actor is not None and actor.process.dead:
            return  # a killed process writes nothing, not even its last words
        proc = str(ev.get("proc") or (actor.process.name if actor else "sim"))
        self.checker.audit({**ev, "proc": proc})
        name = str(ev.get("event"))
        for a in [t for t in self.triggers if t.matches(ev)]:
            self.triggers.remove(a)
            self.sched.call_at(self.sched.now() + a.at, lambda a=a: self.apply(a))
        if name in QUIET_EVENTS:
            return
        fields = {k: v for k, v in ev.items() if k not in DROPPED_FIELDS}
        if name == "snapshot.recorded":
            fields = {k: fields[k] for k in ("incident", "term") if k in fields}
        self.log.append(f"{self._t()} {proc:<12} {name}{_fields(fields)}")

    # ------------------------------------------------------------------ processes
    def _start_agent(self, host: str) -> None:
        p = daemons.start_agent(self.world, self.keys, host, self.spec.witnesses)
        p.on_crash = self._crashed
        self.procs[p.name] = p

    def _start_replica(self, name: str) -> None:
        policy = self.spec.policy
        if "fence" in self.spec.disabled:
            policy = daemons.without_fencing(policy)
        p = daemons.start_replica(self.world, self.keys, policy, name, guard_writes="lease-guard" not in self.spec.disabled)
        p.on_crash = self._crashed
        self.procs[name] = p

    def _crashed(self, proc: Process, e: BaseException) -> None:
        self.note(proc.name, "sim.process_crashed", error=f"{type(e).__name__}: {e}"[:200])
        self.sched.kill(proc)
        if self.spec.restart_after_s is None:
            return
        name = proc.name

        def restart() -> None:
            if self.finished or self.procs.get(name) is not proc or not self._node_up(proc.node):
                return  # replaced or its machine is down meanwhile
            self.note(name, "sim.process_restarted")
            if proc.role == "agent":
                self._start_agent(proc.node)
            else:
                self._start_replica(name)
        self.sched.call_at(self.sched.now() + self.spec.restart_after_s, restart)

    def _node_up(self, node: str) -> bool:
        n = self.world.nodes.get(node)
        return n is None or n.powered

    # ------------------------------------------------------------------ faults and commands
    def apply(self, a: Action, undo: bool = False) -> None:
        w, g = self.world, a.args.get
        do = a.do
        self.note("sim", "sim.fault_healed" if undo else "sim.fault_injected", do=do,
                  **{k: v for k, v in sorted(a.args.items())})
        host = str(g("host", ""))
        if do == "host-kill":
            w.power_off(host, "host-kill")
        elif do == "host-return":
            if not w.nodes[host].powered:
                w.power_on(host)
                self._start_agent(host)
        elif do in ("host-freeze", "host-thaw"):
            w.freeze(host, do == "host-freeze")
        elif do == "libvirtd-hang":
            w.libvirtd(host, "hung")
        elif do in ("libvirtd-cont", "libvirtd-restart"):
            w.libvirtd(host, "up")
        elif do == "libvirtd-kill":
            w.libvirtd(host, "dead")
        elif do == "agent-kill":
            p = self.procs.get(f"agent@{host}")
            if p is not None:
                self.sched.kill(p)
        elif do == "agent-start":
            p = self.procs.get(f"agent@{host}")
            if (p is None or p.dead) and w.nodes[host].powered:
                self._start_agent(host)
        elif do == "controller-kill":
            self.sched.kill(self.procs[str(g("name"))])
        elif do == "controller-start":
            if self.procs[str(g("name"))].dead:
                self._start_replica(str(g("name")))
        elif do in ("controller-freeze", "controller-thaw"):
            p = self.procs[str(g("name"))]
            (self.sched.pause if do == "controller-freeze" else self.sched.resume)(p)
        elif do in ("cut", "heal"):
            a_, b_ = _endpoint(str(g("a"))), _endpoint(str(g("b")))
            (w.net.cut if do == "cut" else w.net.heal)(a_, b_)
        elif do in ("partition", "heal-partition"):
            for other in [ETCD, *self.spec.controllers, *(h.name for h in self.spec.hosts if h.name != host)]:
                for x, y in ((host, other), (libvirt(host), other)):
                    (w.net.cut if do == "partition" else w.net.heal)(x, y)
        elif do in ("etcd-down", "etcd-up"):
            w.etcd(do == "etcd-up")
        elif do == "degrade":
            w.hardware[host] = str(g("grade", "degraded"))
        elif do == "recover-hardware":
            w.hardware[host] = "healthy"
        elif do in ("fence-mode", "fence-ok"):
            w.fence_modes[host] = (str(g("mode", "ok")) if do == "fence-mode" else "ok", float(g("seconds", 1.0)))
        elif do == "migration-fault":
            w.migration_faults[str(g("vm"))] = str(g("fault", "fail"))
        elif do == "autostart":
            w.set_autostart(str(g("vm")))
        elif do == "clock-drift":  # a machine's wall clock steps (node: a host or controller name)
            w.drift[str(g("node"))] = float(g("seconds", 0.0))
        elif do == "vm-crash":
            w.crash_vm(str(g("vm")))
        elif do == "store-put":  # an operator (or an older/newer drctl) writes a record as is
            try:
                w.store_for(self.operator).put(self.keys.prefix + str(g("key")), str(g("value")).encode())
            except Exception as e:  # noqa: BLE001
                self.note("operator", "sim.command_failed", do=do, error=str(e)[:160])
        elif do in ("drain", "undrain"):
            try:
                (daemons.operator_drain if do == "drain" else daemons.operator_undrain)(
                    w, self.keys, self.operator, host)
            except Exception as e:  # noqa: BLE001 - the operator sees the error; the run goes on
                self.note("operator", "sim.command_failed", do=do, error=str(e)[:160])
        else:
            raise ValueError(f"unknown action {do!r} (one of: {', '.join(ACTIONS)})")
        w.note_running()
        self.checker.dirty = True
        self.faults_end = max(self.faults_end, self.sched.now() - T0 + (0.0 if undo else a.for_s or 0.0))
        if a.for_s is not None and not undo and do in UNDO:
            back = Action(self.sched.now() - T0 + a.for_s, UNDO[do], a.args)
            self.sched.call_at(T0 + back.at, lambda: self.apply(back, undo=True))

    def faults_stopped(self) -> float:
        """Simulated time (since start) at which the last fault ended (a trigger that never
        fired counts as not stopping the faults before the end)."""
        if self.triggers:
            return self.spec.duration_s
        return self.faults_end

    # ------------------------------------------------------------------ run
    def run(self, stop_on_violation: bool = False) -> Result:
        wall = time.perf_counter()
        saved_sink, saved_cfg = audit._sink, _structlog_config()
        sink = audit.configure("sim", clock=self.sched.now, keep_in_memory=True)
        sink.lines = _Capture(self._audit_line)  # type: ignore[assignment]
        self.world.observer = self._observe
        try:
            with daemons.patched(self.sched, self.world, self.spec.seed, self.spec.disabled):
                for h in self.spec.hosts:
                    self._start_agent(h.name)
                for i, c in enumerate(self.spec.controllers):
                    self.sched.call_at(T0 + 0.1 * (i + 1), lambda c=c: self._start_replica(c))
                for a in self.spec.timeline:
                    if a.after:
                        self.triggers.append(a)
                    else:
                        self.sched.call_at(T0 + a.at, lambda a=a: self.apply(a))
                seen = 0

                def after() -> None:
                    nonlocal seen
                    self.checker.check()
                    if len(self.checker.violations) > seen:
                        for v in self.checker.violations[seen:]:
                            self.note("sim", "sim.violation", invariant=v.invariant, detail=v.detail)
                        seen = len(self.checker.violations)

                self.sched.after_step = after
                end = T0 + self.spec.duration_s
                while self.sched.step(end):
                    if stop_on_violation and self.checker.violations:
                        break
                else:
                    self.sched._t = max(self.sched._t, end)
                    self.checker.at_end(T0 + self.faults_stopped(), self.spec.settle_s)
                    after()
                steps = self.sched.steps
                sim_s = self.sched.now() - T0
                self.finished = True
                self.sched.shutdown()
        finally:
            audit._sink = saved_sink
            _restore_structlog(saved_cfg)
        return Result(self.log, list(self.checker.violations), steps, sim_s, time.perf_counter() - wall,
                      len(self.sched.crashes))

    def _observe(self, kind: str, d: dict[str, Any]) -> None:
        self.checker.observe(kind, d)
        if kind == "fault":
            self.note("sim", "sim.fault_injected", what=d["what"])


QUIET_EVENTS = frozenset({"migration.progressed"})
DROPPED_FIELDS = frozenset({"ts", "component", "level", "prev", "proc", "event", "snapshot", "rules", "limits"})


def _fields(fields: dict[str, Any]) -> str:
    out = []
    for k in sorted(fields):
        v = fields[k]
        if isinstance(v, Enum):  # vocabularies print as the audit file has them (their value)
            v = v.value
        s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
        if isinstance(v, str) and (not v or any(c in v for c in " =\"'")):
            s = json.dumps(v)
        out.append(f"{k}={s}")
    return (" " + " ".join(out)) if out else ""


def _endpoint(name: str) -> str:
    return name


class _Capture(list):  # type: ignore[type-arg]
    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._fn = fn

    def append(self, item: Any) -> None:
        self._fn(item)


def _structlog_config() -> Any:
    import structlog

    return structlog.get_config()


def _restore_structlog(cfg: Any) -> None:
    import structlog

    structlog.configure(**cfg)
