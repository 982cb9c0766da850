"""Cluster operation on loopback, and the shipped job configs.

The documented local cluster (``scripts/cluster.sh up``: a Ray head on 127.0.0.1 with free
ports, its own temp dir and a new token in a 0600 file) started while another Ray holds Ray's
default ports; every listener of ours on loopback; ``ray job submit --working-dir .
--runtime-env deploy/runtime_env.yaml`` of the quickstart (the entrypoint is this interpreter,
never a bare ``python`` from PATH); the job is polled to SUCCEEDED; ``ray job logs`` / ``ray job
status`` are read; the store it wrote is opened with xarray and checked against the kernels
computed here. ``scripts/cluster.sh down`` stops exactly our processes (the other Ray lives on;
never ``ray stop``: that stops every Ray on the machine).

The config half: every YAML in configs/ validates against its job's model, and every job entry
point in jobs/ turns a typo or a bad value into exit code 2 and a message naming the key.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import pytest
import yaml

from conftest import kill_processes
from jntk_dist.workflows.config import ConfigError, JobConfig, load_config
from jntk_dist.workflows.local_cluster import LocalCluster, cluster_pids, port_free

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = str(Path(sys.executable).with_name("ray"))
# Jobs run the interpreter that runs the tests, never a bare `python` from PATH: with the venv not
# activated that is whatever `python` the machine has (often one without torch).
PYTHON = sys.executable
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# ---- the shipped configs ----------------------------------------------------------------


def _job_models() -> dict[str, type[JobConfig]]:
    """Job name (jobs/<name>.py) -> the config model its entry point validates."""
    from jntk_dist.workflows.assumption8 import Assumption8JobConfig
    from jntk_dist.workflows.eigen import EigenJobConfig
    from jntk_dist.workflows.eigenfeatures import EigenfeaturesJobConfig
    from jntk_dist.workflows.solve import SolveJobConfig
    from jntk_dist.workflows.drift import DriftConfig
    from jntk_dist.workflows.gram import GramJobConfig

    return {"gram": GramJobConfig, "solve": SolveJobConfig, "eigen": EigenJobConfig,
            "eigenfeatures": EigenfeaturesJobConfig, "assumption8": Assumption8JobConfig,
            "drift": DriftConfig}


def _job_of_config(path: Path) -> str:
    """configs/<job>_<variant>.yaml belongs to jobs/<job>.py; the quickstart is a Gram job and
    the full-dataset configs (mnist, cifar10) are solve jobs."""
    stem = path.stem
    named = {"quickstart": "gram", "mnist": "solve", "cifar10": "solve"}
    if stem in named:
        return named[stem]
    jobs = sorted((p.stem for p in (REPO / "jobs").glob("*.py")), key=len, reverse=True)
    for job in jobs:  # longest first: eigenfeatures_* is not an eigen config
        if stem == job or stem.startswith(job + "_"):
            return job
    raise AssertionError(f"{path.name}: no jobs/<job>.py matches its name; name shipped configs "
                         f"<job>_<variant>.yaml so users (and this test) know which job runs them")


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Entry points that take no job config: they run other jobs (configs/paper/) or read results.
RUNNERS = {"reproduce", "report"}
CONFIG_JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem not in RUNNERS)


def test_every_job_has_a_model_and_a_config() -> None:
    models = _job_models()
    assert set(CONFIG_JOBS) == set(models), \
        f"jobs/ {CONFIG_JOBS} vs known models {sorted(models)} (runners: {sorted(RUNNERS)})"
    covered = {_job_of_config(p) for p in CONFIGS}
    assert covered == set(CONFIG_JOBS), f"jobs without a config: {set(CONFIG_JOBS) - covered}"
    assert (REPO / "configs" / "quickstart.yaml").exists()


def test_paper_configs_validate_as_job_configs(tmp_path: Path) -> None:
    from jntk_dist.workflows.reproduce import job_config, paper_configs

    experiments = paper_configs()
    assert experiments
    for exp in experiments:
        for quick in (False, True):
            cfg = job_config(exp, tmp_path, quick=quick, materialise=False)
            assert isinstance(cfg, _job_models()[exp.job])


@pytest.mark.parametrize("job", sorted(RUNNERS))
def test_runner_entry_points_answer_help(job: str) -> None:
    rc, text = _run_job_main(job, ["--help"])
    assert rc == 0 and "usage:" in text, text


def test_report_defaults_beside_the_runs_and_spares_tracked_files(tmp_path: Path) -> None:
    """`jntk report` states its defaults, writes <runs>/reproduction.md by default, and refuses
    a default path that git tracks (it once replaced the committed docs/reproduction.md)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: nothing is tracked")
    rc, text = _run_job_main("report", ["--help"])
    assert rc == 0 and "(default: runs/paper)" in text and "<runs>/reproduction.md" in text, text
    runs = tmp_path / "runs"
    runs.mkdir()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    committed = runs / "reproduction.md"
    committed.write_text("the committed report\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", str(committed)], check=True)
    rc, text = _run_job_main("report", ["--runs", str(runs), "--only", "b7"])
    assert rc == 2 and "tracked by git" in text and str(committed) in text, text
    assert committed.read_text() == "the committed report\n"
    # Named explicitly, it is written (the hand-written text above the marker is kept).
    rc, text = _run_job_main("report", ["--runs", str(runs), "--only", "b7",
                                        "--out", str(committed)])
    assert rc == 0 and f"report: {committed}" in text, text
    assert committed.read_text().startswith("the committed report")
    # Untracked: the default path is written.
    subprocess.run(["git", "-C", str(tmp_path), "rm", "-qf", "--cached", str(committed)],
                   check=True)
    committed.unlink()
    rc, text = _run_job_main("report", ["--runs", str(runs), "--only", "b7"])
    assert rc == 0 and committed.exists() and (runs / "figures").is_dir(), text


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    model = _job_models()[_job_of_config(path)]
    config = load_config(path, model)
    assert isinstance(config, model)
    # Round trip: what a store records as its config validates again to the same thing.
    assert model.model_validate(config.to_dict()).to_dict() == config.to_dict()


