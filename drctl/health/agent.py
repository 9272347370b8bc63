"""The health watcher daemon (`drctl agent`), one per hypervisor host.

Each tick does what is due and says so in one sentence:
- keep an etcd lease (a background keepalive refreshes it every TTL/3); when it is lost
  (etcd answered TTL 0 after a partition healed, or no refresh worked for a TTL) grant a
  new one and write everything again: that is re-registering;
- run the probes whose interval is up, filter each probe's grade with hysteresis, and
  write the host's grade under `hosts/<host>/health`, bound to the lease;
- witness a few peers: does their libvirtd answer within a deadline, is their health key
  (lease) present; written under `hosts/<peer>/witness/<host>`, bound to our lease. The
  peers are our `witnesses` successors in a ring of all hosts by name (`choose_witnessed`),
  so every host has min(witnesses, hosts - 1) witnesses, and the controller counts them by
  their reports (a report lives with its writer's lease; we delete the ones about peers
  we stopped witnessing);
- publish the inventory and VM definitions (drctl/inventory.py).

Before it witnesses or publishes anything, a starting agent checks its host's domains
against the placement records (drctl.health.startup): a host that returns after its VMs
were restarted elsewhere must not run (or autostart) those copies. Until that check has
run once (it needs etcd and libvirtd) the agent only keeps its lease and reports health.

Everything waits on the injected Clock, so a simulated run with a SimClock, a MemoryStore
and simulated hosts is deterministic. Calls that can hang (libvirt) run with deadlines.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from drctl.audit import events
from drctl.audit import writer as audit
from drctl.clock import Clock
from drctl.config.settings import AgentConfig, Peer
from drctl.model.errors import DrctlError, LeaseLost, StoreError
from drctl.health.grading import (FailureSpan, Grade, HealthRecord, ProbeGrade, Sample, WitnessReport, combine,
                                  step)
from drctl.hypervisor import Hypervisor
from drctl.health.inventory import Publisher, read_host
from drctl.health.probes import Deadline, Probe, build, libvirt_answers
from drctl.health.startup import read_facts, stale_copies
from drctl.model.records import RecordError, parse_inventory
from drctl.store import Lease, Store
from drctl.store.keys import Keys

Connect = Callable[[str, float], Hypervisor]


def choose_witnessed(me: str, peers: list[Peer], count: int) -> list[Peer]:
    """The `count` peers after `me` in name order (wrapping): every host is watched by
    the same number of witnesses, and the choice does not change from tick to tick."""
    ring = sorted((p for p in peers if p.name != me), key=lambda p: p.name)
    if not ring or count <= 0:
        return []
    after = [p for p in ring if p.name > me] + [p for p in ring if p.name < me]
    return after[:count]


@dataclass
class _Due:
    """Monotonic times at which periodic work is next due."""

    report: float = 0.0
    witness: float = 0.0
    inventory: float = 0.0


class Agent:
    def __init__(self, cfg: AgentConfig, store: Store, keys: Keys, connect: Connect, clock: Clock,
                 probes: list[Probe] | None = None, background: bool = True) -> None:
        self.cfg = cfg
        self.host = cfg.host
        self._store = store
        self._keys = keys
        self._connect = connect
        self._clock = clock
        self.probes = probes if probes is not None else [build(s, connect, cfg.libvirt_uri) for s in cfg.probes]
        self._probe_due = {p.spec.name: 0.0 for p in self.probes}
        self.grades: dict[str, ProbeGrade] = {p.spec.name: ProbeGrade() for p in self.probes}
        self._samples: dict[str, Sample] = {}
        self.grade = Grade.HEALTHY
        self.reason = "starting"
        self._due = _Due()
        self._lease: Lease | None = None
        self._seq = 0
        self._store_ok = True
        self._peer_deadlines: dict[str, Deadline] = {}
        self._peer_spans: dict[str, FailureSpan] = {}
        self._peer_reach: dict[str, bool] = {}
        self._known_peers: list[Peer] = list(cfg.peers or [])
        self._witnessed: set[str] = set()  # peers we wrote reports about
        self._inventory_deadline = Deadline()
        self._publisher = Publisher(store, keys, cfg.host)
        # Witness rounds and inventory reads run in their own threads: a slow libvirtd
        # (a fresh one probes QEMU for seconds) must not delay the health report.
        # A simulation runs them inline, to stay deterministic.
        self._background = background
        self._jobs: dict[str, threading.Thread] = {}
        self._checked = False  # the start-up check of local copies has run
        self._check_failed = ""  # why it could not run yet (reported once)

    # ------------------------------------------------------------ the loop
    def tick(self) -> str:
        """Do whatever is due; one sentence saying what was done."""
        done: list[str] = []
        mono = self._clock.monotonic()
        if self._ensure_lease():
            done.append(f"registered with lease {self._lease.id:x}")  # type: ignore[union-attr]
        changed = self._run_probes(mono)
        if changed:
            done.append(changed)
        if self._lease is not None and (changed or mono >= self._due.report):
            if self._write_health():
                done.append(f"reported {self.grade.value}")
            self._due.report = mono + self.cfg.report_interval_s
        if not self._checked:
            done.append(self._check_local_copies())
            if not self._checked:
                return "; ".join(d for d in done if d)
        if mono >= self._due.witness:
            self._due.witness = mono + self.cfg.witness_interval_s
            done.append(self._job("witness", self._witness))
        if mono >= self._due.inventory:
            self._due.inventory = mono + self.cfg.inventory_interval_s
            done.append(self._job("inventory", self._publish_inventory))
        return "; ".join(d for d in done if d) or "nothing due"

    def _job(self, name: str, fn: Callable[[], str]) -> str:
        """Run one periodic job inline or in its thread; a round still running is not
        started again (it is bounded by its own deadlines)."""
        if not self._background:
            return fn()
        running = self._jobs.get(name)
        if running is not None and running.is_alive():
            return f"{name} round still running"
        self._jobs[name] = threading.Thread(target=fn, name=f"agent-{name}", daemon=True)
        self._jobs[name].start()
        return ""

    def next_due(self) -> float:
        """Monotonic time of the next scheduled work."""
        return min([self._due.report, self._due.witness, self._due.inventory, *self._probe_due.values()])

    def run(self, stop: threading.Event) -> None:
        audit.emit(events.AGENT_STARTED, host=self.host, probes=[p.spec.name for p in self.probes],
                   ttl_s=self.cfg.lease_ttl_s)
        try:
            while not stop.is_set():
                self.tick()
                wait = self.next_due() - self._clock.monotonic()
                # short sleeps: a lost lease (noticed by the keepalive thread) is acted on soon
                self._clock.sleep(min(max(wait, 0.02), 0.25))
        finally:
            self.close()

    def close(self) -> None:
        """Revoke the lease: the health record and our witness reports go at once, rather
        than a TTL later (a clean stop is not a failure to wait out)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                lease.revoke()
            except StoreError:
                pass  # it expires by itself
        audit.emit(events.AGENT_STOPPED, host=self.host)

    # ------------------------------------------------------------ lease
    def _ensure_lease(self) -> bool:
        """Grant a lease if we have none (or lost it); True if one was granted now."""
        if self._lease is not None and self._lease.alive:
            return False
        if self._lease is not None:
            audit.warn(events.AGENT_LEASE_LOST, host=self.host, lease=f"{self._lease.id:x}", ttl_s=self.cfg.lease_ttl_s)
            self._lease = None
        try:
            lease = self._store.grant_lease(self.cfg.lease_ttl_s, keepalive=True)
        except StoreError as e:
            self._store_down(e)
            return False
        self._store_up()
        self._lease = lease
        self._due = _Due()  # write everything again under the new lease, now
        audit.emit(events.AGENT_REGISTERED, host=self.host, lease=f"{lease.id:x}", ttl_s=lease.ttl)
        return True

    def _store_down(self, e: Exception) -> None:
        if self._store_ok:
            audit.warn(events.AGENT_STORE_UNAVAILABLE, host=self.host, error=str(e))
        self._store_ok = False

    def _store_up(self) -> None:
        if not self._store_ok:
            audit.emit(events.AGENT_STORE_RECOVERED, host=self.host)
        self._store_ok = True

    def _put_bound(self, key: str, value: bytes) -> bool:
        """Put under our lease; on LeaseLost drop the lease so the next tick re-registers."""
        if self._lease is None:
            return False
        try:
            self._store.put(key, value, lease=self._lease.id)
        except LeaseLost:
            stop = getattr(self._lease, "stop_keepalive", None)  # both adapters have it; the protocol does not
            if stop is not None:
                stop()
            audit.warn(events.AGENT_LEASE_LOST, host=self.host, lease=f"{self._lease.id:x}", ttl_s=self.cfg.lease_ttl_s)
            self._lease = None
            return False
        except StoreError as e:
            self._store_down(e)
            return False
        self._store_up()
        return True

    # ------------------------------------------------------------ probes and grade
    def _run_probes(self, mono: float) -> str:
        now = self._clock.now()
        for probe in self.probes:
            name = probe.spec.name
            if mono < self._probe_due[name]:
                continue
            self._probe_due[name] = mono + probe.spec.interval_s
            try:
                sample = probe.sample(now)
            except Exception as e:  # a broken probe is reported, it must not stop the agent
                sample = Sample(name, Grade.FAILING, None, None, f"probe crashed: {type(e).__name__}: {e}", now)
            self._samples[name] = sample
            before = self.grades[name].grade
            self.grades[name] = step(self.grades[name], sample, self.cfg.hysteresis)
            if self.grades[name].grade is not before:
                audit.emit(events.PROBE_GRADED, host=self.host, probe=name, **{"from": before.value},
                           to=self.grades[name].grade.value, value=sample.value, threshold=sample.threshold,
                           reason=sample.reason)
        grade, reason, sample = combine(self.grades)
        if grade is self.grade:
            self.reason = reason
            return ""
        old, self.grade, self.reason = self.grade, grade, reason
        audit.emit(events.HEALTH_GRADED, host=self.host, **{"from": old.value}, to=grade.value, reason=reason,
                   probe=sample.probe if sample else None, value=sample.value if sample else None,
                   threshold=sample.threshold if sample else None)
        return f"graded {grade.value} ({reason})"

    def health_record(self) -> HealthRecord:
        samples = {n: {**s.to_json(), "filtered": self.grades[n].grade.value} for n, s in self._samples.items()}
        return HealthRecord(self.host, self.grade, self.reason, self._clock.now(), self._seq,
                            self.cfg.report_interval_s, self._lease.id if self._lease else 0, samples)

    def _write_health(self) -> bool:
        self._seq += 1
        return self._put_bound(self._keys.health(self.host), self.health_record().to_json())

    # ------------------------------------------------------------ start-up check
    def _check_local_copies(self) -> str:
        """Stop and disable stale copies of VMs placed elsewhere (drctl.health.startup);
        retried every tick until etcd and libvirtd both answered once."""
        def check() -> list[str]:
            facts = read_facts(self._store, self._keys)
            hv = self._connect(self.cfg.libvirt_uri, self.cfg.witness_timeout_s * 5)
            try:
                return stale_copies(hv, self.host, facts)
            finally:
                hv.close()

        try:
            acted = self._inventory_deadline.call(check, self.cfg.witness_timeout_s * 10, "start-up check")
        except (DrctlError, StoreError) as e:
            if self._check_failed != str(e):
                self._check_failed = str(e)
                audit.warn(events.AGENT_STARTUP_CHECK_PENDING, host=self.host, error=str(e))
            return f"start-up check of local copies not done ({e})"
        self._checked = True
        return "checked local copies" + (f": {'; '.join(acted)}" if acted else "")

    # ------------------------------------------------------------ witnesses
    def _peers(self, kvs: list) -> list[Peer]:  # type: ignore[type-arg]
        if self.cfg.peers is not None:
            return list(self.cfg.peers)
        found = []
        for kv in kvs:
            parsed = self._keys.parse_host_key(kv.key)
            if parsed is None or parsed[1] != "inventory":
                continue
            try:
                uri = parse_inventory(kv.key, kv.value, parsed[0]).uri
            except RecordError:
                continue  # the controller reports unreadable records; a witness just skips it
            if uri:
                found.append(Peer(parsed[0], uri))
        return found

    def _check_peer(self, peer: Peer, lease_seen: bool, out: dict[str, WitnessReport]) -> None:
        deadline = self._peer_deadlines.setdefault(peer.name, Deadline())
        span = self._peer_spans.setdefault(peer.name, FailureSpan())
        latency, detail = None, ""
        started = self._clock.monotonic()
        try:
            latency = round(libvirt_answers(self._connect, peer.uri, deadline, self.cfg.witness_timeout_s), 4)
        except DrctlError as e:
            detail = str(e)
        # failures count from the start of the first failed check; only a run of them that
        # spans a lease TTL confirms the peer down (FailureSpan)
        failing_for = span.observe(latency is not None, started) + (self._clock.monotonic() - started
                                                                    if latency is None else 0.0)
        confirmed = latency is None and failing_for >= self.cfg.lease_ttl_s
        if latency is None and not confirmed:
            detail = f"{detail}; failing for {failing_for:.1f}s, under the lease TTL ({self.cfg.lease_ttl_s}s)"
        out[peer.name] = WitnessReport(peer.name, self.host, not confirmed, lease_seen, self._clock.now(),
                                       self.cfg.witness_interval_s, latency, detail)

    def _witness(self) -> str:
        if self._lease is None or self.cfg.witnesses <= 0:
            return ""
        try:
            kvs, _ = self._store.get_prefix(self._keys.hosts_prefix())
        except StoreError as e:
            self._store_down(e)
            return ""
        if self.cfg.peers is None:
            self._known_peers = self._peers(kvs)
        present = {kv.key for kv in kvs}
        chosen = choose_witnessed(self.host, self._known_peers, self.cfg.witnesses)
        self._forget_unwitnessed({p.name for p in chosen})
        reports: dict[str, WitnessReport] = {}
        # one thread per peer: a hung peer must not delay the report about another
        threads = [threading.Thread(target=self._check_peer, daemon=True, name=f"witness:{p.name}",
                                    args=(p, self._keys.health(p.name) in present, reports)) for p in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, report in sorted(reports.items()):
            if self._peer_reach.get(name) != report.libvirt_reachable:
                audit.emit(events.WITNESS_REPORTED, host=name, witness=self.host, reachable=report.libvirt_reachable,
                           detail=report.detail or None, lease_seen=report.lease_seen)
                self._peer_reach[name] = report.libvirt_reachable
            self._put_bound(self._keys.witness(name, self.host), report.to_json())
        unreachable = [n for n, r in reports.items() if not r.libvirt_reachable]
        return f"witnessed {', '.join(sorted(reports))}" + (f" ({', '.join(unreachable)} unreachable)"
                                                             if unreachable else "") if reports else ""

    def _forget_unwitnessed(self, chosen: set[str]) -> None:
        """Remove our reports about peers we no longer witness (the ring changed as hosts
        joined or left): the controller counts a host's witnesses by their reports, and a
        report left to go stale would count as a witness that can never confirm."""
        for name in sorted(self._witnessed - chosen):
            try:
                self._store.delete(self._keys.witness(name, self.host))
            except StoreError as e:
                self._store_down(e)
                return
            self._peer_reach.pop(name, None)
        self._witnessed = set(chosen)

    # ------------------------------------------------------------ inventory
    def _publish_inventory(self) -> str:
        def read() -> object:
            hv = self._connect(self.cfg.libvirt_uri, self.cfg.witness_timeout_s * 5)
            try:
                return read_host(hv, self.cfg, self._clock.now())
            finally:
                hv.close()

        try:
            view = self._inventory_deadline.call(read, self.cfg.witness_timeout_s * 5, "inventory")
        except DrctlError as e:
            return f"inventory not read ({e})"
        try:
            changed = self._publisher.publish(view)  # type: ignore[arg-type]
        except StoreError as e:
            self._store_down(e)
            return ""
        if changed:
            audit.emit(events.INVENTORY_PUBLISHED, host=self.host, vms_changed=changed)
        return "published inventory" + (f" and {len(changed)} VM definitions" if changed else "")
