#!/usr/bin/env bash
# One command on a fresh clone: make ./.venv if absent, install what is missing (torch as a CPU
# build, then this package), and run the quickstart -- the JNTK Gram of the forest-fires data into
# runs/quickstart.zarr, on an embedded Ray. Rerun: installs nothing, resumes/checks the store.
#   ./scripts/quickstart.sh                       # extra arguments go to `jntk gram`, e.g. --overwrite
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128 ./scripts/quickstart.sh     # CUDA torch
# Knobs (VENV, PYTHON, TORCH_SPEC, TORCH_INDEX, INSTALL): scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
jntk_bootstrap ""
exec "$PY" -m jntk_dist.cli gram configs/quickstart.yaml "$@"