def _load_job_main(job: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_jobs_{job}", REPO / "jobs" / f"{job}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _run_job_main(job: str, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            rc = _load_job_main(job)(argv)
        except SystemExit as exc:  # argparse (--help, bad flags)
            rc = int(exc.code or 0)
    return rc, out.getvalue()


@pytest.mark.parametrize("job", CONFIG_JOBS)
def test_job_entry_point_rejects_typos_naming_the_key(job: str, tmp_path: Path) -> None:
    config = next(p for p in CONFIGS if _job_of_config(p) == job)
    data = yaml.safe_load(config.read_text())
    first = next(iter(data))
    rc, text = _run_job_main(job, ["--help"])
    assert rc == 0 and "--set" in text, text

    # A misspelt top-level key in the file.
    data[first + "x"] = data.pop(first)
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(data))
    rc, text = _run_job_main(job, [str(typo)])
    assert rc == 2, text
    assert f"{first}x: unknown key" in text and str(typo) in text, text

    # A misspelt key given on the command line.
    rc, text = _run_job_main(job, [str(config), "--set", "outptu=somewhere.zarr"])
    assert rc == 2 and "outptu: unknown key" in text, text


@pytest.mark.parametrize("override, key", [("kernel.depth=0", "kernel.depth"),
                                           ("kernel.activation=relu", "kernel.activation"),
                                           ("kernel.dtype=float16", "kernel.dtype"),
                                           ("store=sparse", "store"),
                                           ("ray.num_actors=-1", "ray.num_actors")])
def test_quickstart_bad_values_name_the_key(override: str, key: str) -> None:
    from jntk_dist.workflows.gram import GramJobConfig

    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "quickstart.yaml", GramJobConfig, [override])
    assert f"  {key}:" in str(err.value)


# ---- a head on loopback, beside another Ray ---------------------------------------------


@dataclass
class Head:
    address: str          # the Jobs API (dashboard), http://127.0.0.1:<port>
    port: int
    env: dict[str, str]   # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<this head's token file>
    token: str
    cluster: LocalCluster


