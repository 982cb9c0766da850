"""The one Ray resources spec of every job, in the spirit of Ray Train's ``ScalingConfig``: where
the job's Ray runs and how large an embedded Ray is. The Gram job (``ray:``) and the drift runs
(``ray:``) extend it with what each of their workers asks for; the analyses' ``compute:`` names
its Ray part ``ray_address`` / ``num_cpus`` and reads it as this spec (:meth:`ComputeSpec.ray
<jntk_dist.workflows.problem.ComputeSpec.ray>`)."""

from __future__ import annotations

from typing import Any, ContextManager

from pydantic import BaseModel, ConfigDict, Field

from .ray_session import ray_session, start_ray

__all__ = ["RayResources"]


class RayResources(BaseModel):
    """Where a job's Ray runs. ``address``: the cluster to join (None: ``RAY_ADDRESS``, set
    inside ``ray job submit``, else a Ray embedded on this machine); ``num_cpus``: the CPUs of an
    embedded Ray (None: all; ignored when joining a cluster)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)  # embedded Ray only

    def start(self, **init_kwargs: Any) -> bool:
        """Join or embed Ray unless it is up (:func:`.ray_session.start_ray`); True if this call
        started it."""
        return start_ray(self.address, self.num_cpus, **init_kwargs)

    def session(self, **init_kwargs: Any) -> ContextManager[bool]:
        """:meth:`start` for a ``with`` block, shutting Ray down at its end when the block
        started it (:func:`.ray_session.ray_session`)."""
        return ray_session(self.address, self.num_cpus, **init_kwargs)
