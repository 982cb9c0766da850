"""Starting Ray, in one place: every job that needs it (gram, drift, the analyses on the
``ray`` scheduler, the paper reproduction) joins a cluster or embeds a local Ray here.

An embedded start takes ~10 s in which Ray prints nothing, so it is announced
(``starting Ray (embedded, 2 CPUs) …``) and timed (``Ray ready in 9.8 s``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Iterator

__all__ = ["start_ray", "ray_session"]

log = logging.getLogger(__name__)


def start_ray(address: str | None = None, num_cpus: int | None = None,
              **init_kwargs: Any) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, set inside ``ray job submit``) or
    embed a local Ray of ``num_cpus`` CPUs, unless Ray is already up; True if this call started
    it. ``init_kwargs`` go to ``ray.init`` (default: no dashboard, Ray's own log at WARNING)."""
    import ray

    if ray.is_initialized():
        return False
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
