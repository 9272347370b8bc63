"""Skip a test only where skipping is honest.

On a developer's machine a missing tool (chromium, etcd, root) skips the tests that need
it. Under CI (`CI` set, as `.ci/run` runs) the same gap fails instead: `.ci/run` installs
everything, so a skip there would hide a missing install step.
"""
from __future__ import annotations

import os

import pytest


def skip_unless(present: bool, reason: str) -> None:
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} - and CI is meant to have it (see deploy/install.sh, .ci/run)")
    pytest.skip(reason)


def needs(present: bool, reason: str) -> pytest.MarkDecorator:
    """Decorator form: the test runs under CI regardless, and fails there if `present` is
    False (its first use of the missing tool says why)."""
    return pytest.mark.skipif(not present and not os.environ.get("CI"), reason=reason)
