#!/usr/bin/env bash
# A local Ray cluster for `ray job submit`, safe beside other Ray instances on the machine:
#   ./scripts/cluster.sh up [--num-cpus 2]   # head on 127.0.0.1, free ports, own temp dir, new token
#   source runs/cluster/env.sh               # RAY_API_SERVER_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH
#   ray job submit --working-dir . --runtime-env deploy/runtime_env.yaml -- python jobs/gram.py …
#   ./scripts/cluster.sh status
#   ./scripts/cluster.sh down                # stops exactly what `up` started (never `ray stop`)
# The token is written to runs/cluster/auth_token (0600) and never printed. --dir moves the state
# folder (default runs/cluster). Installs like scripts/quickstart.sh (knobs: scripts/bootstrap.sh);
# the venv goes first on PATH, so a job's bare `python` is the venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
jntk_bootstrap ""
# The module by its file, not `-m jntk_dist.workflows.local_cluster`: it needs only the standard
# library, and importing the package would import torch first (5-10 s for every status/down).
exec "$PY" -c '
import importlib.util, sys
spec = importlib.util.spec_from_file_location("local_cluster", "jntk_dist/workflows/local_cluster.py")
module = importlib.util.module_from_spec(spec)
sys.modules["local_cluster"] = module
spec.loader.exec_module(module)
sys.exit(module.main(sys.argv[1:]))' "$@"
