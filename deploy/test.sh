#!/usr/bin/env bash
# Run drctl's whole test suite: fast pure/simulated tests and the tests against a real
# etcd and the real libvirt lab (the fixtures start both, and stop what they started).
# Extra arguments go to pytest, e.g. `deploy/test.sh -m "not lab"` for the fast half.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh >/dev/null
exec .venv/bin/pytest -q "$@"
