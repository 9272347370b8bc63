"""The simulated world behind drctl's environment seam: etcd, hypervisors, fence agents,
the network between them, and the faults a schedule switches on.

- etcd is one `MemoryStore` (revisions, leases, CAS transactions, watches, outages);
  every simulated process talks to it through its own `StoreClient`, which adds a round
  trip (a point where other actors run), drops everything a dead process attempts, and
  times out while the network cuts that process from etcd. Leases are kept alive by a
  keepalive thread *of the process* (as etcd's client library does), so a paused or cut
  process loses its lease and a live one keeps it.
- hypervisors are `SimCluster` hosts reached through `WorldHypervisor`, one connection
  per calling process: a cut answers nothing (timeout), a hung libvirtd blocks the call
  until it is continued or the call times out, a dead one refuses. Migrations run on the
  source's libvirtd (peer to peer: they go on when the caller dies), take memory /
  bandwidth seconds, expose job statistics, converge or not, and can fail, hang at the
  hand-over or complete while the caller sees an error.
- fence agents power hosts off (or fail, or take their time) and record the proof.

Everything that happens in the world that an invariant needs (a VM started, a fence
confirmed, a write accepted) is reported to `World.observer`.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from drctl.fencing.agents import FenceResult, PowerState
from drctl.hypervisor import DomainState, JobStats, MigrationParams, StateReason
from drctl.hypervisor.sim import SimCluster, SimDomain, SimHost, SimHypervisor
from drctl.model.errors import (
    HostUnreachable,
    HypervisorTimeout,
    InsufficientResources,
    MigrationAborted,
    MigrationFailed,
    NoSuchDomain,
    StoreUnavailable,
)
from drctl.sim.sched import Process, Scheduler, SimEvent, SimKilled
from drctl.store import KV, Compare, Op, Put
from drctl.store.memory import MemoryLease, MemoryStore

ETCD = "etcd"
STORE_RTT_S = 0.001
READ_COST_PER_KEY_S = 20e-6  # a range read's transfer and decoding: a big read takes time
STORE_TIMEOUT_S = 2.0  # a call to an etcd the network cut us from fails after this
LIBVIRT_RTT_S = 0.001
LIBVIRT_CALL_TIMEOUT_S = 5.0  # libvirt's keepalive gives up on a hung daemon after this
MIGRATION_POLL_S = 0.5


def libvirt(host: str) -> str:
    return f"libvirt:{host}"


class Network:
    """Which endpoints cannot talk. An endpoint is a node name (every process on it) or
    `libvirt:<host>`; `etcd` is the store."""

    def __init__(self) -> None:
        self.cuts: dict[frozenset[str], int] = {}

    def cut(self, a: str, b: str) -> None:
        k = frozenset((a, b))
        self.cuts[k] = self.cuts.get(k, 0) + 1

    def heal(self, a: str, b: str) -> None:
        k = frozenset((a, b))
        if self.cuts.get(k, 0) > 1:
            self.cuts[k] -= 1
        else:
            self.cuts.pop(k, None)

    def blocked(self, node: str, target: str) -> bool:
        """Is `node` (a machine) cut from `target` (etcd or libvirt:<host>)?"""
        if not self.cuts:
            return False
        if target.startswith("libvirt:"):
            host = target.removeprefix("libvirt:")
            if host == node:
                return False  # a local unix socket: no network involved
            return (frozenset((node, target)) in self.cuts or frozenset((node, host)) in self.cuts
                    or frozenset((f"libvirt:{node}", target)) in self.cuts)
        return frozenset((node, target)) in self.cuts


@dataclass
class Node:
    """One machine's power and daemons."""

    name: str
    powered: bool = True
    frozen: bool = False  # the whole machine stopped (SIGSTOP of everything, a hung kernel)
    libvirtd: str = "up"  # up | hung | dead
    thaw: SimEvent | None = None
    libvirtd_proc: Process | None = None


@dataclass
class Job:
    """A migration running on the source's libvirtd."""

    vm: str
    src: str
    dst: str
    memory_mib: int
    bandwidth_mibs: float
    started: float
    floor: float  # fraction of memory that stays dirty each pass (0: converges)
    fault: str = ""
    processed_mib: float = 0.0
    remaining_mib: float = 0.0
    iteration: int = 1
    downtime_ms: int = 300
    postcopy: bool = False
    aborted: bool = False
    handing_over: bool = False
    error: BaseException | None = None
    done: SimEvent | None = None


