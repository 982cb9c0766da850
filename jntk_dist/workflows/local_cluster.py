"""A one-machine Ray cluster that starts beside any other Ray on the machine.

``scripts/cluster.sh up|down|status`` (``python -m jntk_dist.workflows.local_cluster``) runs a Ray
head for ``ray job submit``:

* every listener on 127.0.0.1, on a port picked free at start -- GCS, dashboard / Jobs API,
  dashboard agent (HTTP and gRPC), runtime-env agent, Ray Client server, node and object
  manager, metrics exporter, the head's autoscaler and dashboard metrics servers -- and workers
  in a private port range (Ray's single-machine mode, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
  keeps ``--node-ip-address 127.0.0.1`` from being replaced by the machine's address);
* a private ``--temp-dir`` and a state folder (default ``runs/cluster``) holding
  ``cluster.json`` (pid, ports, paths), ``head.log``, ``env.sh`` (what ``ray job …`` needs:
  ``RAY_API_SERVER_ADDRESS``, ``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``) and
  ``auth_token``, a fresh random token in a 0600 file, never printed;
* ``down`` stops exactly what ``up`` started: the head's process group, then any process that
  carries its temp dir on its command line or its token file in its environment (job drivers
  run in sessions of their own). Never ``ray stop``, which stops every Ray on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LocalCluster", "cluster_up", "cluster_down", "cluster_status", "main"]

STATE_DIR = Path("runs/cluster")
# One free port each (picked at start); the last two have no `ray start` flag, only Ray's
# environment variables AUTOSCALER_METRIC_PORT and DASHBOARD_METRIC_PORT.
PORTS = ("gcs", "dashboard", "agent_http", "agent_grpc", "runtime_env_agent", "client_server",
         "node_manager", "object_manager", "metrics_export", "autoscaler_metrics",
         "dashboard_metrics")
WORKER_PORTS = 100          # a private range for worker and driver gRPC servers
WORKER_RANGE = (20000, 32000)  # below Linux's ephemeral ports, above Ray's default 10002-19999


@dataclass
class LocalCluster:
    """What ``up`` started: enough for ``down`` to stop exactly it and for users to reach it."""

    state_dir: str
    temp_dir: str
    pid: int                 # `ray start --head --block`, leader of its own process group
    ports: dict[str, int]
    worker_ports: list[int]  # [min, max]
    token_file: str
    started: str

    @property
    def address(self) -> str:
        """The Jobs API (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def save(self) -> None:
        """Write ``cluster.json`` into the state folder."""
        (Path(self.state_dir) / "cluster.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, state_dir: str | Path) -> LocalCluster | None:
        """The cluster recorded in ``state_dir``, or None when there is none."""
        path = Path(state_dir) / "cluster.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held together while picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on every interface now."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_range(n: int, tries: int = 50) -> list[int]:
    """``[lo, hi]`` with ``n`` consecutive ports free on every interface."""
    rng = random.Random()
    for _ in range(tries):
        lo = rng.randrange(WORKER_RANGE[0], WORKER_RANGE[1] - n)
        if all(port_free(p) for p in range(lo, lo + n)):
            return [lo, lo + n - 1]
    raise RuntimeError(f"no {n} consecutive free ports in {WORKER_RANGE}")


def _write_token(path: Path) -> None:
    """A fresh random token into a new 0600 file (never printed, never an old one reused)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def cluster_env(cluster: LocalCluster) -> dict[str, str]:
    """Environment for the head and for ``ray job …`` against it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=cluster.token_file,
               JNTK_LOCAL_CLUSTER=cluster.temp_dir,  # marks its processes for `down`
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               AUTOSCALER_METRIC_PORT=str(cluster.ports["autoscaler_metrics"]),
               DASHBOARD_METRIC_PORT=str(cluster.ports["dashboard_metrics"]))
    # The agent's Prometheus exporter off, as in deploy/ (set it to 1 to scrape Ray's metrics).
    env.setdefault("RAY_enable_metrics_collection", "0")
    return env


def _head_command(cluster: LocalCluster, num_cpus: int | None) -> list[str]:
    p = cluster.ports
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
           "--temp-dir", cluster.temp_dir, "--node-ip-address", "127.0.0.1",
           "--port", str(p["gcs"]), "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(p["dashboard"]),
           "--dashboard-agent-listen-port", str(p["agent_http"]),
           "--dashboard-agent-grpc-port", str(p["agent_grpc"]),
           "--runtime-env-agent-port", str(p["runtime_env_agent"]),
           "--ray-client-server-port", str(p["client_server"]),
           "--node-manager-port", str(p["node_manager"]),
           "--object-manager-port", str(p["object_manager"]),
           "--metrics-export-port", str(p["metrics_export"]),
           "--min-worker-port", str(cluster.worker_ports[0]),
           "--max-worker-port", str(cluster.worker_ports[1]), "--disable-usage-stats"]
    return cmd + (["--num-cpus", str(num_cpus)] if num_cpus is not None else [])


