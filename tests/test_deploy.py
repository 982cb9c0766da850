"""deploy/Dockerfile, checked as far as this machine allows (no container engine): the installs
are scripts/bootstrap.sh's (torch pinned, from the same index, first; then the package);
dependencies are installed from pyproject.toml alone, before the code is copied (layer cache); the
metrics exporter is off in the image's Ray environment (a real head started with it opens none).
The other deploy files: test_deploy_cluster.py (runtime_env, cluster launcher),
test_deploy_kuberay.py, test_deploy_scripts.py (install scripts, .ci/run),
test_deploy_security.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kill_processes
from deploy_files import DEPLOY, REPO, apt_packages, dockerfile, dockerfile_env, image_requirements

# ---- Dockerfile -------------------------------------------------------------------------


def _expand(s: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), s)


def _pip_installs(command: str) -> list[list[str]]:
    """The words after `pip install` of each pip install in a shell line."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", ";", "||", "|", ">", "<"):
            parts.append([])
        else:
            parts[-1].append(word)
    return [words[words.index("install") + 1:] for words in parts
            if "pip" in words and "install" in words]


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def _bootstrap_default(name: str) -> str:
    m = re.search(r'\$\{' + name + r':-([^}]*)\}', (REPO / "scripts" / "bootstrap.sh").read_text())
    assert m, f"scripts/bootstrap.sh has no default for {name}"
    return m[1]


def test_dockerfile_installs_as_the_scripts_do() -> None:
    args, steps = dockerfile()
    base = _expand(next(a for op, a in steps if op == "FROM"), args)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim", base), base
    installs = [(i, w) for i, (op, a) in enumerate(steps) if op == "RUN"
                for w in _pip_installs(_expand(a, args))]
    # torch first, pinned as the scripts pin it, from the index the scripts use by default.
    first_i, torch = installs[0]
    assert [w for w in torch if not w.startswith("-") and w != _option(torch, "--index-url")] \
        == [_bootstrap_default("TORCH_SPEC")]
    assert _option(torch, "--index-url") == _bootstrap_default("TORCH_INDEX") \
        == "https://download.pytorch.org/whl/cpu"
    # Then the dependencies, from pyproject.toml alone: nothing that changes with the code is
    # copied before them, so a code change reuses the torch and dependency layers.
    deps_i, deps = next((i, w) for i, w in installs if "-r" in w)
    package_i, package = next((i, w) for i, w in installs if "." in w)
    assert first_i < deps_i < package_i
    copied_before = [a for op, a in steps[:deps_i] if op == "COPY"]
    assert [w for a in copied_before for w in a.split()[:-1] if not w.startswith("--")] \
        == ["pyproject.toml"], copied_before
    assert "--no-deps" in package
    copied_before_package = " ".join(a for op, a in steps[:package_i] if op == "COPY")
    assert "jntk_dist" in copied_before_package and "README.md" in copied_before_package
    # The dependency list is pyproject's dependencies and its s3 extra (s3fs, boto3).
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert image_requirements() == [
        r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["s3"]]
    # Everything COPY'd exists.
    for op, arg in steps:
        if op == "COPY":
            for src in [w for w in arg.split() if not w.startswith("--")][:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    users = [a for op, a in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = dockerfile_env(steps)
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env
    assert env["RAY_enable_metrics_collection"] == "0"
    assert {"procps", "tini", "rsync", "wget"} <= apt_packages(steps)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignore and "runs" in ignore and ".venv" in ignore


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_the_shipped_ray_environment_turns_the_metrics_exporter_off(tmp_path: Path) -> None:
    """A real head with the image's RAY_* environment: its dashboard agent starts no Prometheus
    exporter (on a node whose IP is not loopback it would listen on 0.0.0.0 without a token; here
    the head is on 127.0.0.1, the agent's own record of its exporter port says whether it is on)."""
    import socket
    import time
    import uuid

    image_env = {k: v for k, v in dockerfile_env(dockerfile()[1]).items() if k.startswith("RAY_")}
    assert image_env["RAY_enable_metrics_collection"] == "0"
    temp_dir = Path("/tmp") / f"rd{uuid.uuid4().hex[:8]}"  # short: socket paths are limited
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")}
    env.update(image_env, RAY_AUTH_TOKEN=token)
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = \
        _free_ports(9)
    ray_cli = str(Path(sys.executable).parent / "ray")
    cmd = [ray_cli, "start", "--head", "--block", "--temp-dir", str(temp_dir),
           "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port",
           str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--num-cpus", "1", "--object-store-memory", str(100 * 1024 ** 2),
           "--disable-usage-stats"]
    temp_dir.mkdir()
    log_path = tmp_path / "head.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        record = None
        while record is None:
            assert proc.poll() is None, "ray start exited:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no agent came up:\n" + log_path.read_text()[-3000:]
            found = sorted(temp_dir.glob("session_*/metrics_export_port_*"))
            if found and found[0].read_text().strip():
                record = found[0].read_text().strip()
            time.sleep(1)
        assert record == "-1", f"the dashboard agent exports metrics on port {record}"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", metrics), timeout=2).close()
    finally:
        _stop_ray_head(proc, temp_dir, token)


def _stop_ray_head(proc: subprocess.Popen, temp_dir: Path, token: str) -> None:
    """End the head started by the test and every process of its temp dir or token."""
    import shutil
    import signal

    import psutil

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    strays = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and (any(str(temp_dir) in a for a in p.cmdline())
                                         or p.environ().get("RAY_AUTH_TOKEN") == token):
                strays.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    kill_processes(strays)
    shutil.rmtree(temp_dir, ignore_errors=True)
