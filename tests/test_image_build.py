"""The deploy image for real: deploy/build_image.sh builds deploy/Dockerfile with podman (from the
registry's python:3.11-slim, or a Debian bookworm base made with debootstrap where no registry
answers), runs the quickstart and `jntk verify` inside it offline; then the image is inspected
here, independently of the script: a CPU torch, Python 3.11, a non-root user, no token.

Skips, saying why, where podman is not installed (most CI machines: the suite never installs it)
or where the user is not root (debootstrap and podman's storage here need root). A first build
downloads Debian packages and the Python dependencies (minutes; docs/image.md has the times);
later builds reuse the base and the cached layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/jntk-dist:0.1.0-test"

pytestmark = pytest.mark.slow


def _podman(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.timeout(3600)
def test_image_builds_and_runs_the_quickstart(tmp_path: Path) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman buildah runc debootstrap); "
                    "deploy/build_image.sh needs it")
    if os.geteuid() != 0:
        pytest.skip("deploy/build_image.sh runs as root here (debootstrap, podman's storage)")
    env = {**os.environ, "IMAGE": IMAGE, "JNTK_IMAGE_DIR": str(Path.home() / ".cache/jntk-image")}
    proc = subprocess.run(["bash", "deploy/build_image.sh"], cwd=REPO, capture_output=True,
                          text=True, timeout=3500, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"image {IMAGE} built from ") and "checked" in summary, summary

    # The script's containers.conf (runc, cgroupfs, no default ulimits) for the checks below.
    env["CONTAINERS_CONF"] = str(Path(env["JNTK_IMAGE_DIR"]) / "containers.conf")
    probe = ("import json, sys, torch, jntk_dist, os; print(json.dumps({'python': "
             "list(sys.version_info[:2]), 'cuda': torch.version.cuda, 'torch': torch.__version__, "
             "'uid': os.getuid(), 'pkg': jntk_dist.__file__}))")
    # From /tmp: in the WORKDIR `python -c` would import the copied source tree, not the install.
    run = _podman("run", "--rm", "--network", "none", "--workdir", "/tmp", IMAGE, "python", "-c",
                  probe, env=env)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["python"] == [3, 11], facts
    assert facts["cuda"] is None and facts["torch"].startswith("2.13.0"), facts  # the CPU build
    assert facts["uid"] == 1000, facts
    assert "/site-packages/jntk_dist/" in facts["pkg"], facts  # installed, not the source tree
    inspect = _podman("image", "inspect", IMAGE, env=env)
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)[0]["Config"]
    image_env = dict(v.split("=", 1) for v in config["Env"])
    assert image_env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in image_env
    # Build arguments that point at this machine's wheels or certificates stay out of the image.
    assert not {"PIP_FIND_LINKS", "PIP_CERT"} & set(image_env), image_env
    size_mb = int(json.loads(inspect.stdout)[0]["Size"]) / 1e6
    assert size_mb < 3000, f"the CPU image is {size_mb:.0f} MB: a CUDA torch or a cache crept in"