@dataclass
class VmFacts:
    """What the world remembers of a VM for the invariants."""

    last_host: str = ""  # where it last ran
    ran_at: dict[str, float] = field(default_factory=dict)  # host -> last time seen running there


class World:
    def __init__(self, sched: Scheduler, seed: int, bandwidth_mibs: float = 1024.0) -> None:
        self.sched = sched
        self.rng = random.Random(seed)
        self.store = MemoryStore(sched)
        self.cluster = SimCluster(sched, bandwidth_mibs)
        self.net = Network()
        self.nodes: dict[str, Node] = {}
        self.jobs: dict[str, Job] = {}  # vm -> its migration
        self.incoming: set[tuple[str, str]] = set()  # (host, vm): an incoming migration's paused copy
        self.orphans: dict[tuple[str, str], str] = {}  # (host, vm) -> "destroy" | "resume" once libvirtd answers
        self.vm_facts: dict[str, VmFacts] = {}
        self.migration_faults: dict[str, str] = {}  # vm -> fail | lie | hang-dest | no-converge
        self.dirty_floor: dict[str, float] = {}
        self.fence_modes: dict[str, tuple[str, float]] = {}  # host -> (ok|fail|slow, seconds)
        self.fenced_at: dict[str, float] = {}
        self.hardware: dict[str, str] = {}  # host -> healthy | degraded | failing (the sim probe)
        self.etcd_down = False
        self.drift: dict[str, float] = {}  # node -> seconds its wall clock is off
        self.observer: Callable[[str, dict[str, Any]], None] = lambda _k, _d: None

    # ------------------------------------------------------------------ building
    def add_host(self, name: str, memory_mib: int = 16384, cpus: int = 8,
                 features: frozenset[str] = frozenset()) -> SimHost:
        host = self.cluster.add_host(name, memory_mib=memory_mib, cpus=cpus, cpu_features=features)
        node = Node(name, thaw=SimEvent(self.sched))
        node.libvirtd_proc = self.sched.new_process(f"libvirtd@{name}", name, "libvirtd")
        self.nodes[name] = node
        self.hardware[name] = "healthy"
        return host

    def add_vm(self, name: str, host: str, memory_mib: int = 1024, requires: tuple[str, ...] = (),
               dirty_floor: float = 0.0) -> None:
        xml = domain_xml(name, memory_mib, requires)
        h = self.cluster.hosts[host]
        h.domains[name] = SimDomain(name, xml, memory_mib, 1, _uuid(name), DomainState.RUNNING)
        self.dirty_floor[name] = dirty_floor
        self._ran(name, host)

    def _ran(self, vm: str, host: str) -> None:
        f = self.vm_facts.setdefault(vm, VmFacts())
        f.last_host = host
        f.ran_at[host] = self.sched.now()

    # ------------------------------------------------------------------ observation
    def copies(self, vm: str) -> list[tuple[str, DomainState]]:
        """Live copies of a VM: running, or paused and not an incoming migration's target."""
        out: list[tuple[str, DomainState]] = []
        for name, h in self.cluster.hosts.items():
            d = h.domains.get(vm)
            if d is None or not self.nodes[name].powered:
                continue
            if d.state is DomainState.RUNNING or (d.state is DomainState.PAUSED and (name, vm) not in self.incoming):
                out.append((name, d.state))
        return out

    def serving(self, vm: str) -> bool:
        return any(st is DomainState.RUNNING and not self.nodes[h].frozen for h, st in self.copies(vm))

    def note_running(self) -> None:
        for name, h in self.cluster.hosts.items():
            if not self.nodes[name].powered:
                continue
            for vm, d in h.domains.items():
                if d.state is DomainState.RUNNING:
                    self._ran(vm, name)

    # ------------------------------------------------------------------ host faults
    def power_off(self, host: str, why: str) -> None:
        node = self.nodes[host]
        if not node.powered:
            return
        node.powered = False
        h = self.cluster.hosts[host]
        h.up = False
        for d in h.domains.values():
            # persistent definitions stay on disk; after the reboot libvirt knows no reason
            d.state, d.reason = DomainState.SHUTOFF, StateReason.UNKNOWN
        for key in [k for k in self.incoming if k[0] == host]:
            self.incoming.discard(key)
            h.domains.pop(key[1], None)
        for job in list(self.jobs.values()):
            if host in (job.src, job.dst):
                job.error = HostUnreachable(f"migration {job.vm} {job.src}->{job.dst}: {host} went away")
            if job.src == host:
                # the source's libvirtd died with the job: the destination's libvirtd drops
                # the half-received guest once its keepalive gives up on the source
                self.sched.call_at(self.sched.now() + SOURCE_KEEPALIVE_S, lambda job=job: self._source_gone(job))
        self.observer("power_off", {"host": host, "why": why})
        for p in self.sched.processes:
            if p.node == host and not p.dead:
                self.sched.kill(p)

    def power_on(self, host: str) -> Process:
        node = self.nodes[host]
        node.powered, node.frozen, node.libvirtd = True, False, "up"
        h = self.cluster.hosts[host]
        h.up, h.hung = True, False
        node.libvirtd_proc = self.sched.new_process(f"libvirtd@{host}", host, "libvirtd")
        for vm, d in sorted(h.domains.items()):
            if d.autostart and d.state is DomainState.SHUTOFF:
                d.state, d.reason = DomainState.RUNNING, StateReason.NONE  # libvirt autostart at boot
                self.observer("started", {"vm": vm, "host": host, "by": "autostart"})
                self._ran(vm, host)
        return node.libvirtd_proc

    def _source_gone(self, job: "Job") -> None:
        if self.jobs.get(job.vm) is job:
            del self.jobs[job.vm]
        if (job.dst, job.vm) in self.incoming:
            dnode = self.nodes[job.dst]
            if dnode.powered and not dnode.frozen and dnode.libvirtd == "up":
                self.incoming.discard((job.dst, job.vm))
                self.cluster.hosts[job.dst].domains.pop(job.vm, None)
            else:
                self.orphans[(job.dst, job.vm)] = "destroy"
        if job.done is not None:
            job.done.set()

    def freeze(self, host: str, frozen: bool) -> None:
        node = self.nodes[host]
        node.frozen = frozen
        self._libvirtd_state(host)
        for p in self.sched.processes:
            if p.node == host and not p.dead:
                (self.sched.pause if frozen else self.sched.resume)(p)

    def libvirtd(self, host: str, state: str) -> None:
        """up | hung (SIGSTOP) | dead (killed; guests keep running)."""
        self.nodes[host].libvirtd = state
        self._libvirtd_state(host)

    def _libvirtd_state(self, host: str) -> None:
        node, h = self.nodes[host], self.cluster.hosts[host]
        h.hung = node.frozen or node.libvirtd == "hung"
        h.up = node.powered and node.libvirtd != "dead"
        if node.libvirtd_proc is not None:
            (self.sched.pause if h.hung else self.sched.resume)(node.libvirtd_proc)
        if not h.hung and h.up:
            self._settle_orphans(host)
            assert node.thaw is not None
            node.thaw.set()
            node.thaw = SimEvent(self.sched)

    def _settle_orphans(self, host: str) -> None:
        """An answering libvirtd finishes what a hung one left: an incoming copy whose
        migration was cancelled is destroyed, one that got the whole guest resumes."""
        h = self.cluster.hosts[host]
        for (hn, vm), what in sorted(self.orphans.items()):
            if hn != host:
                continue
            del self.orphans[(hn, vm)]
            self.incoming.discard((hn, vm))
            d = h.domains.get(vm)
            if d is None:
                continue
            if what == "resume":
                d.state = DomainState.RUNNING
                self._ran(vm, host)
                self.observer("started", {"vm": vm, "host": host, "by": "libvirt resumed an incoming copy"})
            else:
                del h.domains[vm]

    def crash_vm(self, vm: str) -> None:
        """The guest's QEMU dies (SIGKILL, OOM killer) on a live host: libvirt shows it shut
        off, reason crashed."""
        for name, h in self.cluster.hosts.items():
            d = h.domains.get(vm)
            if d is not None and d.state is DomainState.RUNNING and (name, vm) not in self.incoming:
                d.state, d.reason = DomainState.SHUTOFF, StateReason.CRASHED

    def set_autostart(self, vm: str) -> None:
        """libvirt autostart on the VM's current definition(s)."""
        for h in self.cluster.hosts.values():
            d = h.domains.get(vm)
            if d is not None:
                d.autostart = True

    # ------------------------------------------------------------------ etcd
    def etcd(self, up: bool) -> None:
        self.etcd_down = not up
        self.store.fail(not up)

    # ------------------------------------------------------------------ connections
    def connect_for(self, proc: Process) -> Callable[..., "WorldHypervisor"]:
        def connect(uri: str, timeout_s: float = LIBVIRT_CALL_TIMEOUT_S) -> WorldHypervisor:
            return WorldHypervisor(self, proc, uri)
        return connect

    def store_for(self, proc: Process) -> "StoreClient":
        return StoreClient(self, proc)