def _api_ok(cluster: LocalCluster) -> bool:
    """The Jobs API answers 200 with the token (and so does the agent's port accept)."""
    req = urllib.request.Request(f"{cluster.address}/api/jobs/")
    req.add_header("Authorization", f"Bearer {Path(cluster.token_file).read_text().strip()}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            if resp.status != 200:
                return False
        socket.create_connection(("127.0.0.1", cluster.ports["agent_http"]), timeout=2).close()
        return True
    except (OSError, urllib.error.URLError):
        return False


def _alive(cluster: LocalCluster) -> bool:
    try:
        return os.getpgid(cluster.pid) == cluster.pid and any(
            cluster.temp_dir in a for a in _cmdline(cluster.pid))
    except ProcessLookupError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cluster_up(state_dir: Path = STATE_DIR, num_cpus: int | None = None,
               timeout: float = 180) -> LocalCluster:
    """Start the head (see the module's docstring) and wait until its Jobs API answers."""
    state_dir = Path(state_dir).resolve()
    old = LocalCluster.load(state_dir)
    if old is not None and _alive(old):
        raise FileExistsError(f"a cluster from {state_dir} is running (pid {old.pid}, "
                              f"{old.address}); scripts/cluster.sh down first")
    cluster_down(state_dir)  # what a dead one left: its processes, temp dir, token
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "auth_token").unlink(missing_ok=True)
    ports = dict(zip(PORTS, free_ports(len(PORTS))))
    cluster = LocalCluster(str(state_dir), tempfile.mkdtemp(prefix="jntk-ray-", dir="/tmp"),
                           0, ports, free_port_range(WORKER_PORTS),
                           str(state_dir / "auth_token"), time.strftime("%Y-%m-%d %H:%M:%S"))
    _write_token(Path(cluster.token_file))
    with open(state_dir / "head.log", "wb") as log:
        proc = subprocess.Popen(_head_command(cluster, num_cpus), env=cluster_env(cluster),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    cluster.pid = proc.pid
    cluster.save()
    _write_env_sh(cluster)
    deadline = time.monotonic() + timeout
    while not _api_ok(cluster):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"not up after {timeout:.0f} s"
            tail = (state_dir / "head.log").read_text(errors="replace")[-2000:]
            cluster_down(state_dir)
            raise RuntimeError(f"the Ray head did not come up ({why}); "
                               f"{state_dir / 'head.log'} ends:\n{tail}")
        time.sleep(1)
    return cluster


def _write_env_sh(cluster: LocalCluster) -> None:
    lines = ["# source this file for `ray job …` against the local cluster (no secret in it)",
             f"export RAY_API_SERVER_ADDRESS={cluster.address}", "export RAY_AUTH_MODE=token",
             f"export RAY_AUTH_TOKEN_PATH={cluster.token_file}", "unset RAY_AUTH_TOKEN", ""]
    (Path(cluster.state_dir) / "env.sh").write_text("\n".join(lines))


def _ours(pid: int, cluster: LocalCluster) -> bool:
    """A process of this cluster: its temp dir on the command line or in the marker variable
    that only the head's environment holds (so never a shell that sourced env.sh)."""
    if any(cluster.temp_dir in a for a in _cmdline(pid)):
        return True
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"JNTK_LOCAL_CLUSTER={cluster.temp_dir}".encode() in environ


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def cluster_pids(cluster: LocalCluster) -> list[int]:
    """The processes of ``cluster`` (the head's group and those :func:`_ours` recognises), never
    this process or its ancestors."""
    spare = _ancestors()  # never this process or what runs it
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in spare:
            pid = int(entry.name)
            try:
                in_group = os.getpgid(pid) == cluster.pid
            except ProcessLookupError:
                continue
            if in_group or _ours(pid, cluster):
                pids.append(pid)
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cluster_down(state_dir: Path = STATE_DIR, grace: float = 10) -> list[int]:
    """Stop exactly the processes of the cluster recorded in ``state_dir``; returns their pids.
    SIGTERM first, SIGKILL after ``grace`` seconds; then the temp dir and the token go."""
    cluster = LocalCluster.load(state_dir)
    if cluster is None:
        return []
    pids = cluster_pids(cluster)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and cluster_pids(cluster):
        time.sleep(0.5)
    for _ in range(3):  # a driver may fork while we look; a few rounds catch them
        left = cluster_pids(cluster)
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        time.sleep(1)
    try:
        os.waitpid(cluster.pid, os.WNOHANG)  # reap it when this process started it
    except ChildProcessError:
        pass
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    for name in ("auth_token", "env.sh", "cluster.json"):
        (Path(state_dir) / name).unlink(missing_ok=True)
    return pids


def cluster_status(state_dir: Path = STATE_DIR) -> tuple[bool, str]:
    """(running, one paragraph for a user)."""
    cluster = LocalCluster.load(state_dir)
    if cluster is None:
        return False, f"no local cluster recorded in {state_dir}"
    if not _alive(cluster):
        return False, (f"the cluster recorded in {state_dir} (pid {cluster.pid}) is not running; "
                       "scripts/cluster.sh down cleans up after it")
    answers = "answers" if _api_ok(cluster) else "does NOT answer"
    return True, (f"running since {cluster.started}: head pid {cluster.pid}, "
                  f"{len(cluster_pids(cluster))} processes; Jobs API {cluster.address} ({answers}); "
                  f"GCS 127.0.0.1:{cluster.ports['gcs']}; temp dir {cluster.temp_dir}; "
                  f"token {cluster.token_file}")


def main(argv: list[str] | None = None) -> int:
    """``up`` / ``down`` / ``status``; exit 0 on success, 1 when not running, 2 on errors."""
    parser = argparse.ArgumentParser(
        prog="scripts/cluster.sh", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="A local Ray head on 127.0.0.1 with free ports, its own temp dir and token; "
                    "it works beside other Ray instances on the machine.")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=str(STATE_DIR), help="state folder (cluster.json, "
                        "env.sh, auth_token, head.log)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs the head offers (default: all of the machine's)")
    args = parser.parse_args(argv)
    state_dir = Path(args.dir)
    try:
        return _act(args.action, state_dir, args.num_cpus)
    except (FileExistsError, RuntimeError, OSError) as err:
        print(f"cluster {args.action}: error: {err}", file=sys.stderr)
        return 2


def _act(action: str, state_dir: Path, num_cpus: int | None) -> int:
    if action == "up":
        c = cluster_up(state_dir, num_cpus)
        env_sh = Path(c.state_dir) / "env.sh"
        print(f"Ray head up (pid {c.pid}): Jobs API {c.address}, GCS 127.0.0.1:{c.ports['gcs']}, "
              f"temp dir {c.temp_dir}, log {Path(c.state_dir) / 'head.log'}\n"
              f"token in {c.token_file} (0600, not shown). Next:\n"
              f"  source {env_sh}\n  ray job submit --working-dir . --runtime-env "
              "deploy/runtime_env.yaml -- python jobs/gram.py configs/quickstart.yaml")
        return 0
    if action == "down":
        pids = cluster_down(state_dir)
        print(f"stopped {len(pids)} processes of the cluster in {state_dir}" if pids
              else f"nothing to stop in {state_dir}")
        return 0
    running, text = cluster_status(state_dir)
    print(text)
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())
