#!/usr/bin/env bash
# One command on a fresh clone: make ./.venv if absent, install what is missing (torch as a CPU
# build, then this package with its test extras) and run the test suite -- what .ci/run runs.
#   ./scripts/test.sh                             # the whole suite
#   ./scripts/test.sh tests/test_deploy.py -x     # extra arguments go to pytest
# Knobs (VENV, PYTHON, TORCH_SPEC, TORCH_INDEX, INSTALL): scripts/bootstrap.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
jntk_bootstrap "[dev]" || exit 1

"$PY" -m pytest -q --timeout=900 --durations=15 "$@"
rc=$?
# pytest exits 5 when it collected no tests (a typo in a path, a -k that matches nothing, a broken
# testpaths): that is a failure here, never a pass.
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
