"""``jntk verify STORE``: check every chunk of a Gram store (:func:`jntk_dist.store.verify_store`)
and fail, naming each bad chunk and its tile, when any is missing, corrupt or wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import location_name, verify_store
from ..errors import StoreError

__all__ = ["StoreDamagedError", "run_verify"]


class StoreDamagedError(StoreError):
    """``jntk verify`` found bad chunks (or other problems); ``report`` lists them."""


def run_verify(location: str | Path, storage_options: dict[str, Any] | None = None,
               samples: int = 16, seed: int = 0) -> str:
    """The verification report of the store at ``location``; raises :class:`StoreDamagedError`
    (its ``report`` the same text) when the store has a bad chunk or another problem."""
    report = verify_store(location, storage_options, samples=samples, seed=seed)
    if report.ok:
        return report.text()
    tiles = report.bad_tiles
    findings = [b.describe() for b in report.bad] + report.problems
    message = (f"store {location_name(location)}: {len(findings)} problem(s), the first: "
               f"{findings[0][:300]}")
    if tiles:
        message += (f"; bad tiles {', '.join(map(str, tiles[:8]))}{'…' if len(tiles) > 8 else ''}"
                    ": `jntk gram CONFIG --repair` recomputes exactly them")
    raise StoreDamagedError(message, report=report.text())
