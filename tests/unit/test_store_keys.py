from __future__ import annotations

import pytest

from drctl.store.keys import Keys


def test_layout_under_the_default_prefix() -> None:
    k = Keys()
    assert k.leader(0x694D) == "/drctl/leader/694d"
    assert k.health("hv1") == "/drctl/hosts/hv1/health"
    assert k.witness("hv1", "hv2") == "/drctl/hosts/hv1/witness/hv2"
    assert k.inventory("hv1") == "/drctl/hosts/hv1/inventory"
    assert k.maintenance("hv1") == "/drctl/hosts/hv1/maintenance"
    assert k.vm("web-3") == "/drctl/vms/web-3"
    assert k.vm_definition("web-3") == "/drctl/vm-definitions/web-3"
    assert k.incident("inc-1") == "/drctl/incidents/inc-1"
    assert k.intent("mig-1") == "/drctl/intents/mig-1"
    assert k.intent_claim("mig-1") == "/drctl/intent-claims/mig-1"
    # prefixes never overlap with each other's keys
    assert not k.vm_definition("x").startswith(k.vms_prefix())
    assert not k.intent_claim("x").startswith(k.intents_prefix())


def test_parse_host_key_round_trips() -> None:
    k = Keys("/staging/")
    assert k.parse_host_key(k.witness("hv1", "hv2")) == ("hv1", "witness/hv2")
    assert k.parse_host_key(k.health("hv1")) == ("hv1", "health")
    assert k.parse_host_key(k.vm("hv1")) is None
    assert Keys.last_segment(k.vm("web-3")) == "web-3"


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_names_with_a_slash_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Keys().vm(bad)


def test_prefix_must_end_with_a_slash() -> None:
    with pytest.raises(ValueError):
        Keys("/drctl")