class NodeClock:
    """A machine's clock: the simulated time, its wall clock off by the node's drift
    (monotonic time and waits are unaffected, as with NTP steps on a real host)."""

    def __init__(self, world: World, node: str) -> None:
        self._w, self._node = world, node

    def now(self) -> float:
        return self._w.sched.now() + self._w.drift.get(self._node, 0.0)

    def monotonic(self) -> float:
        return self._w.sched.monotonic()

    def sleep(self, seconds: float) -> None:
        self._w.sched.sleep(seconds)

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        self._w.sched.call_at(when - self._w.drift.get(self._node, 0.0), fn)


def domain_xml(name: str, memory_mib: int, requires: tuple[str, ...] = ()) -> str:
    cpu = ("<cpu mode='custom'>" + "".join(f"<feature policy='require' name='{f}'/>" for f in requires)
           + "</cpu>") if requires else ""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")


def _uuid(name: str) -> str:
    h = hashlib.sha256(name.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# ====================================================================== etcd clients


class StoreClient:
    """One process's connection to the simulated etcd (the Store seam)."""

    def __init__(self, world: World, proc: Process) -> None:
        self.world, self.proc, self.inner = world, proc, world.store
        self.clock = world.sched

    def _enter(self, write: bool = False) -> None:
        """Every call: a dead process's call never lands; a write first yields one round
        trip (other actors run between a read and the write that depends on it); a cut
        process waits out the client's deadline."""
        sched, p = self.world.sched, self.proc
        if p.dead:
            raise SimKilled()
        if write and sched.actor() is not None:
            sched.sleep(STORE_RTT_S)
        if self.world.net.blocked(p.node, ETCD):
            if sched.actor() is not None:
                sched.sleep(STORE_TIMEOUT_S)
            if p.dead:
                raise SimKilled()
            raise StoreUnavailable(f"etcd unavailable from {p.node}: deadline exceeded (simulated partition)")

    def _wrote(self, what: str, keys: list[str]) -> None:
        self.world.observer("store_write", {"proc": self.proc, "what": what, "keys": keys})

    def get(self, key: str) -> KV | None:
        self._enter()
        return self.inner.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        self._enter()
        kvs, rev = self.inner.get_prefix(prefix)
        sched = self.world.sched
        if sched.actor() is not None:
            # what was read is on its way for a while: others act meanwhile, and a reader
            # of a big cluster cannot re-read it a thousand times a simulated second
            sched.sleep(STORE_RTT_S + READ_COST_PER_KEY_S * len(kvs))
            if self.proc.dead:
                raise SimKilled()
        return kvs, rev

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._enter(write=True)
        rev = self.inner.put(key, value, lease)
        self._wrote("put", [key])
        return rev

    def delete(self, key: str) -> bool:
        self._enter(write=True)
        existed = self.inner.delete(key)
        if existed:
            self._wrote("delete", [key])
        return existed

    def delete_prefix(self, prefix: str) -> int:
        self._enter(write=True)
        n = self.inner.delete_prefix(prefix)
        if n:
            self._wrote("delete", [prefix])
        return n

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        self._enter(write=True)
        held = self.inner.txn(compares, success, failure)
        ops = success if held else (failure or [])
        if ops:
            self._wrote("txn", [op.key for op in ops])
        return held

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare.absent(key)], [Put(key, value, lease)])

    def cas(self, key: str, expected_mod_revision: int, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare.mod_at(key, expected_mod_revision)], [Put(key, value, lease)])

    def grant_lease(self, ttl: int, keepalive: bool = True, on_lost: Callable[[], None] | None = None) -> "ClientLease":
        self._enter(write=True)
        lease = ClientLease(self, ttl, on_lost)
        if keepalive:
            lease.start_keepalive()
        return lease

    def watch_prefix(self, prefix: str, callback: Callable[..., None], start_revision: int | None = None,
                     on_error: Callable[[Exception], None] | None = None) -> Any:
        self._enter()
        proc = self.proc

        def deliver(ev: Any) -> None:
            if not proc.dead:
                callback(ev)
        return self.inner.watch_prefix(prefix, deliver, start_revision, on_error)

    def revision(self) -> int:
        self._enter()
        return self.inner.revision()

    def healthy(self) -> bool:
        return not self.world.etcd_down and not self.world.net.blocked(self.proc.node, ETCD)

    def close(self) -> None:
        pass


