"""Issue 12 case 0: with the shipped configuration (each agent witnesses 2 peers) a host
of a cluster of any size must be declared dead when its lease is gone and the witnesses
it actually has cannot reach its libvirtd. Simulated agents (SimClock, MemoryStore,
simulated hosts) and the controller's own view of etcd."""
from __future__ import annotations

import pytest

from drctl.clock import SimClock
from drctl.config.settings import AgentConfig, Peer
from drctl.control.view import ClusterRecords, host_verdicts, read_view
from drctl.health.agent import Agent, choose_witnessed
from drctl.health.grading import quorum_for
from drctl.model.records import Grade, HealthRecord, WitnessReport
from drctl.hypervisor.sim import SimCluster
from drctl.model.cluster import HostState
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

KEYS = Keys()


class Ring:
    """n simulated hosts, each with an agent that finds its peers through the inventory."""

    def __init__(self, n: int, witnesses: int = AgentConfig.witnesses) -> None:
        self.clock = SimClock()
        self.store = MemoryStore(self.clock)
        self.sim = SimCluster(self.clock)
        self.hosts = [f"hv{i:02d}" for i in range(n)]
        self.agents = {}
        for h in self.hosts:
            self.sim.add_host(h)
            cfg = AgentConfig(host=h, libvirt_uri=SimCluster.uri(h), probes=(), witnesses=witnesses)
            self.agents[h] = Agent(cfg, self.store, KEYS, lambda uri, _t: self.sim.connect(uri), self.clock,
                                   probes=[], background=False)
        self.running = set(self.hosts)

    def drive(self, seconds: float, dt: float = 0.25) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            for h in sorted(self.running):
                if self.clock.monotonic() >= self.agents[h].next_due():
                    self.agents[h].tick()
            self.clock.advance(dt)

    def kill(self, host: str) -> None:
        """Power off: libvirtd refuses, the agent stops, its lease runs out."""
        self.sim.hosts[host].up = False
        self.running.discard(host)
        self.agents[host]._lease.stop_keepalive()  # type: ignore[union-attr]

    def states(self) -> dict[str, HostState]:
        view = read_view(self.store, KEYS, None, self.clock.now())  # what the controller decides on
        return {h: v.state for h, v in view.verdicts.items()}


def test_five_hosts_two_witnesses_a_killed_host_is_dead() -> None:
    ring = Ring(5)
    ring.drive(3)
    assert set(ring.states().values()) == {HostState.HEALTHY}
    ring.kill("hv02")
    ring.drive(6)
    assert ring.states()["hv02"] is HostState.DEAD


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 13, 50])
def test_any_cluster_size_a_killed_host_is_dead_and_the_others_stay_healthy(n: int) -> None:
    ring = Ring(n)
    ring.drive(3)
    assert set(ring.states().values()) == {HostState.HEALTHY}
    victim = ring.hosts[n // 2]
    ring.kill(victim)
    ring.drive(6)
    states = ring.states()
    assert states[victim] is HostState.DEAD
    assert {h: s for h, s in states.items() if h != victim} == {h: HostState.HEALTHY for h in ring.hosts if h != victim}


# ---------------------------------------------------------------- every size, pure


def ring_records(n: int, k: int, victim: str, reaching: frozenset[str] = frozenset(),
                 stale: frozenset[str] = frozenset(), now: float = 1000.0) -> ClusterRecords:
    """What etcd holds when `victim`'s lease is gone and every agent reported on the peers
    it witnesses (the agents' own ring choice): `reaching` witnesses still reach its
    libvirtd, `stale` ones stopped reporting 30 s ago."""
    hosts = [f"hv{i:02d}" for i in range(n)]
    peers = [Peer(h, "") for h in hosts]
    health = {h: HealthRecord(h, Grade.HEALTHY, "ok", now - 0.5, 1) for h in hosts if h != victim}
    witnesses: dict[str, dict[str, WitnessReport]] = {}
    for w in hosts:
        if w == victim:
            continue  # its agent is gone, and its reports with its lease
        for p in choose_witnessed(w, peers, k):
            ts = now - 30 if w in stale else now - 0.5
            witnesses.setdefault(p.name, {})[w] = WitnessReport(p.name, w, w in reaching or p.name != victim,
                                                                p.name != victim, ts)
    return ClusterRecords(hosts=frozenset(hosts), health=health, witnesses=witnesses)


@pytest.mark.parametrize("n", range(2, 51))
def test_every_cluster_size_from_2_to_50(n: int) -> None:
    k, victim = AgentConfig.witnesses, "hv00"
    records = ring_records(n, k, victim)
    mine = sorted(records.witnesses[victim])
    assert len(mine) == min(k, n - 1)  # the witnesses a host actually has
    verdicts = host_verdicts(records, None, 1000.0)
    assert verdicts[victim].state is HostState.DEAD, verdicts[victim].reason
    assert all(v.state is HostState.HEALTHY for h, v in verdicts.items() if h != victim)
    # one of its witnesses still reaches its libvirtd: cut off, not dead
    cut_off = host_verdicts(ring_records(n, k, victim, reaching=frozenset(mine[:1])), None, 1000.0)
    assert cut_off[victim].state is HostState.UNREACHABLE
    if len(mine) >= 2:
        # a stalled witness cannot confirm, and the other alone is not a majority of 2
        stalled = host_verdicts(ring_records(n, k, victim, stale=frozenset(mine[:1])), None, 1000.0)
        assert stalled[victim].state is HostState.UNREACHABLE, stalled[victim].reason


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_more_witnesses_need_a_majority_of_them(k: int) -> None:
    n, victim = 12, "hv00"
    records = ring_records(n, k, victim)
    assert host_verdicts(records, None, 1000.0)[victim].state is HostState.DEAD
    need = quorum_for(k)
    mine = sorted(records.witnesses[victim])
    short = ring_records(n, k, victim, reaching=frozenset(mine[need - 1:]))  # need - 1 confirm
    assert host_verdicts(short, None, 1000.0)[victim].state is HostState.UNREACHABLE


def test_quorum_rule() -> None:
    assert [quorum_for(w) for w in range(6)] == [1, 1, 2, 2, 3, 3]
    assert quorum_for(2, configured=1) == 1 and quorum_for(0, configured=3) == 3
