"""scripts/quickstart.sh, scripts/test.sh, .ci/run and the README's install: what they install
and run, against a stand-in interpreter that records its calls (no network); pytest collecting
nothing fails .ci/run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from deploy_files import REPO


# ---- the install scripts ----------------------------------------------------------------

_FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in interpreter: logs `-m pip|pytest|jntk_dist.cli ...` calls, makes a venv as a folder.
case "$1 $2" in
    "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
    "-m pip"|"-m jntk_dist.cli") echo "$*" >> "$FAKE_LOG" ;;
    "-m pytest") echo "$*" >> "$FAKE_LOG"; exit "${FAKE_PYTEST_RC:-0}" ;;
    *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def _run_script(script: str, tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    fake = tmp_path / "python3"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("VENV", "TORCH_SPEC", "TORCH_INDEX", "INSTALL", "VIRTUAL_ENV")}
    full_env.update({"PYTHON": str(fake), "VENV": str(tmp_path / "venv"), "FAKE_LOG": str(log),
                     "REAL_PYTHON": sys.executable, **env})
    proc = subprocess.run(["bash", script, *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, proc.stdout + proc.stderr


def test_test_script_makes_a_venv_installs_cpu_torch_then_the_package(tmp_path: Path) -> None:
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path, "-x")
    assert rc == 0, out
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert calls == [
        "-m pip install --progress-bar off --no-deps torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cpu",
        "-m pip install --progress-bar off -e .[dev]",
        "-m pytest -q --timeout=900 --durations=15 -x",
    ]
    # A rerun installs nothing; the quickstart needs nothing more than the [dev] install.
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path)
    assert rc == 0 and calls == ["-m pytest -q --timeout=900 --durations=15"], (calls, out)
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path, "--overwrite")
    assert rc == 0 and calls == ["-m jntk_dist.cli gram configs/quickstart.yaml --overwrite"], out


def test_quickstart_script_installs_only_the_package_and_knobs_apply(tmp_path: Path) -> None:
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path,
                                 TORCH_INDEX="https://download.pytorch.org/whl/cu128",
                                 TORCH_SPEC="torch==2.13.0")
    assert rc == 0, out
    assert calls == [
        "-m pip install --progress-bar off --no-deps torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cu128",
        "-m pip install --progress-bar off -e .",
        "-m jntk_dist.cli gram configs/quickstart.yaml",
    ]
    # Another torch choice is a new install; TORCH_INDEX=pypi leaves the index to pip.
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path,
                                 TORCH_INDEX="pypi")
    assert rc == 0 and calls[0] == "-m pip install --progress-bar off --no-deps torch==2.13.0", out
    # INSTALL=0 runs with what is there; VENV=system installs into $PYTHON itself.
    rc, calls, out = _run_script(str(REPO / "scripts" / "quickstart.sh"), tmp_path, INSTALL="0",
                                 VENV=str(tmp_path / "absent"))
    assert rc != 0 and "no interpreter" in out and not calls
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path, VENV="system")
    assert rc == 0 and len(calls) == 3 and not (tmp_path / "system").exists(), out


def test_scripts_refuse_an_old_python(tmp_path: Path) -> None:
    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    rc, calls, out = _run_script(str(REPO / "scripts" / "test.sh"), tmp_path, PYTHON=str(old))
    assert rc != 0 and "older than Python 3.10" in out and not calls


def test_ci_fails_when_pytest_collects_nothing(tmp_path: Path) -> None:
    rc, calls, out = _run_script(str(REPO / ".ci" / "run"), tmp_path, FAKE_PYTEST_RC="5")
    assert rc == 1 and "collected no tests" in out, out
    assert calls[-1].startswith("-m pytest")
    rc, _, out = _run_script(str(REPO / ".ci" / "run"), tmp_path, FAKE_PYTEST_RC="1")
    assert rc == 1
    # For real: the suite's own pytest, with a selection that matches nothing.
    proc = subprocess.run(
        ["bash", ".ci/run", "tests/test_deploy.py", "-k", "no_such_test_anywhere",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "INSTALL": "0", "VENV": "system", "PYTHON": sys.executable})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "collected no tests" in proc.stderr


def test_readme_install_is_the_two_scripts() -> None:
    readme = (REPO / "README.md").read_text()
    install = readme[:readme.index("\n## ")]
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert f"./{script}" in install
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    # The CPU/CUDA choice is spelt out with the index URLs the scripts and the Dockerfile use.
    assert "https://download.pytorch.org/whl/cpu" in install
    assert re.search(r"https://download\.pytorch\.org/whl/cu\d+", install)
