"""Randomized search: random fault schedules against the production code, the invariants
checked after every step. A failing schedule is shrunk (faults dropped while the same
invariant still breaks) and written as a scenario folder that reproduces it."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from drctl.policy import Policy, compile_policy
from drctl.sim import scenario
from drctl.sim.run import Action, HostSpec, Result, Simulation, Spec, VmSpec

# The configuration the search holds drctl to: fence before restarting (issue 12 #2 says
# the defaults must too), and the default witness quorum (a majority of the host's own
# witnesses, since issue 12 #0 was fixed; scenario five-host-host-kill); `--policy`
# searches another.
SEARCH_POLICY_YAML = """\
version: 1
name: sim-search
rules:
  - name: restart-dead
    when: {state: dead, for: 0s}
    action: restart
  - name: evacuate-unhealthy
    when: {state: [degraded, failing], for: 10s}
    action: live-migrate
  - name: drain
    when: {maintenance: requested}
    action: live-migrate
evidence:
  require: [lease-expired, witnesses, fence]
  fence_agent: sim
limits:
  blast_radius: {max_hosts: 1, window: 5m}
"""


def search_policy() -> Policy:
    return compile_policy(SEARCH_POLICY_YAML, "<sim-search>")


def random_timeline(rng: random.Random, hosts: list[str], vms: list[str], controllers: list[str],
                    horizon: float, faults: tuple[int, int] = (1, 4)) -> tuple[Action, ...]:
    """A few faults in [5 s, horizon), each healed within the horizon (or instant)."""
    out: list[Action] = []
    for _ in range(rng.randint(*faults)):
        at = round(rng.uniform(5.0, horizon * 0.7), 3)
        room = max(2.0, horizon - at)

        def dur(lo: float, hi: float) -> float:
            return round(min(rng.uniform(lo, hi), room), 3)

        h, vm, c = rng.choice(hosts), rng.choice(vms), rng.choice(controllers)
        other = rng.choice([x for x in hosts if x != h] or hosts)
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind == "host-kill":
            out.append(Action(at, "host-kill", {"host": h}, dur(20, 120) if rng.random() < 0.5 else None))
        elif kind in ("host-freeze", "libvirtd-hang", "libvirtd-kill", "agent-kill", "partition"):
            out.append(Action(at, kind, {"host": h}, dur(3, 60)))
        elif kind in ("controller-kill", "controller-freeze"):
            out.append(Action(at, kind, {"name": c}, dur(2, 30)))
        elif kind == "cut":
            a, b = rng.choice([(h, "etcd"), (c, "etcd"), (c, f"libvirt:{h}"), (other, f"libvirt:{h}"),
                               (f"libvirt:{other}", f"libvirt:{h}")])
            out.append(Action(at, "cut", {"a": a, "b": b}, dur(3, 60)))
        elif kind == "etcd-down":
            out.append(Action(at, "etcd-down", {}, dur(2, 30)))
        elif kind == "degrade":
            out.append(Action(at, "degrade", {"host": h, "grade": rng.choice(["degraded", "failing"])}, dur(20, 120)))
        elif kind == "fence-mode":
            out.append(Action(at, "fence-mode", {"host": h, "mode": rng.choice(["fail", "slow"]),
                                                 "seconds": round(rng.uniform(2, 20), 1)}, dur(10, 120)))
        elif kind == "migration-fault":
            out.append(Action(at, "migration-fault",
                              {"vm": vm, "fault": rng.choice(["fail", "lie", "hang-dest", "no-converge"])}))
        elif kind == "drain":
            out.append(Action(at, "drain", {"host": h}, dur(30, 120)))
        elif kind == "autostart":
            out.append(Action(at, "autostart", {"vm": vm}))
    return tuple(sorted(out, key=lambda a: a.at))


KINDS = ["host-kill", "host-freeze", "libvirtd-hang", "libvirtd-kill", "agent-kill", "partition",
         "controller-kill", "controller-freeze", "cut", "etcd-down", "degrade", "fence-mode",
         "migration-fault", "drain", "autostart"]
WEIGHTS = [4, 3, 3, 1, 2, 2, 2, 3, 4, 2, 3, 1, 3, 2, 1]


def random_spec(seed: int, hosts: int = 5, vms: int = 20, duration_s: float = 600.0, settle_s: float = 240.0,
                policy: Policy | None = None, **overrides: object) -> Spec:
    rng = random.Random(seed)
    names = [f"h{i + 1}" for i in range(hosts)]
    vm_specs = tuple(VmSpec(f"vm{i + 1:02d}", names[i % hosts], rng.choice([512, 1024, 2048]),
                            dirty=rng.choice([0.0, 0.0, 0.0, 0.3])) for i in range(vms))
    controllers = ["c1", "c2"]
    horizon = max(30.0, duration_s - settle_s)
    timeline = random_timeline(rng, names, [v.name for v in vm_specs], controllers, horizon)
    spec = Spec(hosts=tuple(HostSpec(n) for n in names), vms=vm_specs, policy=policy or search_policy(),
                timeline=timeline, controllers=tuple(controllers), duration_s=duration_s, settle_s=settle_s,
                recovery_bound_s=180.0, seed=seed)
    return replace(spec, **overrides)  # type: ignore[arg-type]


@dataclass
class Finding:
    seed: int
    invariant: str
    detail: str
    timeline: tuple[Action, ...]
    folder: Path | None = None


@dataclass
class Summary:
    runs: int = 0
    violations: int = 0
    steps: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    crashes: int = 0
    findings: list[Finding] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"runs": self.runs, "violations": self.violations, "steps": self.steps,
                "sim_seconds": round(self.sim_seconds, 1), "wall_seconds": round(self.wall_seconds, 2),
                "crashes": self.crashes,
                "failing_seeds": [{"seed": f.seed, "invariant": f.invariant} for f in self.findings]}


def shrink(spec: Spec, invariant: str, budget: int = 12) -> tuple[Spec, Result]:
    """Drop faults one at a time while the same invariant still breaks (greedy, bounded)."""
    best = spec
    best_result = Simulation(spec).run(stop_on_violation=True)
    tries = 0
    changed = True
    while changed and tries < budget:
        changed = False
        for i in range(len(best.timeline)):
            if tries >= budget:
                break
            cand = replace(best, timeline=best.timeline[:i] + best.timeline[i + 1:])
            tries += 1
            r = Simulation(cand).run(stop_on_violation=True)
            if any(v.invariant == invariant for v in r.violations):
                best, best_result, changed = cand, r, True
                break
    return best, best_result


def _one(args: tuple[int, int, int, float, Policy | None, dict[str, object]]) -> tuple[int, Result]:
    run_seed, hosts, vms, duration_s, policy, overrides = args
    spec = random_spec(run_seed, hosts, vms, duration_s, policy=policy, **overrides)  # type: ignore[arg-type]
    return run_seed, Simulation(spec).run(stop_on_violation=True)


def search(runs: int, seed: int, hosts: int = 5, vms: int = 20, duration_s: float = 600.0,
           policy: Policy | None = None, policy_text: str = SEARCH_POLICY_YAML, out: Path | None = None,
           shrink_budget: int = 12, echo: Callable[[str], None] = lambda _s: None, jobs: int = 1,
           **overrides: object) -> Summary:
    """Run `runs` schedules (seeds seed..seed+runs-1), `jobs` at a time in worker processes;
    every failing one is shrunk and written here, in seed order."""
    s = Summary()
    wall = time.perf_counter()
    work = [(seed + i, hosts, vms, duration_s, policy, dict(overrides)) for i in range(runs)]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_one, work))
    else:
        results = map(_one, work)  # type: ignore[assignment]
    for run_seed, r in results:
        spec = random_spec(run_seed, hosts, vms, duration_s, policy=policy, **overrides)  # type: ignore[arg-type]
        s.runs += 1
        s.steps += r.steps
        s.sim_seconds += r.sim_seconds
        s.crashes += r.crashes
        if not r.violations:
            continue
        s.violations += 1
        v = r.violations[0]
        echo(f"seed {run_seed}: {v.line()}")
        small, _ = shrink(spec, v.invariant, shrink_budget) if shrink_budget else (spec, r)
        f = Finding(run_seed, v.invariant, v.detail, small.timeline)
        echo("  shrunk schedule: " + ("; ".join(f"{a.at:g}s {a.describe()}" for a in small.timeline) or "(none)"))
        if out is not None:
            f.folder = out / f"seed-{run_seed}-{v.invariant}"
            full = Simulation(small).run()  # the whole run, so the folder's log is the one it reproduces
            scenario.write(f.folder, scenario.cluster_yaml(small), policy_text, scenario.timeline_yaml(small.timeline),
                           f"found by `drctl sim search --seed {seed}` (run seed {run_seed}): {v.invariant}: "
                           f"{v.detail}", scenario.render(full))
            echo(f"  written to {f.folder}")
        s.findings.append(f)
    s.wall_seconds = time.perf_counter() - wall
    return s