class ClientLease:
    """A lease kept alive by a keepalive thread of the owning process."""

    def __init__(self, client: StoreClient, ttl: int, on_lost: Callable[[], None] | None) -> None:
        self._client = client
        self._inner: MemoryLease = client.inner.grant_lease(ttl, keepalive=False, on_lost=on_lost)
        self.id, self.ttl = self._inner.id, self._inner.ttl
        self._on_lost = on_lost
        self._keepalive = False
        self._last_ok = client.clock.now()
        self._lost = False

    @property
    def alive(self) -> bool:
        return not self._lost and self._inner.alive

    def refresh(self) -> int:
        self._client._enter(write=True)
        left = self._inner.refresh()
        if left:
            self._last_ok = self._client.clock.now()
        return left

    def revoke(self) -> None:
        self._keepalive = False
        self._client._enter(write=True)
        self._inner.revoke()

    def start_keepalive(self) -> None:
        self._keepalive = True
        sched = self._client.world.sched
        sched.spawn(self._client.proc, f"keepalive:{self.id:x}", self._run)

    def stop_keepalive(self) -> None:
        self._keepalive = False

    def _run(self) -> None:
        sched = self._client.world.sched
        while self._keepalive and self.alive:
            sched.sleep(self.ttl / 3)
            if not self._keepalive or not self.alive:
                return
            try:
                self.refresh()
            except StoreUnavailable as e:
                if sched.now() - self._last_ok >= self.ttl:
                    self._lost = True
                    self._keepalive = False
                    from drctl.store._shared import report_lease_lost

                    report_lease_lost(self.id, self.ttl, f"no successful refresh for {self.ttl}s: {e}",
                                      self._on_lost)
                    return


