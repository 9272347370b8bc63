"""Typed records in etcd: one parser each, unknown fields tolerated (rolling upgrades),
a record that cannot be read named with its key and field, reported once and skipped
(issue 12 case 13)."""
from __future__ import annotations

import json

import pytest

from drctl.audit import writer as audit
from drctl.clock import SimClock
from drctl.control.intents import IntentParams, create_intents, list_intents, new_intent
from drctl.model.cluster import IntentKind, Move
from drctl.store.keys import Keys
from drctl.store.memory import MemoryStore

KEYS = Keys()


@pytest.fixture
def world():  # type: ignore[no-untyped-def]
    clock = SimClock()
    sink = audit.configure("test", clock=clock.now, keep_in_memory=True)
    store = MemoryStore(clock)
    yield store, sink
    store.close()


def _intent(vm: str, intent_id: str):  # type: ignore[no-untyped-def]
    return new_intent(Move(vm, "hv1", "hv2", IntentKind.MIGRATE, "test"), "inc-1", 1, 100.0, IntentParams(),
                      intent_id=intent_id)


def test_a_new_field_and_a_malformed_intent_do_not_stop_the_listing(world) -> None:  # type: ignore[no-untyped-def]
    store, sink = world
    assert create_intents(store, KEYS, [_intent("web-1", "mig-a"), _intent("web-2", "mig-b")])
    # a newer controller added a field (rolling upgrade), also inside params
    newer = json.loads(store.get(KEYS.intent("mig-a")).value)
    newer["witnessed_by"] = {"incident": "inc-1", "term": 3}  # not a field this release knows
    newer["params"]["new_knob"] = 7
    store.put(KEYS.intent("mig-a"), json.dumps(newer).encode())
    # and one record nobody can read
    store.put(KEYS.intent("mig-c"), b'{"id": "mig-c", "kind": "migrate", "state": "pending", "vm": 12}')
    for _ in range(3):  # every runner pass lists intents: reported once, not every pass
        assert [i.id for i in list_intents(store, KEYS)] == ["mig-a", "mig-b"]
    warned = [e for e in sink.lines if e["event"] == "record.unreadable"]
    assert len(warned) == 1
    assert warned[0]["key"] == KEYS.intent("mig-c") and "vm" in warned[0]["error"]


# ---------------------------------------------------------------- parsers: what writers write reads back


from drctl.config.settings import AgentConfig  # noqa: E402
from drctl.control.intents import set_placement  # noqa: E402
from drctl.health.inventory import read_host  # noqa: E402
from drctl.hypervisor.sim import SimCluster  # noqa: E402
from drctl.model.records import (Grade, HealthRecord, MaintenanceRecord, RecordError, WitnessReport,  # noqa: E402
                                 parse_definition, parse_health, parse_inventory, parse_maintenance,
                                 parse_placement, parse_witness)


def test_health_and_witness_round_trip() -> None:
    h = HealthRecord("hv1", Grade.DEGRADED, "edac 3", 12.5, 7, 1.0, 0xAB, {"edac": {"grade": "degraded"}})
    assert parse_health("k", h.to_json(), lease=0xAB) == h
    w = WitnessReport("hv1", "hv2", False, True, 12.5, 1.0, None, "refused")
    assert parse_witness("k", w.to_json()) == w


def test_placement_and_maintenance_write_what_they_wrote_before() -> None:
    store = MemoryStore(SimClock())
    it = _intent("web-1", "mig-a")
    set_placement(store, KEYS, it, "hv2", 5.0)
    raw = store.get(KEYS.vm("web-1")).value  # type: ignore[union-attr]
    before = {"vm": "web-1", "host": "hv2", "intent": "mig-a", "incident": "inc-1", "healthy": True, "updated": 5.0}
    assert raw == json.dumps(before, sort_keys=True).encode()
    assert parse_placement("k", raw).host == "hv2"
    m = MaintenanceRecord("hv1", "bios", "ops", 3.0)
    assert m.to_json() == json.dumps({"host": "hv1", "reason": "bios", "requested_by": "ops", "ts": 3.0}).encode()
    assert parse_maintenance("k", m.to_json()) == m


def test_inventory_and_definition_as_the_agent_writes_them() -> None:
    sim = SimCluster(SimClock())
    sim.add_host("hv1")
    hv = sim.connect(SimCluster.uri("hv1"))
    hv.define("<domain><name>web-1</name><memory unit='MiB'>256</memory><vcpu>2</vcpu></domain>")
    hv.start("web-1")
    view = read_host(hv, AgentConfig(host="hv1", libvirt_uri=SimCluster.uri("hv1"), labels={"rack": "r1"}), 9.0)
    inv = parse_inventory("k", json.dumps(view.inventory, sort_keys=True).encode())
    assert inv.host == "hv1" and inv.uri == "sim://hv1" and inv.labels == {"rack": "r1"} and inv.ts == 9.0
    assert inv.vm("web-1") is not None and inv.vm("web-1").state == "running"  # type: ignore[union-attr]
    d = parse_definition("k", view.definitions["web-1"])
    assert d.vm == "web-1" and d.host == "hv1" and "<name>web-1</name>" in d.xml and d.memory_mib == 256
    plain = parse_definition("k", b"<domain><name>db-1</name></domain>", vm="db-1")
    assert plain.vm == "db-1" and plain.xml.startswith("<domain>") and plain.host == ""


def test_unknown_fields_are_ignored_and_bad_types_name_key_and_field() -> None:
    assert parse_inventory("k", b'{"host": "hv1", "gpu": {"count": 2}}').host == "hv1"
    assert parse_health("k", b'{"host": "a", "grade": "healthy", "ts": 1, "new": 1}').ts == 1.0
    cases = [
        (parse_health, b'{"host": "a", "grade": "healthy", "ts": "soon"}', "ts", "expected a number"),
        (parse_health, b'{"host": "a", "grade": "sick", "ts": 1}', "grade", "'sick' is not one of"),
        (parse_witness, b'{"host": "a", "witness": "b", "ts": 1}', "libvirt_reachable", "missing"),
        (parse_inventory, b'{"vms": [{"name": "x", "memory_mib": "1G"}]}', "vms[0].memory_mib", "an integer"),
        (parse_inventory, b'{"labels": {"rack": 3}}', "labels.rack", "a string"),
        (parse_placement, b'[1, 2]', "", "not a JSON object"),
        (parse_maintenance, b'{"ts": true}', "ts", "a number"),
    ]
    for parse, raw, field_name, why in cases:
        with pytest.raises(RecordError) as e:
            parse("/drctl/some/key", raw)  # type: ignore[operator]
        assert e.value.key == "/drctl/some/key" and e.value.field == field_name, raw
        assert str(e.value).startswith("/drctl/some/key: ") and why in str(e.value), str(e.value)
