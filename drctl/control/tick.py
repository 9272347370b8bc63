"""The controller's pure core: `tick(view, policy, now) -> TickResult`.

One consistent view of the cluster goes in; decisions and one sentence saying what the
tick did come out. No I/O happens here: `drctl/controller_loop.py` builds the view from
etcd (and libvirt), carries the decisions out through leader-guarded transactions, and
reports the sentence. That split is what lets the same logic run on the real cluster and
in the simulator, and be tested without mocks.

Episodes: a host whose state a policy rule acts on opens one *incident*, which gathers
every decision and intent until it closes. While an incident is open for a host, no new
one is opened for it, so a flapping host cannot open an incident every few seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Mapping

from drctl.health.grading import HostVerdict
from drctl.model.cluster import HostState, IntentKind, IntentState, Move, Snapshot
from drctl.model.proof import FenceProof, FenceBasis, proof_id
from drctl.policy import Policy
from drctl.policy.types import Action, EvidenceKind, Rule, TriggerKind


class IncidentKind(str, Enum):
    EVACUATE = "evacuate"  # degraded/failing/unreachable host: live migration
    RECOVER = "recover"  # dead host: evidence, fence, restart elsewhere
    DRAIN = "drain"  # maintenance requested
    REBALANCE = "rebalance"  # imbalance trigger
    VM_RECOVER = "vm-recover"  # a VM stopped without a request on a live host (control/vm_recovery.py)


class IncidentPhase(str, Enum):
    AWAITING_EVIDENCE = "awaiting-evidence"
    FENCING = "fencing"
    ACTING = "acting"  # intents written, runner at work
    NEEDS_HUMAN = "needs-human"
    CLOSED = "closed"


@dataclass(frozen=True)
class Incident:
    id: str
    kind: IncidentKind
    host: str  # "" for a rebalance
    rule: str
    policy: str
    opened_at: float
    phase: IncidentPhase
    reason: str = ""
    evidence: tuple[str, ...] = ()  # pieces recorded so far, e.g. "lease-expired", "fence: ..."
    fenced: bool = False
    intents: tuple[str, ...] = ()
    closed_at: float | None = None
    outcome: str = ""
    rounds: int = 0  # plans written so far: drains and recoveries plan again while VMs are left
    planned_at: float = 0.0  # when the last round was planned (back-off counts from it)


@dataclass(frozen=True)
class IntentView:
    """What the controller needs to know of one intent."""

    id: str
    incident: str
    vm: str
    src: str
    dst: str
    state: IntentState
    kind: IntentKind = IntentKind.MIGRATE


@dataclass(frozen=True)
class View:
    snapshot: Snapshot  # host.state from verdicts, host.maintenance from drain requests
    verdicts: Mapping[str, HostVerdict]  # drctl.health.grading.host_state: state + evidence
    held_s: Mapping[str, float]  # how long each host has been in its current state
    incidents: Mapping[str, Incident]  # open incidents by id
    intents: tuple[IntentView, ...]  # open (non-terminal) and this incident's finished ones
    etcd_healthy: bool = True
    age_s: float = 0.0  # how old the view is: the controller must not act on a stale one
    frozen: str = ""  # the freeze in force, if any
    # hosts whose last incident closed within Settings.reopen_after_s, with its outcome:
    # an episode that ended partially (a VM could not be placed) must not reopen every tick
    recently_closed: Mapping[str, str] = field(default_factory=dict)
    # how long each troubled host has been troubled (any of failing/unreachable/dead, without
    # a healthy spell between): the blast radius counts only hosts that became troubled within
    # its window. A host missing here counts as troubled for its `held_s`.
    troubled_for_s: Mapping[str, float] = field(default_factory=dict)
    # host -> its fence proof record (fence-proofs/<host>), as read with the view: the only
    # thing that lets the tick plan a restart (docs/controller.md, "The restart gate")
    proofs: Mapping[str, FenceProof] = field(default_factory=dict)


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Freeze:
    reason: str


@dataclass(frozen=True)
class Resume:
    reason: str


@dataclass(frozen=True)
class OpenIncident:
    incident: Incident


@dataclass(frozen=True)
class UpdateIncident:
    incident: Incident  # the new version
    note: str


@dataclass(frozen=True)
class RequestFence:
    incident: str
    host: str
    agent: str


@dataclass(frozen=True)
class RecordProof:
    """Write `proof` as the host's fence proof (leader-guarded). The tick asks for it only
    when the policy waives fencing explicitly; a real fence's proof is written by the loop
    in the same transaction that records the agent's answer."""

    proof: FenceProof


