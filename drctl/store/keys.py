"""The etcd key layout (docs/architecture.md), in one place so no module spells a key by hand.

    <prefix>leader/<lease-hex>           election (lowest create_revision leads)
    <prefix>hosts/<host>/health          graded health, bound to the agent's lease
    <prefix>hosts/<host>/witness/<peer>  peer observations, bound to the peer's lease
    <prefix>hosts/<host>/inventory       capacity, CPU model, networks, storage, labels
    <prefix>hosts/<host>/maintenance     drain requests
    <prefix>vms/<vm>                     placement record (where it must run)
    <prefix>vm-definitions/<vm>          the domain definition, to restart a VM elsewhere
    <prefix>incidents/<id>               incident record
    <prefix>intents/<id>                 one VM move, with state, attempts, term
    <prefix>intent-claims/<id>           the runner that holds an intent, bound to its lease
    <prefix>fence-proofs/<host>          the host's fencing proof for its current incident
                                         (model/proof.py): what every restart intent names

Names (hosts, VMs, ids) must not contain "/": a name with one would read back as a
different record, so it is refused here rather than found later in a listing.
"""
from __future__ import annotations

from dataclasses import dataclass


def _name(kind: str, value: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"invalid {kind} name for an etcd key: {value!r}")
    return value


@dataclass(frozen=True)
class Keys:
    prefix: str = "/drctl/"

    def __post_init__(self) -> None:
        if not self.prefix.endswith("/"):
            # Without it "/drctl" would also match "/drctl-staging/..." in prefix scans.
            raise ValueError(f"key prefix must end with '/': {self.prefix!r}")

    # ------------------------------------------------------------ election
    def leader_prefix(self) -> str:
        return f"{self.prefix}leader/"

    def leader(self, lease_id: int) -> str:
        return f"{self.leader_prefix()}{lease_id:x}"

    # ------------------------------------------------------------ hosts
    def hosts_prefix(self) -> str:
        return f"{self.prefix}hosts/"

    def host_prefix(self, host: str) -> str:
        return f"{self.hosts_prefix()}{_name('host', host)}/"

    def health(self, host: str) -> str:
        return f"{self.host_prefix(host)}health"

    def witness_prefix(self, host: str) -> str:
        return f"{self.host_prefix(host)}witness/"

    def witness(self, host: str, peer: str) -> str:
        """What `peer` observed about `host`."""
        return f"{self.witness_prefix(host)}{_name('peer', peer)}"

    def inventory(self, host: str) -> str:
        return f"{self.host_prefix(host)}inventory"

    def maintenance(self, host: str) -> str:
        return f"{self.host_prefix(host)}maintenance"

    def parse_host_key(self, key: str) -> tuple[str, str] | None:
        """`(host, rest)` for a key under hosts/, e.g. ("hv1", "witness/hv2"); else None."""
        base = self.hosts_prefix()
        if not key.startswith(base):
            return None
        host, sep, rest = key[len(base):].partition("/")
        return (host, rest) if sep and host and rest else None

    # ------------------------------------------------------------ VMs
    def vms_prefix(self) -> str:
        return f"{self.prefix}vms/"

    def vm(self, name: str) -> str:
        return f"{self.vms_prefix()}{_name('vm', name)}"

    def vm_definitions_prefix(self) -> str:
        return f"{self.prefix}vm-definitions/"

    def vm_definition(self, name: str) -> str:
        return f"{self.vm_definitions_prefix()}{_name('vm', name)}"

    # ------------------------------------------------------------ incidents and intents
    def incidents_prefix(self) -> str:
        return f"{self.prefix}incidents/"

    def incident(self, incident_id: str) -> str:
        return f"{self.incidents_prefix()}{_name('incident', incident_id)}"

    def intents_prefix(self) -> str:
        return f"{self.prefix}intents/"

    def intent(self, intent_id: str) -> str:
        return f"{self.intents_prefix()}{_name('intent', intent_id)}"

    def intent_claims_prefix(self) -> str:
        return f"{self.prefix}intent-claims/"

    def intent_claim(self, intent_id: str) -> str:
        return f"{self.intent_claims_prefix()}{_name('intent', intent_id)}"

    # ------------------------------------------------------------ the restart gate
    def fence_proofs_prefix(self) -> str:
        return f"{self.prefix}fence-proofs/"

    def fence_proof(self, host: str) -> str:
        return f"{self.fence_proofs_prefix()}{_name('host', host)}"

    @staticmethod
    def last_segment(key: str) -> str:
        """The name at the end of a key: `vms/web-3` -> `web-3`."""
        return key.rsplit("/", 1)[-1]
