"""The pure parts type-check under mypy --strict (configured in pyproject.toml, [tool.mypy]).

The modules checked are the ones the strict override in pyproject.toml names (the one that sets
disallow_untyped_defs), so the list lives in one place. Imported modules outside it are followed silently: they are checked leniently by
`mypy drctl`, not here. A type error fails this test with mypy's report.
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def strict_targets() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [o for o in config.get("overrides", []) if o.get("disallow_untyped_defs")]
    assert len(strict) == 1, "expected one strict override in [tool.mypy] listing the pure modules"
    args = []
    for module in strict[0]["module"]:
        # "pkg.*" covers a package's modules: -p checks the package (its __init__ too).
        args += ["-p", module.removesuffix(".*")] if module.endswith(".*") else ["-m", module]
    return args


def test_strict_targets_name_the_pure_parts() -> None:
    targets = strict_targets()
    for part in ("drctl.model", "drctl.policy", "drctl.planning", "drctl.control.tick",
                 "drctl.control.vm_recovery", "drctl.health.grading", "drctl.runner.convergence"):
        assert part in targets


def test_pure_parts_type_check_strictly() -> None:
    # cwd = the repository: mypy reads its pyproject.toml and keeps its cache in .mypy_cache/.
    cmd = [sys.executable, "-m", "mypy", "--follow-imports=silent", *strict_targets()]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"mypy found type errors in the pure parts:\n{result.stdout}{result.stderr}", pytrace=False)