@dataclass(frozen=True)
class WriteIntents:
    incident: str
    moves: tuple[Move, ...]
    unplaced: tuple[tuple[str, str], ...] = ()  # (vm, why), for the audit trail
    dry_run: bool = False
    round: int = 1  # the incident's planning round: intent ids of later rounds carry it


@dataclass(frozen=True)
class CloseIncident:
    incident: str
    outcome: str


Decision = (Freeze | Resume | OpenIncident | UpdateIncident | RequestFence | RecordProof | WriteIntents
            | CloseIncident)


@dataclass(frozen=True)
class TickResult:
    decisions: tuple[Decision, ...]
    sentence: str
    frozen: str = ""


@dataclass(frozen=True)
class Settings:
    stale_after_s: float = 10.0  # a view older than this freezes the controller
    reopen_after_s: float = 60.0  # a host's next incident waits this long after its last closed
    quorum: int | None = None  # witnesses; None = the policy's (or a majority)
    # drains and recoveries plan again while their host still holds VMs: after this long,
    # doubling each round up to replan_max_s, at most max_rounds plans per incident
    replan_after_s: float = 5.0
    replan_max_s: float = 60.0
    max_rounds: int = 6

    def backoff_s(self, rounds: int) -> float:
        """How long after round `rounds` was planned the next may be."""
        return float(min(self.replan_after_s * 2.0 ** max(rounds - 1, 0), self.replan_max_s))


ETCD_UNHEALTHY = "etcd is unhealthy"  # the freeze reason while the view cannot be read


# ------------------------------------------------------------------ the tick


def tick(view: View, policy: Policy, now: float, settings: Settings = Settings()) -> TickResult:
    """Decide what to do about the cluster described by `view`. Pure."""
    freeze = _freeze_reason(view, policy, settings)
    if freeze:
        decisions: tuple[Decision, ...] = () if view.frozen == freeze else (Freeze(freeze),)
        return TickResult(decisions, f"frozen: {freeze}; decided nothing", frozen=freeze)
    out: list[Decision] = []
    if view.frozen:
        out.append(Resume(f"cleared: {view.frozen}"))
    busy_vms = {i.vm for i in view.intents if not i.state.terminal}
    open_by_host = {inc.host: inc for inc in view.incidents.values() if inc.host}
    for name in sorted(view.snapshot.hosts):
        inc = open_by_host.get(name)
        if inc is not None:
            out.extend(_progress(inc, view, policy, now, busy_vms, settings))
        else:
            out.extend(_maybe_open(name, view, policy, now, busy_vms, settings))
    if not view.incidents and not any(isinstance(d, OpenIncident) for d in out):
        out.extend(_maybe_rebalance(view, policy, now, busy_vms))
    for inc in view.incidents.values():
        if inc.kind is IncidentKind.REBALANCE:
            out.extend(_close_if_done(inc, view))
    return TickResult(tuple(out), _sentence(out, view))


def _freeze_reason(view: View, policy: Policy, settings: Settings) -> str:
    if not view.etcd_healthy:
        return ETCD_UNHEALTHY
    if view.age_s > settings.stale_after_s:
        # the limit, not the age: the reason must read the same on every tick it holds,
        # or each tick would freeze anew
        return f"view is stale (older than {settings.stale_after_s:g}s)"
    # Hosts that failed "at once": more than the blast radius allows within its window is more
    # likely the network than the hosts (docs/controller.md, "Freezing"). A host that has been
    # dead for longer than the window is an old, separate failure: counting it would freeze the
    # controller for good at the next one. Drains are operator requests: not counted.
    br = policy.blast_radius
    troubled = [n for n, h in view.snapshot.hosts.items()
                if h.state in TROUBLED and troubled_for(view, n) <= br.window_s]
    if br.max_hosts is not None and len(troubled) > br.max_hosts:
        return (f"{len(troubled)} hosts in trouble at once ({', '.join(sorted(troubled))}) exceeds the blast "
                f"radius of {br.max_hosts} host(s): suspect the network; a human must decide")
    vms_total = len(view.snapshot.vms)
    vms_acted = sum(1 for v in view.snapshot.vms.values() if v.host in troubled)
    if br.exceeded(len(troubled), vms_acted, vms_total):
        return (f"{vms_acted} of {vms_total} VMs on troubled hosts exceeds the blast radius "
                f"of {br.max_vm_pct:g}%; a human must decide")
    return ""


