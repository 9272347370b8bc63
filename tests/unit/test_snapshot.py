"""Snapshot file: round trip, formats, and bad input naming the offending field; `drctl plan` I/O."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from drctl.cli.main import cli
from drctl.model.errors import ConfigError
from drctl.model.cluster import HostState, StorageKind
from drctl.model.snapshot import dump_snapshot, load_snapshot, parse_snapshot, save_snapshot

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "snapshot-small.json"


def _doc() -> dict:
    return {
        "hosts": [
            {"name": "hv1", "memory_mib": 65536, "cpus": 32, "labels": {"rack": "r1"}},
            {"name": "hv2", "memory_mib": 65536, "cpus": 32, "state": "degraded"},
        ],
        "vms": [
            {"name": "web-1", "host": "hv1", "memory_mib": 2048},
            {"name": "db-1", "host": "hv2", "memory_mib": 4096, "disks": [{"name": "vda", "size_gib": 20, "storage": "local", "pool": "local"}]},
        ],
    }


def test_minimal_document_gets_model_defaults() -> None:
    snap = parse_snapshot(_doc())
    assert snap.hosts["hv2"].state is HostState.DEGRADED
    assert snap.hosts["hv1"].labels == {"rack": "r1"} and snap.hosts["hv1"].incoming_limit == 2
    assert snap.vms["db-1"].disks[0].storage is StorageKind.LOCAL and snap.vms["db-1"].local_disk_gib == 20


def test_example_round_trips(tmp_path: Path) -> None:
    snap = load_snapshot(EXAMPLE)
    out = tmp_path / "again.json"
    save_snapshot(snap, out)
    assert load_snapshot(out) == snap
    assert dump_snapshot(load_snapshot(out)) == json.loads(EXAMPLE.read_text())


def test_yaml_and_mapping_form(tmp_path: Path) -> None:
    doc = {
        "hosts": {"hv1": {"memory_mib": 1024, "cpus": 2}},
        "vms": {"web-1": {"host": "hv1", "memory_mib": 512}},
    }
    path = tmp_path / "snap.yaml"
    path.write_text(yaml.safe_dump(doc))
    snap = load_snapshot(path)
    assert snap.vms["web-1"].host == "hv1" and snap.hosts["hv1"].name == "hv1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["vms"][1].pop("memory_mib"), "vms[1].memory_mib: missing required field"),
        (lambda d: d["vms"][0].update(host="hvX"), "vms[0].host: unknown host 'hvX'"),
        (lambda d: d["vms"][1].update(memory_mib=-1), "vms[1].memory_mib: must be >= 0"),
        (lambda d: d["vms"][1]["disks"][0].update(size_gib=-5), "vms[1].disks[0].size_gib: must be >= 0"),
        (lambda d: d["hosts"][0].update(memory_mb=1), "hosts[0].memory_mb: unknown field"),
        (lambda d: d["hosts"][1].update(state="sleepy"), "hosts[1].state: must be one of healthy"),
        (lambda d: d["hosts"][1].update(cpus=True), "hosts[1].cpus: must be an integer"),
        (lambda d: d["hosts"].append(dict(d["hosts"][0])), "hosts[2].name: duplicate host 'hv1'"),
        (lambda d: d.pop("vms"), "vms: missing required field"),
    ],
)
def test_bad_input_names_the_field(mutate, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        parse_snapshot(doc, "snap.json")
    assert str(err.value).startswith(f"snap.json: {message}")


def test_mapping_form_paths_use_names() -> None:
    doc = {"hosts": {"hv1": {"memory_mib": 1, "cpus": 1}}, "vms": {"web-1": {"host": "hvX", "memory_mib": 1}}}
    with pytest.raises(ConfigError, match=r"vms\.web-1\.host: unknown host 'hvX'"):
        parse_snapshot(doc)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"hosts": [\n  {"name": }\n]}')
    with pytest.raises(ConfigError, match=r"bad.json: line 2 column"):
        load_snapshot(path)


# ------------------------------------------------------------------ drctl plan


def _write(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_plan_bad_snapshot_exits_2_and_prints_no_plan(tmp_path: Path) -> None:
    doc = _doc()
    doc["vms"][0]["memory_mib"] = -3
    result = CliRunner().invoke(cli, ["plan", "--snapshot", _write(tmp_path, doc), "--evacuate", "hv1"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"drctl: error: {tmp_path}/snap.json: vms[0].memory_mib: must be >= 0"


def test_plan_unknown_evacuate_host_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plan", "--snapshot", _write(tmp_path, _doc()), "--evacuate", "hv9"])
    assert result.exit_code == 2 and result.stdout == "" and "unknown host 'hv9'" in result.stderr


def test_plan_needs_exactly_one_mode(tmp_path: Path) -> None:
    path = _write(tmp_path, _doc())
    assert CliRunner().invoke(cli, ["plan", "--snapshot", path]).exit_code == 2
    assert CliRunner().invoke(cli, ["plan", "--snapshot", path, "--rebalance", "--evacuate", "hv1"]).exit_code == 2


def test_plan_json_all_placed_exits_0(tmp_path: Path) -> None:
    doc = _doc()
    doc["hosts"][0]["storage_pools"] = ["local"]  # where db-1's local disk can be created
    result = CliRunner().invoke(cli, ["plan", "--snapshot", _write(tmp_path, doc), "--evacuate", "hv2", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [(m["vm"], m["src"], m["dst"], m["wave"]) for m in plan["moves"]] == [("db-1", "hv2", "hv1", 1)]
    assert plan["unplaced"] == [] and plan["summary"]["placed"] == 1


def test_plan_example_table_exits_3_with_unplaced() -> None:
    result = CliRunner().invoke(cli, ["plan", "--snapshot", str(EXAMPLE), "--evacuate", "hv1"])
    assert result.exit_code == 3
    assert "license-1" in result.stdout and "vm is not migratable" in result.stdout


def test_plan_real_entry_point_exit_codes(tmp_path: Path) -> None:
    """Through `main()`, as an operator runs it (no CliRunner in between)."""
    run = [sys.executable, "-m", "drctl.cli.main", "plan", "--snapshot"]
    bad = subprocess.run([*run, str(tmp_path / "missing.json"), "--rebalance"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    partial = subprocess.run([*run, str(EXAMPLE), "--evacuate", "hv1", "--json"], capture_output=True, text=True)
    assert partial.returncode == 3 and json.loads(partial.stdout)["summary"]["unplaced"] == 1


def test_plan_with_policy(tmp_path: Path) -> None:
    policy = Path(__file__).resolve().parents[2] / "policies" / "proactive-evacuation.yaml"
    result = CliRunner().invoke(cli, ["plan", "--snapshot", str(EXAMPLE), "--policy", str(policy), "--rebalance", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["kind"] == "rebalance"


def test_plan_with_bad_policy_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 99\nnot: [valid\n")
    result = CliRunner().invoke(cli, ["plan", "--snapshot", str(EXAMPLE), "--policy", str(bad), "--evacuate", "hv1"])
    assert result.exit_code == 2 and result.stdout == "" and result.stderr.startswith("drctl: error: ")
