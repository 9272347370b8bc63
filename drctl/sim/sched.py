"""A deterministic scheduler on SimClock: the production daemons' blocking code, run one
step at a time.

drctl's daemons are written as ordinary blocking code (a runner waits for a migration, a
fence agent takes seconds, a loop waits on an event with a timeout). Rather than rewrite
them as callbacks, the simulator gives every thread of every simulated process a real OS
thread but lets exactly one of them run at a time: a baton passes between the scheduler
(the main thread, which pops the next timer off the SimClock heap) and the one actor that
timer resumes. An actor gives the baton back whenever it would block: `clock.sleep`, a
`SimEvent.wait`, a `SimThread.join`. Which actor runs next depends only on simulated time
and timer sequence numbers, so a run is a pure function of its inputs and seed.

Processes group actors: killing one (SIGKILL, power off) makes every actor of it raise
`SimKilled` at its next blocking point and drop every write it attempts; pausing one
(SIGSTOP) defers its actors' wake-ups until it is continued.
"""
from __future__ import annotations

import _thread
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drctl.clock import SimClock

DEADLOCK_WALL_S = 60.0  # an actor that keeps the baton this long (real time) is stuck on a real lock


class SimKilled(BaseException):
    """Raised inside an actor whose process died: unwinds it without running its logic on."""


class SimDeadlock(RuntimeError):
    pass


@dataclass(eq=False)
class Process:
    """One simulated OS process (an agent, a controller replica, a host's libvirtd)."""

    name: str
    node: str  # the machine it runs on (a host name, or the controller's own name)
    role: str = ""
    dead: bool = False
    paused: bool = False
    actors: list["Actor"] = field(default_factory=list)
    deferred: list["Actor"] = field(default_factory=list)
    on_crash: Callable[["Process", BaseException], None] | None = None
    data: dict[str, Any] = field(default_factory=dict)  # glue's handles (loop, runner, ...)


def _held_lock() -> Any:
    """A raw lock, taken: release() lets its owner through once (a cheap binary semaphore)."""
    lock = _thread.allocate_lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class Actor:
    name: str
    process: Process
    role: str
    go: Any = field(default_factory=_held_lock)
    done: bool = False
    token: int = 0
    finished: "SimEvent | None" = None


