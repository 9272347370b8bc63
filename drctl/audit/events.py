"""Audit event names and the fields each must carry: the contract of the audit trail.

Every component emits through `drctl.audit.writer.emit(events.X, **fields)`; `drctl postmortem`,
`drctl audit show` and `drctl replay` read these names back, so a renamed event or a
missing id silently drops facts from a report. docs/audit.md explains each event at
length; this module is the machine-readable copy (tests check the two agree).

Fields every line has (added by drctl.audit.writer): ts, component, level, event, prev.
Ids that tie an incident together: incident, intent, vm, host, term, attempt.
No event may use `prev` as a field: it is the hash-chain link.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

COMMON_FIELDS = ("ts", "component", "level", "event", "prev")


@dataclass(frozen=True)
class EventSpec:
    name: str
    doc: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


_SPECS: dict[str, EventSpec] = {}


def _ev(name: str, doc: str, required: str, optional: str = "") -> str:
    _SPECS[name] = EventSpec(name, doc, tuple(required.split()), tuple(optional.split()))
    return name


# ---------------------------------------------------------------- hosts and detection
HOST_STATE_CHANGED = _ev("host.state_changed", "A host's graded state changed (healthy/degraded/failing/unreachable/dead).",
                         "host from to reason", "evidence incident")
HOST_HEARTBEAT_LOST = _ev("host.heartbeat_lost", "A host's agent lease expired: the host stopped talking to etcd.",
                          "host", "lease last_seen ttl_s")
WITNESS_REPORTED = _ev("witness.reported", "A peer (witness) reported whether it can still reach a host.",
                       "host witness reachable", "detail lease_seen")
HOST_QUORUM_UNREACHABLE = _ev("host.quorum_unreachable",
                              "A host has fewer witnesses than the fixed witness quorum: it can never be declared dead.",
                              "host witnesses quorum", "reason")

HEALTH_GRADED = _ev("health.graded", "A host's agent graded its own health anew (the earliest sign of trouble).",
                    "host from to reason", "probe value threshold")
PROBE_GRADED = _ev("probe.graded", "One health probe of an agent changed grade.",
                   "host probe from to reason", "value threshold")

# ---------------------------------------------------------------- agents
AGENT_STARTED = _ev("agent.started", "A host's agent started.", "host", "probes ttl_s")
AGENT_STOPPED = _ev("agent.stopped", "A host's agent stopped.", "host")
AGENT_REGISTERED = _ev("agent.registered", "The agent holds a fresh lease and published its host.",
                       "host lease ttl_s")
AGENT_LEASE_LOST = _ev("agent.lease_lost", "The agent's own lease lapsed (it will register again).",
                       "host lease ttl_s")
AGENT_STORE_UNAVAILABLE = _ev("agent.store_unavailable", "The agent cannot reach etcd.", "host error")
AGENT_STORE_RECOVERED = _ev("agent.store_recovered", "The agent reaches etcd again.", "host")
INVENTORY_PUBLISHED = _ev("inventory.published", "The agent published its host's VMs.", "host vms_changed")

# ---------------------------------------------------------------- incidents
INCIDENT_OPENED = _ev("incident.opened", "An incident (one episode of host trouble) was opened; its id ties everything after.",
                      "incident host trigger policy", "kind term")
INCIDENT_CLOSED = _ev("incident.closed", "An incident ended; outcome is resolved, partial or failed.",
                      "incident host outcome", "reason term vms_moved vms_failed")
SNAPSHOT_RECORDED = _ev("snapshot.recorded", "The cluster snapshot the incident's decisions were made on (for replay).",
                        "incident snapshot", "rules limits term")

# ---------------------------------------------------------------- controller
CONTROLLER_ELECTED = _ev("controller.elected", "This controller replica became leader with a new term.",
                         "term", "reason")
CONTROLLER_DEPOSED = _ev("controller.deposed", "This controller replica lost leadership.",
                         "term reason")
CONTROLLER_FROZE = _ev("controller.froze", "The controller stopped acting (suspected partition / etcd trouble).",
                       "term reason", "hosts")
CONTROLLER_RESUMED = _ev("controller.resumed", "The controller acts again after a freeze.",
                         "term reason")
CONTROLLER_STARTED = _ev("controller.started", "A controller replica process started.", "name policy runner")
CONTROLLER_STORE_UNAVAILABLE = _ev("controller.store_unavailable",
                                   "A controller replica cannot reach etcd: it decides nothing until etcd answers.",
                                   "name error")
CONTROLLER_STORE_RECOVERED = _ev("controller.store_recovered", "A controller replica reaches etcd again.",
                                 "name", "outage_s")
CONTROLLER_VIEW_FAILED = _ev("controller.view_failed", "A tick could not read the cluster.", "error")
RECORD_UNREADABLE = _ev("record.unreadable", "A record in etcd could not be parsed; it is skipped, reported once.",
                        "key error", "field")
CONTROLLER_DECISION_FAILED = _ev("controller.decision_failed", "Carrying out one decision of a tick failed.",
                                 "decision error")
ELECTION_CAMPAIGNED = _ev("election.campaigned", "A replica put its key in the leader election.",
                          "candidate key revision")
TICK_COMPLETED = _ev("tick.completed", "One controller tick finished; sentence says what it did.",
                     "sentence", "term incident decisions")

# ---------------------------------------------------------------- decisions
PLACEMENT_DECIDED = _ev("placement.decided", "A destination was chosen for a VM, with every candidate considered.",
                        "incident vm src dst score candidates", "intent reason policy")
PLACEMENT_FAILED = _ev("placement.failed", "No eligible destination for a VM; candidates say why each host was rejected.",
                       "incident vm src candidates reason")
INTENT_CREATED = _ev("intent.created", "An intent (one VM move) was written to etcd, guarded by the leader's term.",
                     "incident intent vm src dst kind term", "wave predicted_s predicted_downtime_ms")
INTENT_STATE_CHANGED = _ev("intent.state_changed", "An intent moved through the state table.",
                           "incident intent vm src dst from to attempt term reason", "policy")
INTENT_RETARGETED = _ev("intent.retargeted", "Fallback: an intent switched to its next candidate destination.",
                        "incident intent vm src old_dst dst reason", "attempt")
INTENT_RESUMED = _ev("intent.resumed", "A new leader or runner picked up an unfinished intent.",
                     "incident intent vm state term")

# ---------------------------------------------------------------- migration (libvirt job statistics)
MIGRATION_STARTED = _ev("migration.started", "A libvirt live migration began (one attempt).",
                        "intent vm src dst attempt", "incident flags bandwidth_mibs max_downtime_ms")
MIGRATION_PROGRESSED = _ev("migration.progressed", "In-flight job statistics from the source (jobStats()).",
                           "intent vm iteration memory_remaining dirty_rate bps", "incident data_processed disk_remaining")
MIGRATION_ESCALATED = _ev("migration.escalated", "A non-converging migration took the next escalation step.",
                          "intent vm step reason", "incident attempt")
MIGRATION_COMPLETED = _ev("migration.completed", "Completed job statistics: total_ms, downtime_ms, data_bytes, iterations.",
                          "intent vm src dst total_ms downtime_ms data_bytes iterations", "incident attempt mode")
MIGRATION_FAILED = _ev("migration.failed", "One migration attempt failed; the source VM keeps running.",
                       "intent vm src dst attempt error", "incident code transient")
MIGRATION_ABORTED = _ev("migration.aborted", "The runner aborted an in-flight migration (stall, timeout, operator).",
                        "intent vm reason", "incident attempt")
PRECHECK_COMPLETED = _ev("precheck.completed", "The runner's pre-checks of a destination (each check: ok or why not).",
                         "intent vm host ok checks", "incident")
STORAGE_PREPARED = _ev("storage.prepared", "Local disks were prepared on the destination before a copy-storage move.",
                       "intent vm host detail", "incident")
INTENT_OUTCOME_UNKNOWN = _ev("intent.outcome_unknown", "Where the VM runs cannot be told: the intent is parked.",
                             "intent vm detail", "incident")
MIGRATION_SOURCE_HELD = _ev("migration.source_held",
                            "After a migration the runner gave up on, the source is kept paused while the destination "
                            "does not answer (its incoming copy could still run).", "intent vm src dst", "incident detail")
MIGRATION_INCOMING_REMOVED = _ev("migration.incoming_removed",
                                 "A given-up migration's incoming copy on the destination was destroyed and undefined "
                                 "(the source still holds the VM).", "intent vm host state", "incident")
MIGRATION_SOURCE_RELEASED = _ev("migration.source_released",
                                "The held source runs again: the destination's copy is confirmed gone (or fenced).",
                                "intent vm src reason", "incident")
RUNNER_GAVE_UP = _ev("runner.gave_up", "The runner let go of an intent another writer changed under it.",
                     "intent reason", "incident vm")
RUNNER_PAUSED = _ev("runner.paused", "The replica's runner stopped taking intents (store trouble).", "error")
RUNNER_RESUMED = _ev("runner.resumed", "The replica's runner reaches the store again and takes intents.", "",
                     "paused_s")
RUNNER_LEASE_RENEWED = _ev("runner.lease_renewed", "The runner's lease had expired; it took a fresh one and serves again.",
                           "runner", "old new")
RETRY_SCHEDULED = _ev("retry.scheduled", "A transient failure will be retried after sleep_s (tenacity hook).",
                      "attempt error", "fn sleep_s incident intent vm")

# ---------------------------------------------------------------- dead host: evidence, fencing, restart
EVIDENCE_RECORDED = _ev("evidence.recorded", "One piece of evidence that a host is dead (lease, witnesses, quorum).",
                        "incident host kind detail", "witnesses quorum met")
FENCE_REQUESTED = _ev("fence.requested", "A fence agent was asked to power off / isolate a host.",
                      "incident host agent", "term resumed")
FENCE_SUCCEEDED = _ev("fence.succeeded", "A fence agent confirmed the host is off.",
                      "incident host agent", "detail term")
FENCE_FAILED = _ev("fence.failed", "A fence agent failed; restarts must not proceed on its word.",
                   "incident host agent error", "term")
INTENT_PARK_EXPIRED = _ev("intent.park_expired", "A migration parked with its source unknown and the VM nowhere else was given up (failed).",
                          "incident intent vm src dst parked_s", "detail")
INCIDENT_KIND_CHANGED = _ev("incident.kind_changed", "An incident changed kind: an evacuation or drain whose host died became a recovery.",
                            "incident host from to reason", "term")
FENCE_PROOF_RECORDED = _ev("fence.proof_recorded", "The leader recorded a host's fence proof: restart intents may name it.",
                           "incident host proof fence term", "agent detail")
RESTART_REFUSED = _ev("restart.refused", "A restart was not planned, written or started: its fence proof does not back it.",
                      "incident vm src reason", "intent proof")
VM_RESTARTED = _ev("vm.restarted", "A VM of a fenced host was defined and started on another host.",
                   "incident intent vm src dst", "attempt boot_ms")
VM_VERIFIED = _ev("vm.verified", "Where a VM runs was checked after a move (exactly once, guest alive).",
                  "intent vm host ok", "incident detail")

VM_STOPPED_UNREQUESTED = _ev("vm.stopped_unrequested",
                              "A VM drctl manages was found stopped on a live host for a reason nobody asked for "
                              "(crashed, a failed start, dropped by libvirtd); a start was asked for.",
                              "vm host reason", "attempt max_attempts window_s incident")
VM_RECOVERY_EXHAUSTED = _ev("vm.recovery_exhausted",
                            "A VM stopped without a request again after its bound of starts within the window: "
                            "left to a human.", "vm reason")
VM_STARTED_AGAIN = _ev("vm.started_again", "The runner started a VM where it had stopped without a request.",
                       "incident intent vm host reason", "boot_ms")
VM_DUPLICATE_DETECTED = _ev("vm.duplicate_detected", "Inventories list a VM running on two hosts (never fixed by guessing).",
                            "vm hosts", "placement")
VM_DUPLICATE_STOPPED = _ev("vm.duplicate_stopped",
                           "A VM ran on two hosts: the copy that is not authoritative was stopped at once.",
                           "vm host kept reason", "incident intent")
VM_STALE_COPY_REMOVED = _ev("vm.stale_copy_removed", "A shut-off copy left on a returning host was undefined.",
                            "vm host reason")
AGENT_STALE_COPY = _ev("agent.stale_copy",
                       "On start-up an agent found a local copy of a VM placed on another host and acted on it "
                       "(stopped, autostart off, undefined when the VM runs on its placement host; or kept, as "
                       "the only copy).", "vm host placement actions reason", "state")
AGENT_STARTUP_CHECK_PENDING = _ev("agent.startup_check_pending",
                                  "A starting agent could not yet check its host's domains against the placement "
                                  "records (etcd or libvirtd did not answer); it publishes nothing until it has.",
                                  "host error")
VM_DEFINITION_NOT_OWNED = _ev("vm.definition_not_owned",
                              "An agent left a VM definition record alone: the VM's placement names another host, "
                              "whose record it is.", "vm host owner")

# ---------------------------------------------------------------- the store
STORE_CALLBACK_FAILED = _ev("store.callback_failed", "A callback given to the store raised; the store goes on.",
                            "callback error", "lease")
STORE_LEASE_LOST = _ev("store.lease_lost", "A lease the store kept alive was lost.", "lease ttl reason")
STORE_WATCH_RESUMED = _ev("store.watch_resumed", "A broken watch was resumed from its next revision.",
                          "prefix from_revision", "attempts cause")
STORE_WATCH_STOPPED = _ev("store.watch_stopped", "A watch could not be resumed and stopped.", "prefix error")

SCHEMA: Mapping[str, EventSpec] = dict(_SPECS)


class EvidenceSource(str, Enum):
    """`kind` of evidence.recorded: where a piece of evidence that a host is dead came from."""

    VERDICT = "verdict"  # the controller's health verdict (lease gone, witnesses)
    FENCE = "fence"  # a fence agent confirmed the host is off


class IncidentOutcome(str, Enum):
    """`outcome` of incident.closed: how many of the incident's VMs were moved."""

    RESOLVED = "resolved"  # all of them
    PARTIAL = "partial"  # some
    FAILED = "failed"  # none


def missing_fields(event: Mapping[str, Any]) -> tuple[str, ...]:
    """Required fields an event line lacks (empty for unknown event names)."""
    spec = SCHEMA.get(str(event.get("event", "")))
    return tuple(f for f in spec.required if f not in event) if spec else ()