# ====================================================================== hypervisors


class WorldHypervisor(SimHypervisor):
    """One process's connection to one simulated libvirtd."""

    def __init__(self, world: World, caller: Process, uri: str) -> None:
        self.world, self.caller = world, caller
        super().__init__(world.cluster, uri)

    def _check(self) -> SimHost:
        w, sched = self.world, self.world.sched
        if self.caller.dead:
            raise SimKilled()
        node = w.nodes.get(self.name)
        if node is None:
            raise HostUnreachable(f"{self.uri}: unknown host")
        if not node.powered or w.net.blocked(self.caller.node, libvirt(self.name)):
            if sched.actor() is not None:
                sched.sleep(LIBVIRT_CALL_TIMEOUT_S)
            if self.caller.dead:
                raise SimKilled()
            raise HypervisorTimeout(f"{self.uri}: no answer (simulated: {'powered off' if not node.powered else 'network cut'})")
        if node.libvirtd == "dead":
            raise HostUnreachable(f"libvirt at {self.uri} unreachable: connection refused (simulated)")
        if node.frozen or node.libvirtd == "hung":
            assert node.thaw is not None
            if sched.actor() is None or not node.thaw.wait(LIBVIRT_CALL_TIMEOUT_S):
                raise HypervisorTimeout(f"{self.uri}: no answer within {LIBVIRT_CALL_TIMEOUT_S:g}s (hung libvirtd)")
            return self._check()
        return self._host()

    def compare_cpu(self, cpu_xml: str) -> bool:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(cpu_xml)
        except ET.ParseError:
            return False
        needed = {f.get("name", "") for f in root.iter("feature") if f.get("policy", "require") == "require"}
        return needed <= self._check().cpu_features

    def _yield(self) -> None:
        """Changes take a round trip: other actors run before one lands."""
        sched = self.world.sched
        if sched.actor() is not None:
            sched.sleep(LIBVIRT_RTT_S)

    def _mutating(self, what: str, vm: str) -> None:
        self.world.observer("libvirt_write", {"proc": self.caller, "what": what, "vm": vm, "host": self.name})

    def define(self, xml: str) -> Any:
        self._yield()
        info = super().define(xml)
        d = self._host().domains[info.name]
        if d.uuid != _uuid(info.name):
            self._host().domains[info.name] = replace(d, uuid=_uuid(info.name))
            info = self._info(self._host().domains[info.name])
        self._mutating("define", info.name)
        return info

    def start(self, name: str) -> None:
        self._yield()
        super().start(name)
        self._mutating("start", name)
        self.world.observer("started", {"vm": name, "host": self.name, "by": self.caller.name})
        self.world._ran(name, self.name)

    def destroy(self, name: str) -> None:
        self._yield()
        super().destroy(name)
        self._mutating("destroy", name)

    def set_autostart(self, name: str, on: bool) -> None:
        self._yield()
        super().set_autostart(name, on)
        self._mutating("set_autostart", name)

    def suspend(self, name: str) -> None:
        self._yield()
        super().suspend(name)
        self._mutating("suspend", name)

    def resume(self, name: str) -> None:
        """A paused copy runs again: for I5 as much a start as `start` (the runner resumes
        a source it held paused only once the destination's copy is gone)."""
        self._yield()
        paused = self._dom(name).state is DomainState.PAUSED
        super().resume(name)
        self._mutating("resume", name)
        if paused and self._dom(name).state is DomainState.RUNNING:
            self.world.observer("started", {"vm": name, "host": self.name, "by": self.caller.name})
            self.world._ran(name, self.name)

    def undefine(self, name: str) -> None:
        self._yield()
        super().undefine(name)
        self.world.incoming.discard((self.name, name))
        self._mutating("undefine", name)

    def list_domains(self) -> list[Any]:
        h = self._check()
        return [self._info(d) for d in sorted(h.domains.values(), key=lambda d: d.name)
                if (self.name, d.name) not in self.world.incoming]

    # ---------------------------------------------------------------- migration
    def migrate(self, name: str, dest_uri: str, params: MigrationParams) -> None:
        w = self.world
        self._yield()
        d = self._dom(name)
        dst = dest_uri.removeprefix("sim://")
        what = f"migrate {name} {self.uri} -> {dest_uri}"
        if d.state is not DomainState.RUNNING:
            raise MigrationFailed(f"{what}: domain is not running")
        if name in w.jobs:
            raise MigrationFailed(f"{what}: another migration job is active")
        dnode = w.nodes.get(dst)
        if dnode is None or not dnode.powered or w.net.blocked(self.name, libvirt(dst)):
            raise HostUnreachable(f"{what}: unable to connect to destination (simulated)")
        if dnode.libvirtd == "dead":
            raise HostUnreachable(f"{what}: destination refused the connection (simulated)")
        if dnode.frozen or dnode.libvirtd == "hung":
            raise HypervisorTimeout(f"{what}: destination does not answer (simulated)")
        dest = w.cluster.hosts[dst]
        if dest.used_mib() + d.memory_mib > dest.memory_mib:
            raise InsufficientResources(f"{what}: cannot set up guest memory (simulated)")
        if name in dest.domains and dest.domains[name].state is not DomainState.SHUTOFF:
            raise MigrationFailed(f"{what}: domain already active on the destination")
        fault = w.migration_faults.pop(name, "")
        floor = w.dirty_floor.get(name, 0.0) if fault != "no-converge" else 0.9
        if params.auto_converge:
            floor *= 0.3  # QEMU throttles the guest's vCPUs until the copy catches up
        job = Job(name, self.name, dst, d.memory_mib, float(params.bandwidth_mibs or w.cluster.bandwidth_mibs),
                  w.sched.now(), floor, fault, remaining_mib=float(d.memory_mib),
                  downtime_ms=params.max_downtime_ms or 300, done=SimEvent(w.sched))
        w.jobs[name] = job
        # like libvirt's PERSIST_DEST: the destination's definition starts without autostart
        dest.domains[name] = replace(d, state=DomainState.PAUSED, autostart=False)
        w.incoming.add((dst, name))
        self._mutating("migrate", name)
        src_proc = w.nodes[self.name].libvirtd_proc
        assert src_proc is not None
        w.sched.spawn(src_proc, f"migration:{name}", lambda: _run_job(w, job))
        assert job.done is not None
        job.done.wait()  # like virDomainMigrate: blocks until the source's job ends
        if job.error is not None:
            raise job.error

    def job_stats(self, name: str) -> JobStats:
        self._dom(name)
        job = self.world.jobs.get(name)
        if job is None or job.src != self.name:
            return JobStats(active=False)
        mib = 1 << 20
        return JobStats(active=True, elapsed_ms=int((self.world.sched.now() - job.started) * 1000),
                        data_total=int(job.memory_mib * mib), data_processed=int(job.processed_mib * mib),
                        data_remaining=int(job.remaining_mib * mib), memory_total=int(job.memory_mib * mib),
                        memory_processed=int(job.processed_mib * mib), memory_remaining=int(job.remaining_mib * mib),
                        memory_dirty_rate=int(job.floor * job.bandwidth_mibs * 256), memory_iteration=job.iteration,
                        memory_bps=int(job.bandwidth_mibs * mib))

    def abort_job(self, name: str) -> None:
        self._dom(name)
        job = self.world.jobs.get(name)
        if job is not None and job.src == self.name:
            job.aborted = True

    def start_postcopy(self, name: str) -> None:
        self._dom(name)
        job = self.world.jobs.get(name)
        if job is not None:
            job.postcopy = True

    def set_max_downtime(self, name: str, ms: int) -> None:
        self._dom(name)
        job = self.world.jobs.get(name)
        if job is not None:
            job.downtime_ms = ms