TROUBLED = frozenset({HostState.DEAD, HostState.UNREACHABLE, HostState.FAILING})


def troubled_for(view: View, host: str) -> float:
    """Seconds since `host` became troubled (see View.troubled_for_s)."""
    return view.troubled_for_s.get(host, view.held_s.get(host, 0.0))


def _incident_kind(state: HostState, trigger: TriggerKind) -> IncidentKind:
    if trigger is TriggerKind.MAINTENANCE:
        return IncidentKind.DRAIN
    return IncidentKind.RECOVER if state is HostState.DEAD else IncidentKind.EVACUATE


def _recovery_rule(view: View, policy: Policy, host: str, now: float) -> Rule | None:
    """The first rule on this host's `dead` state that holds now: a dead host is recovered
    by it even when an earlier rule (a drain) also matches."""
    h = view.snapshot.hosts[host]
    for rule in policy.actions:
        t = rule.trigger
        if (t.kind is TriggerKind.STATE and rule.hosts.matches(h) and t.in_window(now)
                and t.holds_for(h, HostState.DEAD, view.held_s.get(host, 0.0))):
            return rule
    return None


def _maybe_open(name: str, view: View, policy: Policy, now: float, busy: set[str],
                settings: Settings) -> list[Decision]:
    host = view.snapshot.hosts[name]
    rule = policy.rule_for(host, host.state, view.held_s.get(name, 0.0), now)
    if host.state is HostState.DEAD:
        rule = _recovery_rule(view, policy, name, now) or rule
    if rule is None or rule.trigger.kind is TriggerKind.IMBALANCE:
        return []
    if not view.snapshot.vms_on(name) or name in view.recently_closed:
        return []  # nothing to save, or the last episode just ended
    kind = _incident_kind(host.state, rule.trigger.kind)
    verdict = view.verdicts.get(name, HostVerdict(name, host.state, ""))
    reason = f"{name} {host.state.value}" + (f" ({verdict.reason})" if verdict.reason else "")
    if kind is IncidentKind.DRAIN:
        reason = f"{name}: maintenance requested"
    if rule.trigger.kind is TriggerKind.STATE and host.state is HostState.DEAD:
        kind = IncidentKind.RECOVER
    inc = Incident(id=f"inc-{name}-{int(now * 1000)}", kind=kind, host=name, rule=rule.name,
                   policy=policy.name, opened_at=now, phase=IncidentPhase.ACTING, reason=reason)
    if kind is IncidentKind.RECOVER:
        inc = replace(inc, phase=IncidentPhase.AWAITING_EVIDENCE)
        return [OpenIncident(inc), *_progress(inc, view, policy, now, busy, settings)]
    inc = replace(inc, rounds=1, planned_at=now)
    return [OpenIncident(inc), *_plan(inc, view, policy, busy)]


def _progress(inc: Incident, view: View, policy: Policy, now: float, busy: set[str],
              settings: Settings) -> list[Decision]:
    """Move an open incident on: evidence, fencing, planning, re-planning, closing."""
    host = view.snapshot.hosts[inc.host]
    if inc.kind in (IncidentKind.EVACUATE, IncidentKind.DRAIN) and host.state is HostState.DEAD:
        return _become_recovery(inc, view, policy, now, busy, settings)
    if inc.kind is IncidentKind.RECOVER and inc.phase is IncidentPhase.AWAITING_EVIDENCE:
        return _recover(inc, view, policy, now, busy)
    if inc.phase is not IncidentPhase.ACTING:
        return []
    mine = [i for i in view.intents if i.incident == inc.id]
    if any(not i.state.terminal for i in mine):
        return []
    if inc.kind is IncidentKind.DRAIN and not host.maintenance:
        done = sum(1 for i in mine if i.state is IntentState.DONE)
        return [CloseIncident(inc.id, f"maintenance request withdrawn (undrain); {done} of {len(mine)} VM(s) "
                                      f"moved, {len(view.snapshot.vms_on(inc.host))} left on {inc.host}")]
    if inc.kind is IncidentKind.DRAIN and any(not i.state.terminal and i.dst == inc.host for i in view.intents):
        return []  # a VM is still arriving (another incident's move planned before this drain): wait for it
    if inc.kind in (IncidentKind.DRAIN, IncidentKind.RECOVER) and view.snapshot.vms_on(inc.host):
        if inc.rounds < settings.max_rounds:
            if now - inc.planned_at < settings.backoff_s(inc.rounds):
                return []  # back off before the next round
            nxt = replace(inc, rounds=inc.rounds + 1, planned_at=now)
            left = ", ".join(v.name for v in view.snapshot.vms_on(inc.host))
            return [UpdateIncident(nxt, f"round {nxt.rounds}: {inc.host} still holds {left}"),
                    *_plan(nxt, view, policy, busy)]
    return _close_if_done(inc, view, final=True)


def _become_recovery(inc: Incident, view: View, policy: Policy, now: float, busy: set[str],
                     settings: Settings) -> list[Decision]:
    """The host of an evacuation or drain died: its parked migrations will never finish and
    only a recovery (evidence, fence, restart) brings its VMs back. Same incident, so its
    intents stay counted; the policy's rule for dead hosts takes over."""
    rule = _recovery_rule(view, policy, inc.host, now)
    if rule is None:
        return []  # no rule restarts from this dead host (or not yet held long enough): wait
    nxt = replace(inc, kind=IncidentKind.RECOVER, rule=rule.name, phase=IncidentPhase.AWAITING_EVIDENCE,
                  reason=f"{inc.reason}; {inc.host} died during the {inc.kind.value}")
    return [UpdateIncident(nxt, f"{inc.host} is dead: the {inc.kind.value} becomes a recovery ({rule.name})"),
            *_recover(nxt, view, policy, now, busy)]


def _recover(inc: Incident, view: View, policy: Policy, now: float, busy: set[str]) -> list[Decision]:
    host = view.snapshot.hosts[inc.host]
    verdict = view.verdicts.get(inc.host, HostVerdict(inc.host, host.state, ""))
    if host.state is not HostState.DEAD:
        # It came back (or was only cut off) before we acted: nothing to restart.
        return [CloseIncident(inc.id, f"{inc.host} is {host.state.value} again; restarted nothing")]
    need = policy.evidence.required
    have: list[str] = []
    missing: list[str] = []
    for kind, ok in ((EvidenceKind.LEASE_EXPIRED, not verdict.lease_present),
                     (EvidenceKind.WITNESSES, verdict.witnesses_confirm_down)):
        if kind in need:
            (have if ok else missing).append(kind.value)
    if missing:
        return []  # wait: the verdict says dead but not on the evidence the policy wants
    evidence = tuple(sorted(set(inc.evidence) | set(have)))
    proof = incident_proof(view, inc)
    if proof is None and EvidenceKind.FENCE in need:
        # `fenced` alone is not enough: without its proof record (an older release's
        # incident, a record lost or unreadable) fence again; fencing is idempotent
        agent = policy.evidence.fence_agent or ""
        nxt = replace(inc, phase=IncidentPhase.FENCING, evidence=evidence)
        return [UpdateIncident(nxt, f"evidence {', '.join(have)} recorded; fencing {inc.host} with {agent}"),
                RequestFence(inc.id, inc.host, agent)]
    if proof is None:
        # the policy waives fencing in so many words (`fence: waived`): record that as the proof
        waiver = FenceProof(proof_id(inc.id, 0), inc.host, inc.id, 0, evidence, FenceBasis.WAIVED,
                            detail=f"policy {policy.name} waives fencing", at=now)
        return [RecordProof(waiver)]
    nxt = replace(inc, phase=IncidentPhase.ACTING, evidence=evidence, rounds=inc.rounds + 1, planned_at=now)
    return [UpdateIncident(nxt, "evidence complete: " + ", ".join(nxt.evidence)), *_plan(nxt, view, policy, busy)]