class Scheduler(SimClock):
    """SimClock whose `sleep` parks the calling actor instead of advancing time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self._back = _held_lock()
        self._tls = threading.local()
        self.current: Actor | None = None
        self.steps = 0
        self.crashes: list[tuple[str, str]] = []
        self.after_step: Callable[[], None] | None = None
        self.processes: list[Process] = []
        self.task_errors: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ actors
    def actor(self) -> Actor | None:
        return getattr(self._tls, "actor", None)

    def spawn(self, process: Process, name: str, fn: Callable[[], None], role: str | None = None,
              delay: float = 0.0) -> Actor:
        parent = self.actor()
        actor = Actor(f"{process.name}/{name}", process, role if role is not None
                      else (parent.role if parent is not None and parent.process is process else process.role))
        actor.finished = SimEvent(self)
        process.actors.append(actor)
        t = threading.Thread(target=self._body, args=(actor, fn), name=actor.name, daemon=True)
        t.start()
        self.call_at(self.now() + delay, self._waker(actor, actor.token))
        return actor

    def _body(self, actor: Actor, fn: Callable[[], None]) -> None:
        actor.go.acquire()
        self._tls.actor = actor
        try:
            import structlog

            structlog.contextvars.bind_contextvars(proc=actor.process.name)
            if not actor.process.dead:
                fn()
        except SimKilled:
            pass
        except BaseException as e:  # noqa: BLE001 - a daemon crashing is a finding, not a simulator error
            if not actor.process.dead:
                self.crashes.append((actor.name, "".join(traceback.format_exception(e))[-2000:]))
                if actor.process.on_crash is not None:
                    actor.process.on_crash(actor.process, e)
        finally:
            actor.done = True
            if actor.finished is not None:
                actor.finished.set()
            self._back.release()

    def _waker(self, actor: Actor, token: int) -> Callable[[], None]:
        def wake() -> None:
            if actor.done or actor.token != token:
                return
            if actor.process.paused and not actor.process.dead:
                actor.process.deferred.append(actor)
                return
            self._switch(actor)
        return wake

    def _switch(self, actor: Actor) -> None:
        prev, self.current = self.current, actor
        actor.go.release()
        if not self._back.acquire(timeout=DEADLOCK_WALL_S):
            raise SimDeadlock(f"actor {actor.name} did not yield within {DEADLOCK_WALL_S}s of real time")
        self.current = prev

    def park(self) -> None:
        """Give the baton back (the caller already arranged its wake-up)."""
        actor = self.actor()
        assert actor is not None, "park() outside an actor"
        self._back.release()
        actor.go.acquire()
        if actor.process.dead:
            raise SimKilled()

    def wake_later(self, actor: Actor, delay: float) -> None:
        self.call_at(self.now() + delay, self._waker(actor, actor.token))

    def sleep(self, seconds: float) -> None:
        actor = self.actor()
        if actor is None:
            raise RuntimeError("clock.sleep outside a simulated process (the scheduler itself must not block)")
        if actor.process.dead:
            raise SimKilled()
        actor.token += 1
        self.call_at(self.now() + max(0.0, seconds), self._waker(actor, actor.token))
        self.park()

    def kill(self, process: Process) -> None:
        """SIGKILL: every actor unwinds at once (SimKilled), nothing it does afterwards counts."""
        process.dead = True
        process.paused = False
        for a in process.actors + process.deferred:
            if not a.done:
                a.token += 1
                self.call_at(self.now(), self._waker(a, a.token))
        process.deferred.clear()

    def pause(self, process: Process) -> None:
        process.paused = True

    def resume(self, process: Process) -> None:
        process.paused = False
        deferred, process.deferred = process.deferred, []
        for a in deferred:
            self.call_at(self.now(), self._waker(a, a.token))

    # ------------------------------------------------------------------ the loop
    def step(self, until: float) -> bool:
        """Fire the next timer due at or before `until`; False when there is none."""
        with self._lock:
            if not self._timers or self._timers[0][0] > until:
                return False
            import heapq

            when, _, fn = heapq.heappop(self._timers)
        self._t = max(self._t, when)
        fn()  # type: ignore[operator]
        self.steps += 1
        if self.after_step is not None:
            self.after_step()
        return True

    def run_until(self, until: float) -> None:
        while self.step(until):
            pass
        self._t = max(self._t, until)

    def new_process(self, name: str, node: str, role: str = "") -> Process:
        p = Process(name, node, role)
        self.processes.append(p)
        return p

    def shutdown(self) -> None:
        """Unwind every actor still alive (end of a run) and drop the remaining timers."""
        self.after_step = None
        for p in self.processes:
            if not p.dead:
                self.kill(p)
        for _ in range(1_000_000):
            if not self.step(float("inf")):
                break
        with self._lock:
            self._timers.clear()


class SimEvent:
    """threading.Event on simulated time: `wait` parks the actor until set or timed out."""

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched
        self._flag = False
        self._waiters: list[tuple[Actor, int]] = []

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set

    def set(self) -> None:
        self._flag = True
        waiters, self._waiters = self._waiters, []
        now = self._sched.now()
        for actor, token in waiters:
            self._sched.call_at(now, self._sched._waker(actor, token))

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        actor = self._sched.actor()
        if actor is None:
            return self._flag  # the scheduler thread never blocks
        if actor.process.dead:
            raise SimKilled()
        actor.token += 1
        entry = (actor, actor.token)
        self._waiters.append(entry)
        if timeout is not None:
            self._sched.call_at(self._sched.now() + max(0.0, timeout), self._sched._waker(actor, actor.token))
        try:
            self._sched.park()
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return self._flag


class SimThread:
    """threading.Thread for code running inside the simulator: a new actor of the caller's
    process (a thread of a dead process never starts)."""

    def __init__(self, sched: Scheduler, group: object = None, target: Callable[..., Any] | None = None,
                 name: str | None = None, args: tuple = (), kwargs: dict | None = None,
                 daemon: bool | None = None) -> None:
        self._sched = sched
        self._target = target
        self._args, self._kwargs = args, kwargs or {}
        self.name = name or "thread"
        self.daemon = daemon
        self._actor: Actor | None = None

    def start(self) -> None:
        parent = self._sched.actor()
        if parent is None:
            raise RuntimeError(f"thread {self.name} started outside a simulated process")
        target, args, kwargs = self._target, self._args, self._kwargs
        self._actor = self._sched.spawn(parent.process, self.name,
                                        (lambda: target(*args, **kwargs)) if target else (lambda: None))

    def join(self, timeout: float | None = None) -> None:
        if self._actor is not None and not self._actor.done and self._actor.finished is not None:
            self._actor.finished.wait(timeout)

    def is_alive(self) -> bool:
        return self._actor is not None and not self._actor.done


class SimThreading:
    """Stands in for the `threading` module inside the production modules the simulator
    runs (see drctl/sim/daemons.py `PATCHED_MODULES`). Locks stay real: the code holds
    them only around non-blocking sections."""

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched
        self.Lock = threading.Lock
        self.RLock = threading.RLock
        self.local = threading.local
        self.current_thread = threading.current_thread
        self.Semaphore = threading.Semaphore

    def Thread(self, *a: Any, **kw: Any) -> SimThread:  # noqa: N802 - the module's name
        return SimThread(self._sched, *a, **kw)

    def Event(self) -> SimEvent:  # noqa: N802
        return SimEvent(self._sched)


class SimFuture:
    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._event: SimEvent | None = None

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Any:
        if not self._done and self._event is not None:
            self._event.wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value


class SimExecutor:
    """concurrent.futures.ThreadPoolExecutor stand-in: each task is an actor."""

    def __init__(self, sched: Scheduler, prefix: str) -> None:
        self._sched = sched
        self._prefix = prefix

    def submit(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> SimFuture:
        fut = SimFuture()
        fut._event = SimEvent(self._sched)

        def run() -> None:
            try:
                fut._value = fn(*args, **kw)
            except SimKilled:
                raise
            except BaseException as e:  # noqa: BLE001 - handed to result(), like the real pool
                fut._error = e
                self._sched.task_errors.append((label, f"{type(e).__name__}: {e}"))
            finally:
                fut._done = True
                assert fut._event is not None
                fut._event.set()

        parent = self._sched.actor()
        assert parent is not None
        label = "-".join(str(a) for a in args)[:40]
        self._sched.spawn(parent.process, f"{self._prefix}:{label}", run)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass
