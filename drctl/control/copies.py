"""Which copy of a VM counts, when libvirt shows more than one (pure; issue 12 cases 6, 12).

A VM found running on two hosts is a breach of drctl's first promise: it is contained at
once, not only reported. The copy that counts is the one the VM's last intent put there (a
move that completed), else the one its placement record names; a VM whose move is still in
flight is the runner's to contain (it holds the source of a given-up migration), and a VM
whose authoritative copy cannot be told is reported, never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from drctl.model.cluster import IntentState
from drctl.model.records import PlacementRecord


@dataclass(frozen=True)
class IntentFacts:
    """What this decision needs of one intent."""

    id: str
    incident: str
    vm: str
    dst: str
    state: IntentState
    updated: float


@dataclass(frozen=True)
class Authority:
    """`keep` is the copy that counts ("" when it cannot be told; `why` says why)."""

    keep: str
    why: str
    intent: str = ""
    incident: str = ""


def authoritative_copy(vm: str, hosts: Iterable[str], intents: Iterable[IntentFacts],
                       placements: Mapping[str, PlacementRecord]) -> Authority:
    running = sorted(hosts)
    mine = sorted((i for i in intents if i.vm == vm), key=lambda i: i.updated)
    open_ = [i for i in mine if not i.state.terminal]
    if open_:
        return Authority("", f"intent {open_[-1].id} is {open_[-1].state.value}: the runner contains it",
                         open_[-1].id, open_[-1].incident)
    last = mine[-1] if mine else None
    ids = {"intent": last.id, "incident": last.incident} if last else {}
    if last is not None and last.state is IntentState.DONE and last.dst in running:
        return Authority(last.dst, f"intent {last.id} moved it to {last.dst}", **ids)
    placed = placements.get(vm)
    if placed is not None and placed.host in running:
        return Authority(placed.host, f"its placement record names {placed.host}"
                         + (f" (intent {last.id} ended {last.state.value})" if last else ""), **ids)
    return Authority("", f"neither its last intent nor its placement names one of {', '.join(running)}", **ids)