def _run_job(w: World, job: Job) -> None:
    """The source libvirtd's side of a peer-to-peer live migration."""
    sched = w.sched
    src, dst = w.cluster.hosts[job.src], w.cluster.hosts[job.dst]
    assert job.done is not None
    try:
        while True:
            sched.sleep(MIGRATION_POLL_S)
            dnode = w.nodes[job.dst]
            dest_answers = dnode.powered and not dnode.frozen and dnode.libvirtd == "up" and not w.net.blocked(
                job.src, libvirt(job.dst))
            if job.error is not None:
                _drop_incoming(w, job, dest_answers)
                return
            if job.fault == "fail" and job.processed_mib >= job.memory_mib * 0.3:
                job.error = MigrationFailed(f"migrate {job.vm}: simulated failure mid-copy")
                _drop_incoming(w, job, dest_answers)
                return
            d = src.domains.get(job.vm)
            if d is None:
                job.error = MigrationAborted(f"migrate {job.vm}: domain vanished from the source")
                _drop_incoming(w, job, dest_answers)
                return
            if job.aborted:
                job.error = MigrationAborted(f"migrate {job.vm}: operation aborted by client")
                if job.handing_over:
                    # the source resumes; a destination that already holds the whole guest
                    # resumes it as soon as its libvirtd answers again (what the lab saw)
                    d.state = DomainState.RUNNING
                    if dest_answers:
                        _drop_incoming(w, job, True)
                    else:
                        w.orphans[(job.dst, job.vm)] = "resume"
                else:
                    _drop_incoming(w, job, dest_answers)
                return
            if not dest_answers:
                continue  # no progress: the stream is stuck
            if job.handing_over or _copied(job):
                job.handing_over = True
                d.state = DomainState.PAUSED
                if job.fault == "hang-dest":
                    # the lab's SIGSTOP of the destination's libvirtd as the copy ends, SIGCONT 40 s later
                    job.fault = ""
                    w.libvirtd(job.dst, "hung")
                    w.observer("fault", {"what": f"libvirtd on {job.dst} hangs at the hand-over of {job.vm} for 40s"})
                    sched.call_at(sched.now() + HANG_DEST_S, lambda: _cont(w, job.dst))
                    continue
                # hand-over: the destination resumes, the source is undefined
                del src.domains[job.vm]
                w.incoming.discard((job.dst, job.vm))
                dst.domains[job.vm] = replace(dst.domains[job.vm], state=DomainState.RUNNING, last_job=JobStats(
                    active=False, elapsed_ms=int((sched.now() - job.started) * 1000), downtime_ms=job.downtime_ms,
                    data_total=job.memory_mib << 20, data_processed=int(job.processed_mib) << 20,
                    memory_total=job.memory_mib << 20, memory_processed=int(job.processed_mib) << 20,
                    memory_iteration=job.iteration))
                w._ran(job.vm, job.dst)
                w.observer("migrated", {"vm": job.vm, "src": job.src, "dst": job.dst})
                if job.fault == "lie":
                    job.error = MigrationFailed(f"migrate {job.vm}: connection reset while confirming (simulated)")
                return
    finally:
        w.jobs.pop(job.vm, None)
        job.done.set()


