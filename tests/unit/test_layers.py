"""The layer rules hold: import-linter's contracts in pyproject.toml ([tool.importlinter]).

The contracts (pure parts do no I/O, libvirt/etcd3/grpc only in their adapters, production code
never imports the lab, adapters never import the parts above them, the layers) are checked by
`lint-imports`; a broken one fails here with lint-imports' report, which names the contract and
the import chain that breaks it. The second test shows the check can fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The venv's console script sits next to its python (not resolved: the venv's bin dir).
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: pip install -e '.[test]' (deploy/install.sh does)"
    # --no-cache: a cached graph can miss a new import; wide COLUMNS: no wrapped contract names.
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "COLUMNS": "200"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layer_contracts_hold() -> None:
    result = lint_imports(REPO, REPO)
    if result.returncode != 0:
        pytest.fail(f"layer contracts broken (lint-imports):\n{result.stdout}{result.stderr}", pytrace=False)


def test_a_store_import_in_placement_breaks_the_pure_contract(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "drctl", src / "drctl", ignore=shutil.ignore_patterns("__pycache__"))
    placement = src / "drctl" / "planning" / "placement.py"
    placement.write_text(placement.read_text() + "\nimport drctl.store\n")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    shutil.copy(REPO / "pyproject.toml", config_dir / "pyproject.toml")

    result = lint_imports(config_dir, src)

    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "pure parts do no I/O BROKEN" in report
    assert "drctl.planning.placement -> drctl.store" in report  # the copy was analysed, not the repo
