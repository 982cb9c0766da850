"""workflows.ray_session: the one Ray start says what it does, and stops only what it started."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import subprocess

import pytest

from jntk_dist.workflows.ray_session import ray_session


def test_embedded_start_is_announced_timed_and_owned(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    with caplog.at_level(logging.INFO, logger="jntk_dist.workflows.ray_session"):
        with ray_session(num_cpus=1) as started:
            assert started and ray.is_initialized()
            assert ray.cluster_resources()["CPU"] == 1
            with ray_session(num_cpus=2) as nested:  # Ray is up: joined, not restarted
                assert not nested
            assert ray.is_initialized()  # the inner block did not shut down the outer's Ray
        assert not ray.is_initialized()  # the block that started it stopped it
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "starting Ray (embedded, 1 CPU) …"
    assert messages[1].startswith("Ray ready in ") and messages[1].endswith("(1 CPUs in the cluster)")
    assert len(messages) == 2  # the nested block logged nothing


def _listeners(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP listener of ``pids``: ``ss -ltnp`` where it is
    installed (iproute2), else psutil, which reads the same /proc tables."""
    import psutil

    ss = shutil.which("ss")
    found = []
    if ss:
        out = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            owners = [(name, int(pid)) for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line)]
            local = line.split()[3]
            addr, port = local.rsplit(":", 1)
            found += [(addr.strip("[]"), int(port), name) for name, pid in owners if pid in pids]
        return found
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return found


def _is_loopback(addr: str) -> bool:
    if addr == "*":  # ss's spelling of all interfaces
        return False
    ip = ipaddress.ip_address(addr.split("%")[0])  # 127.0.0.53%lo: bound to an interface
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_embedded_ray_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """Every TCP listener of the embedded Ray's processes (this driver and its process tree:
    GCS, raylet, agents, workers, the head's metrics servers) is on 127.0.0.1, and Ray's
    "token authentication is enabled" notice is not printed."""
    import psutil
    import ray

    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                "RAY_enable_metrics_collection"):
        monkeypatch.delenv(key, raising=False)
    with ray_session(num_cpus=1):
        assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()  # a worker is up
        me = psutil.Process()
        pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
        listeners = _listeners(pids)
        assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # restored
    names = {name for _, _, name in listeners}
    # Something to measure: GCS and raylet (whose gRPC servers bind all interfaces by default).
    assert {"gcs_server", "raylet"} <= names, listeners
    exposed = [entry for entry in listeners if not _is_loopback(entry[0])]
    assert not exposed, f"listening beyond loopback: {exposed} (all: {listeners})"
    err = capfd.readouterr().err
    assert "Token authentication is enabled" not in err, err[-2000:]
    assert os.environ.get("RAY_AUTH_MODE") == "token"  # Ray's default stayed on: token auth