def incident_proof(view: View, inc: Incident) -> FenceProof | None:
    """The fence proof that backs `inc`'s restarts, if recorded: the host's current proof,
    written for this very incident."""
    proof = view.proofs.get(inc.host)
    if proof is None or proof.incident != inc.id or proof.host != inc.host:
        return None
    return proof


def _plan(inc: Incident, view: View, policy: Policy, busy: set[str]) -> list[Decision]:
    from drctl.planning.planner import plan_evacuation

    snap = policy.apply_groups(view.snapshot)
    rule = next((r for r in policy.actions if r.name == inc.rule), None)
    state = snap.hosts[inc.host].state
    # The restart gate: only a recovery whose fence proof is recorded restarts, and only VMs
    # its rule says to restart. Nothing the operator wrote as live-migrate becomes a restart.
    proof = incident_proof(view, inc) if inc.kind is IncidentKind.RECOVER else None
    keep: dict[str, str] = {}
    restartable: list[str] = []
    for vm in snap.vms_on(inc.host):
        spec = rule.action_for(vm) if rule else None
        says_restart = spec is not None and Action.RESTART in (spec.action, spec.fallback)
        if vm.name in busy:
            keep[vm.name] = "already being moved"
        elif spec is not None and spec.action is Action.LEAVE_ALONE:
            keep[vm.name] = f"rule {rule.name if rule else '?'} leaves it alone"
        elif spec is not None and spec.action is Action.RESTART and host_alive(view, inc.host):
            keep[vm.name] = "restart is only for dead hosts"
        elif spec is not None and spec.action is Action.RESTART and state is not HostState.DEAD:
            keep[vm.name] = f"{inc.host} is {state.value}: a restart waits until it is dead and fenced"
        elif state is HostState.DEAD and not says_restart:
            keep[vm.name] = (f"rule {inc.rule} says {spec.action.value if spec else 'live-migrate'}, and "
                             f"{inc.host} is dead: waits for the recovery path")
        elif state is HostState.DEAD and proof is None:
            keep[vm.name] = f"{inc.host} is not fenced for {inc.id}: a restart needs its fence proof"
        elif state is HostState.DEAD:
            restartable.append(vm.name)
    planned = replace(snap, vms={n: v for n, v in snap.vms.items() if n not in keep})
    plan = plan_evacuation(planned, [inc.host], policy.rules, policy.limits,
                           restart_from=frozenset({inc.host}) if proof is not None and restartable else frozenset())
    moves = tuple(replace(m, proof=proof.id) if m.kind is IntentKind.RESTART and proof is not None else m
                  for m in plan.moves)
    unplaced = tuple((u.vm, "; ".join(f"{h}: {', '.join(r)}" for h, r in sorted(u.reasons.items()))
                     or "no host") for u in plan.unplaced)
    return [WriteIntents(inc.id, moves, unplaced + tuple(keep.items()), dry_run=policy.dry_run,
                         round=max(inc.rounds, 1))]


def host_alive(view: View, host: str) -> bool:
    return view.snapshot.hosts[host].state.alive


def _close_if_done(inc: Incident, view: View, final: bool = False) -> list[Decision]:
    """Close once every intent is finished. A drain or recovery gets here (`final`) only when
    its host holds no VM or its rounds are used up; it then names the VMs left behind."""
    mine = [i for i in view.intents if i.incident == inc.id]
    if any(not i.state.terminal for i in mine):
        return []
    done_vms = {i.vm for i in mine if i.state is IntentState.DONE}
    failed = sorted({i.vm for i in mine} - done_vms)
    outcome = f"{len(done_vms)} of {len(done_vms) + len(failed)} VM(s) moved" + (
        f"; not moved: {', '.join(failed)}" if failed else "")
    left = [v.name for v in view.snapshot.vms_on(inc.host)] if inc.host else []
    if final and left and inc.kind in (IncidentKind.DRAIN, IncidentKind.RECOVER):
        outcome += f"; gave up after {inc.rounds} round(s) with {', '.join(left)} still on {inc.host}"
    return [CloseIncident(inc.id, outcome)]


