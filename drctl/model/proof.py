"""The fencing proof: what makes a restart safe (docs/controller.md, "The restart gate").

A VM may be defined and started elsewhere only when its old host cannot run it any more.
The leader records that, once per host and incident, as a `FenceProof` under
`fence-proofs/<host>` (store/keys.py), written in the same guarded transaction that moves the
incident on, so only the leader of `term` can write it. Every restart intent carries the
proof's id; the tick plans restarts only for an incident whose proof it sees, the loop
writes restart intents only under a compare on the proof record, and the runner reads the
record again right before `define`/`start` and refuses a restart it does not back.

This module is the record's one type and one parser (with model/records.py's RecordReader,
so it fails like every other record), and the one check all three use. Pure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

from drctl.model.records import RecordReader


class FenceBasis(str, Enum):
    """What a fence proof rests on."""

    OFF = "off"  # a fence agent confirmed the host is powered off
    WAIVED = "waived"  # the policy says explicitly that restarts need no fence (`fence: waived`)


@dataclass(frozen=True)
class FenceProof:
    id: str  # "<incident>@<term>": the intent's `proof` names it
    host: str
    incident: str
    term: int  # the controller term that fenced the host (or recorded the waiver)
    evidence: tuple[str, ...]  # what proved it dead first, e.g. ("lease-expired", "witnesses")
    fence: FenceBasis
    agent: str = ""  # fence agent name ("" when waived)
    detail: str = ""  # the agent's answer, or the policy that waived the fence
    at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"id": self.id, "host": self.host, "incident": self.incident, "term": self.term,
                           "evidence": list(self.evidence), "fence": self.fence.value, "agent": self.agent,
                           "detail": self.detail, "at": self.at}, sort_keys=True).encode()


def proof_id(incident: str, term: int) -> str:
    return f"{incident}@{term}"


def parse_proof(key: str, raw: bytes) -> FenceProof:
    """The one parser of a fence-proof record; RecordError naming the field otherwise. An
    unreadable proof backs nothing: callers treat it as absent (and report it)."""
    r = RecordReader(key, raw)
    return FenceProof(id=r.text("id"), host=r.text("host"), incident=r.text("incident"), term=r.integer("term"),
                      evidence=r.texts("evidence"), fence=r.enum("fence", FenceBasis), agent=r.text("agent", ""),
                      detail=r.text("detail", ""), at=r.number("at", 0.0))


def proof_problem(proof: FenceProof | None, *, proof_ref: str, host: str, incident: str) -> str:
    """Why `proof` does not back a restart of a VM from `host` for `incident` by an intent
    naming `proof_ref`; "" when it does."""
    if not proof_ref:
        return "the intent names no fence proof"
    if proof is None:
        return f"no fence proof is recorded for {host}"
    if proof.id != proof_ref:
        return f"the fence proof of {host} is {proof.id}, not {proof_ref} (a newer incident, or a forged intent)"
    if proof.host != host or proof.incident != incident:
        return f"fence proof {proof.id} is for {proof.host}/{proof.incident}, not {host}/{incident}"
    if proof.fence not in (FenceBasis.OFF, FenceBasis.WAIVED):
        return f"fence proof {proof.id} does not say {host} is off"
    return ""
