"""Starting Ray, in one place: every job that needs it (gram, drift, the analyses on the
``ray`` scheduler, the paper reproduction) joins a cluster or embeds a local Ray here.

An embedded start takes ~10 s in which Ray prints nothing, so it is announced
(``starting Ray (embedded, 2 CPUs) …``) and timed (``Ray ready in 9.8 s``).

An embedded Ray is a one-machine cluster, so it listens on loopback only: Ray's single-machine
mode (the one it uses on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) gives the
node the address 127.0.0.1, and then GCS, raylet, workers, the dashboard agent, the runtime-env
agent and the head's two Prometheus servers (autoscaler 44217, dashboard 44227) all bind
127.0.0.1 (measured with ``ss -ltnp``: tests/test_ray_session.py, docs/cluster.md). No
dashboard unless ``include_dashboard=True`` is passed, and the agent's metrics exporter is off
unless ``RAY_enable_metrics_collection`` is set. Token authentication is Ray's default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Iterator

__all__ = ["start_ray", "ray_session", "EMBEDDED_ENV"]

log = logging.getLogger(__name__)

# Set for the embedded start only (Ray's own processes inherit them; a variable the user has set
# is kept): Ray's single-machine mode, which puts the node -- and so every listener -- on
# 127.0.0.1, and the dashboard agent's Prometheus exporter off (nothing scrapes it here).
EMBEDDED_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_enable_metrics_collection": "0"}

# Ray logs this at WARNING on every ray.init() that finds RAY_AUTH_MODE unset: token
# authentication is what we want (docs/cluster.md, "Security"), so the warning tells a user of
# `jntk` nothing to act on. Only this message is dropped; the "disabled" warning stays.
_TOKEN_AUTH_ENABLED = "Token authentication is enabled for this Ray cluster"
_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropTokenAuthEnabled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_AUTH_ENABLED)


def _quiet_token_auth_notice() -> None:
    logger = logging.getLogger(_TOKEN_AUTH_LOGGER)
    if not any(isinstance(f, _DropTokenAuthEnabled) for f in logger.filters):
        logger.addFilter(_DropTokenAuthEnabled())


@contextlib.contextmanager
def _single_machine_mode() -> Iterator[None]:
    """Ray's single-machine (loopback) mode and no metrics exporter, for one ``ray.init``.

    The driver reads the mode from ``ray_constants.ENABLE_RAY_CLUSTER``, computed when ray was
    imported, so it is set there too for the call; Ray's processes get it from the environment."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in EMBEDDED_ENV}
    saved_mode = ray_constants.ENABLE_RAY_CLUSTER
    for key, value in EMBEDDED_ENV.items():
        os.environ.setdefault(key, value)
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_mode
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_ray(address: str | None = None, num_cpus: int | None = None,
              **init_kwargs: Any) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, set inside ``ray job submit``) or
    embed a local Ray of ``num_cpus`` CPUs on loopback (see the module's docstring), unless Ray
    is already up; True if this call started it. ``init_kwargs`` go to ``ray.init`` (default: no
    dashboard, Ray's own log at WARNING)."""
    import ray

    if ray.is_initialized():
        return False
    _quiet_token_auth_notice()
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              **init_kwargs}
    address = address or os.environ.get("RAY_ADDRESS")
    start = time.perf_counter()
    if address:
        if num_cpus is not None:
            log.info("joining the Ray cluster at %s: ray.num_cpus is ignored", address)
        log.info("connecting to Ray at %s …", address)
        ray.init(address=address, **kwargs)
    else:
        cpus = (f"{num_cpus} CPU{'' if num_cpus == 1 else 's'}" if num_cpus is not None
                else f"all {os.cpu_count()} CPUs")
        log.info("starting Ray (embedded, %s) …", cpus)
        with _single_machine_mode():
            ray.init(num_cpus=num_cpus, **kwargs)
    log.info("Ray ready in %.1f s (%g CPUs in the cluster)", time.perf_counter() - start,
             ray.cluster_resources().get("CPU", 0))
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                **init_kwargs: Any) -> Iterator[bool]:
    """:func:`start_ray` for a block; shuts Ray down at its end when this block started it.
    Yields whether it did."""
    started = start_ray(address, num_cpus, **init_kwargs)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()