def _get(url: str, token: str | None, timeout: float = 5.0) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _start_other_ray(temp_dir: Path) -> subprocess.Popen:
    """Another user's Ray: `ray start --head` on Ray's default ports (GCS 6379, dashboard 8265,
    agent 52365, client 10001, metrics 44217/44227), its own temp dir and process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    log = open(temp_dir / "other.log", "wb")
    return subprocess.Popen([RAY_CLI, "start", "--head", "--block", "--temp-dir", str(temp_dir),
                             "--num-cpus", "1", "--disable-usage-stats"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop_other_ray(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Kill what _start_other_ray started: its process group and whatever carries its temp dir."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):  # a stand-in: no need to wait
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    strays = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and any(str(temp_dir) in a for a in p.cmdline()):
                strays.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    kill_processes(strays)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _cluster_sh(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The documented command, with this interpreter (no install step)."""
    env = {**os.environ, "INSTALL": "0", "VENV": "system", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "scripts" / "cluster.sh"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """`scripts/cluster.sh up` while another Ray holds the default ports; `down` at the end must
    stop every process of ours and none of the other Ray's."""
    other_dir = Path(tempfile.mkdtemp(prefix="ro", dir="/tmp"))  # short: socket paths are limited
    other = _start_other_ray(other_dir)
    state = tmp_path_factory.mktemp("cluster")
    try:
        deadline = time.monotonic() + 150
        while port_free(52365):  # the dashboard agent's default port, the one that clashed
            assert other.poll() is None, (other_dir / "other.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the other Ray's agent did not come up"
            time.sleep(1)
        # Someone else's Ray may hold the defaults already (then ours exits): the clash is there.
        other_runs = other.poll() is None
        up = _cluster_sh("up", "--dir", str(state), "--num-cpus", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        cluster = LocalCluster.load(state)
        assert cluster is not None
        token_file = Path(cluster.token_file)
        token = token_file.read_text().strip()
        assert token not in up.stdout + up.stderr and token_file.stat().st_mode & 0o777 == 0o600
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        yield Head(cluster.address, cluster.ports["dashboard"], env, token, cluster)
        assert other.poll() is None or not other_runs, "the other Ray died while ours ran"
        pids = set(cluster_pids(cluster))
        down = _cluster_sh("down", "--dir", str(state))
        assert down.returncode == 0, down.stdout + down.stderr
        alive = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"processes of the local cluster survived down: {alive}"
        assert other.poll() is None or not other_runs, "down stopped the other Ray"
        assert not Path(cluster.temp_dir).exists() and not token_file.exists()
        assert _cluster_sh("status", "--dir", str(state)).returncode == 1
    finally:
        _cluster_sh("down", "--dir", str(state))
        _stop_other_ray(other, other_dir)


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _ray(head: Head, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY_CLI, *args], env=head.env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _client(head: Head) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {head.token}"})


def _wait(head: Head, job_id: str, timeout: float = 240) -> str:
    client = _client(head)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s; logs:\n"
                       + client.get_job_logs(job_id)[-3000:])


def test_jobs_api_needs_the_token_and_everything_stays_on_loopback(head: Head) -> None:
    assert _get(f"{head.address}/api/jobs/", head.token) == 200
    assert _get(f"{head.address}/api/jobs/", None) in (401, 403)
    assert _get(f"{head.address}/api/jobs/", "not-the-token") in (401, 403)
    status = _cluster_sh("status", "--dir", head.cluster.state_dir)
    assert status.returncode == 0 and "(answers)" in status.stdout, status.stdout
    pids = set(cluster_pids(head.cluster))
    listeners = [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    ports = {port for _, port, _ in listeners}
    # Every port it picked that Ray opens is open (the metrics exporter, the Ray Client server
    # and the object manager may open later or not at all), and nothing listens beyond loopback.
    picked = head.cluster.ports
    assert {picked[k] for k in ("gcs", "dashboard", "agent_http", "node_manager")} <= ports, \
        (picked, listeners)
    exposed = [entry for entry in listeners if not _is_loopback(entry[0])]
    assert not exposed, f"listening beyond loopback: {exposed} (all: {listeners})"


def _submit(head: Head, job_id: str, *entrypoint: str) -> None:
    submitted = _ray(head, "job", "submit", "--address", head.address, "--submission-id", job_id,
                     "--working-dir", ".", "--runtime-env", "deploy/runtime_env.yaml",
                     "--no-wait", "--", *entrypoint)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr


def test_submit_quickstart_poll_logs_status_and_open_store(head: Head, tmp_path: Path) -> None:
    """Two jobs at once: the quickstart (must succeed) and one with a config typo (must fail)."""
    import xarray as xr

    from jntk_dist import kernels
    from jntk_dist.data import load_dataset
    from jntk_dist.store import open_gram

    typo_id = f"typo-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "quickstart.zarr"
    job_id = f"quickstart-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(2) as pool:  # two `ray job submit` processes side by side
        submissions = [
            pool.submit(_submit, head, typo_id, PYTHON, "jobs/gram.py", "configs/quickstart.yaml",
                        "--set", "kernel.depht=3", "--set", f"output={tmp_path / 'never.zarr'}"),
            pool.submit(_submit, head, job_id, PYTHON, "jobs/gram.py", "configs/quickstart.yaml",
                        "--set", f"output={out}", "--no-progress")]
        for done in submissions:
            done.result()

    assert _wait(head, typo_id) == "FAILED"
    typo_logs = _client(head).get_job_logs(typo_id)
    assert "kernel.depht: unknown key" in typo_logs, typo_logs[-2000:]
    assert not (tmp_path / "never.zarr").exists()

    assert _wait(head, job_id) == "SUCCEEDED", _client(head).get_job_logs(job_id)
    logs = _ray(head, "job", "logs", "--address", head.address, job_id)
    assert logs.returncode == 0, logs.stderr
    # The driver joined this cluster (RAY_ADDRESS) instead of embedding a Ray of its own.
    assert "joining the Ray cluster" in logs.stdout, logs.stdout[-3000:]
    assert f"store: {out}" in logs.stdout
    status = _ray(head, "job", "status", "--address", head.address, job_id)
    assert status.returncode == 0 and f"Job '{job_id}' succeeded" in status.stdout, status.stdout

    ds = xr.open_zarr(str(out))
    assert ds["gram"].dims == ("gram_row", "gram_col")
    X = load_dataset("forest_fires").X
    n, d0 = X.shape
    assert ds["gram"].shape == (n * (d0 + 1), n * (d0 + 1))
    np.testing.assert_array_equal(ds["X"].values, X)
    store = open_gram(out)
    assert store.is_complete and store.depth == 3 and store.activation == "gelu"
    # Rows of points 0..2 against points 0..2 and the last three (different tiles), computed here.
    idx = np.r_[0:3, n - 3:n]
    expected = kernels.to_gram(kernels.jntk(X[:3], X[idx], depth=3, activation="gelu"))
    rows = np.arange(3 * (d0 + 1))
    cols = (idx[:, None] * (d0 + 1) + np.arange(d0 + 1)).ravel()
    got = ds["gram"][: rows.size].values[:, cols]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