def memory_spread_pct(snap: Snapshot) -> float:
    """max - min of memory use (% of each healthy host's memory)."""
    used = [100.0 * (h.memory_used_mib + h.reserved_mib) / h.memory_mib
            for h in snap.hosts.values() if h.state is HostState.HEALTHY and not h.maintenance and h.memory_mib]
    return max(used) - min(used) if len(used) > 1 else 0.0


def _maybe_rebalance(view: View, policy: Policy, now: float, busy: set[str]) -> list[Decision]:
    if busy:
        return []
    spread = memory_spread_pct(view.snapshot)
    rule = policy.rebalance_rule(spread, now)
    if rule is None:
        return []
    from drctl.planning.planner import plan_rebalance

    plan = plan_rebalance(policy.apply_groups(view.snapshot), policy.rules, policy.limits,
                          target_spread_pct=policy.rebalance.target_spread_pct,
                          max_moves=policy.rebalance.max_moves)
    if not plan.moves:
        return []
    inc = Incident(id=f"inc-rebalance-{int(now * 1000)}", kind=IncidentKind.REBALANCE, host="", rule=rule.name,
                   policy=policy.name, opened_at=now, phase=IncidentPhase.ACTING,
                   reason=f"memory use spread {spread:.0f}% above {rule.trigger.threshold_pct:g}%")
    return [OpenIncident(inc), WriteIntents(inc.id, plan.moves, dry_run=policy.dry_run)]


def _sentence(out: list[Decision], view: View) -> str:
    parts: list[str] = []
    for d in out:
        if isinstance(d, Resume):
            parts.append(f"resumed ({d.reason})")
        elif isinstance(d, OpenIncident):
            parts.append(f"opened {d.incident.id} ({d.incident.kind.value}: {d.incident.reason})")
        elif isinstance(d, UpdateIncident):
            parts.append(f"{d.incident.id}: {d.note}")
        elif isinstance(d, RequestFence):
            parts.append(f"requested fencing of {d.host}")
        elif isinstance(d, RecordProof):
            parts.append(f"{d.proof.incident}: recorded fence proof {d.proof.id} ({d.proof.fence.value})")
        elif isinstance(d, WriteIntents):
            verb = "would write" if d.dry_run else "wrote"
            parts.append(f"{verb} {len(d.moves)} intent(s) for {d.incident}"
                         + (f", {len(d.unplaced)} VM(s) not moved" if d.unplaced else ""))
        elif isinstance(d, CloseIncident):
            parts.append(f"closed {d.incident}: {d.outcome}")
    if parts:
        return "; ".join(parts)
    running = sum(1 for i in view.intents if not i.state.terminal)
    if running:
        return f"waiting on {running} intent(s) in {len(view.incidents)} incident(s)"
    stuck = sorted(i.id for i in view.incidents.values() if i.phase is IncidentPhase.NEEDS_HUMAN)
    if stuck:
        return f"{', '.join(stuck)} need(s) a human; nothing else to do"
    waiting = sorted(f"{i.id} ({i.phase.value})" for i in view.incidents.values())
    if waiting:
        return f"waiting on {', '.join(waiting)}"
    unwell = sorted(f"{n} {h.state.value}" for n, h in view.snapshot.hosts.items() if h.state is not HostState.HEALTHY)
    if unwell:
        return f"nothing to do ({', '.join(unwell)}, no VMs to move)"
    return f"all {len(view.snapshot.hosts)} hosts steady; nothing to do"


__all__ = ["tick", "View", "Incident", "IncidentKind", "IncidentPhase", "IntentView", "TickResult",
           "Settings", "Decision", "Freeze", "Resume", "OpenIncident", "UpdateIncident", "RequestFence", "RecordProof",
           "incident_proof",
           "WriteIntents", "CloseIncident", "memory_spread_pct", "TROUBLED", "troubled_for"]