HANG_DEST_S = 40.0
SOURCE_KEEPALIVE_S = 30.0  # libvirt keepalive: 5 s x 5 missed, plus the connection's own timeout


def _cont(w: World, host: str) -> None:
    if w.nodes[host].libvirtd == "hung":
        w.libvirtd(host, "up")
        w.observer("fault", {"what": f"libvirtd on {host} continues"})


def _copied(job: Job) -> bool:
    """One poll's worth of copying; True when what is left fits in the allowed downtime."""
    step = job.bandwidth_mibs * MIGRATION_POLL_S
    job.processed_mib += step
    if job.postcopy:
        job.remaining_mib = max(0.0, job.remaining_mib - step)
        return job.remaining_mib <= 0
    if job.remaining_mib - step <= 0 or job.processed_mib >= job.memory_mib * job.iteration:
        job.iteration += 1
        job.remaining_mib = job.memory_mib * job.floor + job.memory_mib * 0.02
    else:
        job.remaining_mib -= step
    return job.remaining_mib <= job.bandwidth_mibs * job.downtime_ms / 1000


def _drop_incoming(w: World, job: Job, dest_answers: bool) -> None:
    if (job.dst, job.vm) not in w.incoming:
        return
    if dest_answers:
        w.incoming.discard((job.dst, job.vm))
        w.cluster.hosts[job.dst].domains.pop(job.vm, None)
    elif w.nodes[job.dst].powered:
        w.orphans[(job.dst, job.vm)] = "destroy"


# ====================================================================== fencing


class SimFenceAgent:
    """A fence agent (IPMI-like): `off` powers the host off and proves it with `status`."""

    def __init__(self, world: World, name: str, caller: Process) -> None:
        self.world, self.name, self.caller = world, name, caller

    def off(self, host: str) -> FenceResult:
        w = self.world
        mode, seconds = w.fence_modes.get(host, ("ok", 1.0))
        w.observer("fence", {"proc": self.caller, "host": host})  # the request leaves now
        w.sched.sleep(seconds)
        if self.caller.dead:
            raise SimKilled()
        if mode == "fail":
            return FenceResult(host, self.name, False, f"fence_sim off {host}: BMC did not answer (simulated)")
        w.power_off(host, f"fenced by {self.caller.name}")
        w.fenced_at[host] = w.sched.now()
        return FenceResult(host, self.name, True, f"fence_sim: {host} is off")

    def status(self, host: str) -> PowerState:
        """The BMC's power state. "off" is a proof as good as a fence of our own (a new
        leader resuming a fence asks status first, issue 12 #10): it counts for I5."""
        w = self.world
        node = w.nodes.get(host)
        if node is None or w.fence_modes.get(host, ("ok", 0.0))[0] == "fail":
            return PowerState.UNKNOWN  # a BMC that does not answer `off` does not answer `status`
        if node.powered:
            return PowerState.ON
        w.fenced_at[host] = w.sched.now()
        return PowerState.OFF
