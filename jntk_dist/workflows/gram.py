"""The distributed Gram job: Ray actors compute tiles of the N(d0+1)-square kernel into a Zarr store.

The driver validates the inputs, takes the store's writer lock, creates (or checks and resumes)
the store, and hands the missing upper-triangle tiles to a pool of :class:`TileWorker` actors.
Each actor opens the store itself, computes a tile's fields with :func:`jntk_dist.kernels.fields`,
and writes the tile, its mirror and its ``done`` mark (:class:`jntk_dist.store.TileWriter`). The
driver never holds the Gram; it only counts tiles. Used by ``jntk gram`` and ``jobs/gram.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import kernels
from ..kernels.devices import choose_device
from ..progress import progress
from ..store import (StoreLayout, TileWriter, finalize_store, location_name, open_gram,
                     record_progress, store_lock)
from ..store.tiling import DEFAULT_TILE_BYTES, auto_tile_points, tile_bytes
from .config import DatasetSpec, JobError, KernelSpec, OutputJobConfig, StoreOutput
from .gram_store import (identity_of, is_storage_error, near_parallel_note, os_error_message,
                         prepare_store, raise_for_worker_error)
from .resources import RayResources
from ..errors import InputError, JobInterrupted, ResourceError

__all__ = ["CompressionSpec", "RaySpec", "GramJobConfig", "GramRunResult", "TileWorker",
           "run_gram", "validate_dataset"]

log = logging.getLogger(__name__)


class CompressionSpec(BaseModel):
    """Chunk compression of the store's arrays."""

    model_config = ConfigDict(extra="forbid")

    codec: Literal["zstd", "blosc-zstd", "blosc-lz4", "none"] = "zstd"
    level: int = Field(default=1, ge=0, le=22)
    # a crc32c checksum on every chunk of a new store: a flipped bit fails the read instead of
    # decoding to wrong numbers. Not part of the store's identity (values are the same; a
    # resumed store keeps the codecs it was created with)
    checksum: bool = True


class RaySpec(RayResources):
    """Where (:class:`.resources.RayResources`) and how wide to run: the tile workers."""

    num_actors: int | None = Field(default=None, ge=1)  # default: sized from the cluster
    cpus_per_actor: float = Field(default=1.0, gt=0)
    gpus_per_actor: float | None = Field(default=None, ge=0)  # default: 1 when GPUs exist
    tasks_per_actor: int = Field(default=2, ge=1)  # queued per actor, hides dispatch latency
    max_restarts: int = Field(default=3, ge=0)
    max_task_retries: int = Field(default=3, ge=0)


class GramJobConfig(OutputJobConfig):
    """``jntk gram`` config: dataset, kernel, output store and how to tile and distribute."""

    dataset: DatasetSpec
    kernel: KernelSpec
    output: StoreOutput  # a local path or an fsspec URL (s3://bucket/g.zarr, gs://…, file://…)
    store: Literal["dense", "fields"] = "dense"
    tile_points: int | None = Field(default=None, ge=1)  # default: sized to tile_bytes / memory
    tile_bytes: int | None = Field(default=None, ge=1024)
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    progress: bool = True
    # torch.compile the field recursion in each worker (erf/gelu): 2-3x faster fields after a
    # one-off compile per worker (~6 s from torch's disk cache, minutes cold); values agree with
    # eager to rounding (~1e-13). "auto": on when each worker has minutes of eager work.
    compile: bool | Literal["auto"] = "auto"
    # warn at the start when pairs of points have |cos| above this (duplicates included): the
    # Gram is then singular, or nearly, by construction. None: no check
    near_parallel_warning: float | None = Field(default=0.9999, gt=0.0, lt=1.0)

    def identity(self) -> dict[str, Any]:
        """The part of the config that determines the store's contents."""
        return identity_of(self.to_dict())


@dataclass
class GramRunResult:
    """What a run did: the store, the tiles it computed, timings."""

    path: Path | str  # a local path or a URL
    tiles_total: int
    tiles_computed: list[tuple[int, int]] = field(default_factory=list)
    tiles_already_done: int = 0
    entries: int = 0
    seconds: float = 0.0
    num_actors: int = 0
    worker_pids: set[int] = field(default_factory=set)
    worker_cpu_seconds: float = 0.0  # summed over tiles (compute + write, all threads)
    storage_options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the run changed or warns about
    repaired: list[tuple[int, int]] = field(default_factory=list)  # tiles a --repair cleared

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("nan")


# ---- the actor --------------------------------------------------------------------------


class TileWorker:
    """Ray actor: holds an open store and a device; computes and writes tiles on request."""

    def __init__(self, store_path: str, kind: str, depth: int, activation: str,
                 dtype: str, compile: bool = False,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.writer = TileWriter(store_path, storage_options)
        self.kind, self.depth, self.activation = kind, depth, activation
        self.compile = compile
        self.dtype = getattr(torch, dtype)
        self.device = choose_device()
        if compile:  # pay the compile (or cache load) while the pool starts, not on a tile
            lay = self.writer.layout
            kernels.compile_warm_up(  # type: ignore[arg-type]
                activation, kind, self.dtype, self.device,
                gram_columns=(lay.tile_points, lay.d0) if lay.mode == "dense" else None)

    def pid(self) -> int:
        return os.getpid()

    def compute(self, i: int, j: int) -> tuple[int, int, int, float, float, int]:
        """Compute tile (i, j), write it and its mirror, mark it done.

        Returns (i, j, entries, wall seconds, CPU seconds of this process, pid).
        """
        start, cpu = time.perf_counter(), time.process_time()
        xi = torch.from_numpy(self.writer.points(i)).to(self.device, self.dtype)
        xj = xi if i == j else torch.from_numpy(self.writer.points(j)).to(self.device, self.dtype)
        f = kernels.fields(xi, xj, depth=self.depth, activation=self.activation,
                           kind=self.kind, compile=self.compile)  # type: ignore[arg-type]
        entries = self.writer.write(i, j, f, xi, xj, compile=self.compile)
        return (i, j, entries, time.perf_counter() - start, time.process_time() - cpu,
                os.getpid())


# ---- the driver -------------------------------------------------------------------------


def validate_dataset(X: np.ndarray, y: np.ndarray, name: str) -> None:
    """Reject NaN/inf/zero rows and mismatched labels before anything is written."""
    kernels.validate_inputs(torch.from_numpy(np.asarray(X)), name=f"dataset {name!r} X")
    if y.shape != (X.shape[0],):
        raise InputError(f"dataset {name!r}: y has shape {y.shape}, expected ({X.shape[0]},)")
    if not np.isfinite(y).all():
        raise InputError(f"dataset {name!r}: y has non-finite values at rows "
                         f"{np.flatnonzero(~np.isfinite(y))[:10].tolist()}")


def _start_ray(spec: RaySpec) -> bool:
    """Connect to (or embed) Ray unless already connected; True if this call started it."""
    return spec.start()


def _pool_plan(spec: RaySpec, n_tasks: int, wait_s: float = 30.0) -> tuple[int, float, float]:
    """(actors, cpus per actor, gpus per actor) from the cluster's free resources.

    Waits up to ``wait_s`` for one worker's worth of resources (actors of a previous job may
    still be releasing theirs).
    """
    import ray

    deadline = time.monotonic() + wait_s
    free = ray.available_resources()
    while (float(free.get("CPU", 0.0)) < spec.cpus_per_actor and time.monotonic() < deadline
           and spec.num_actors is None):
        time.sleep(0.2)
        free = ray.available_resources()
    gpus = float(free.get("GPU", 0.0))
    per_gpu = spec.gpus_per_actor if spec.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if spec.num_actors is not None:
        n = spec.num_actors
    elif per_gpu > 0:
        n = int(gpus // per_gpu)
    else:
        n = int(float(free.get("CPU", 0.0)) // spec.cpus_per_actor)
    if n < 1:
        raise JobError(f"no room for a tile worker: free resources {free}, each worker needs "
                       f"{spec.cpus_per_actor} CPU and {per_gpu} GPU")
    return max(1, min(n, n_tasks)), spec.cpus_per_actor, per_gpu


def _worker_memory(per_gpu: float, n_actors: int) -> float | None:
    """Memory one worker may use for a tile: free GPU memory, else Ray's memory per worker."""
    import ray

    if per_gpu > 0:
        @ray.remote(num_gpus=per_gpu)
        def free_gpu_memory() -> int:
            return int(torch.cuda.mem_get_info()[0])
        return float(ray.get(free_gpu_memory.remote()))
    memory = ray.cluster_resources().get("memory")
    return memory / n_actors if memory else None


def run_gram(config: GramJobConfig, overwrite: bool = False, progress: bool | None = None,
             on_start: Callable[[list[Any]], None] | None = None,
             repair: bool = False) -> GramRunResult:
    """Compute (or complete) the Gram store described by ``config``; see the module docstring.

    ``repair``: verify every chunk of an existing store first and recompute exactly the bad
    tiles. ``on_start`` is called with the actor handles once the pool is up (monitoring, tests).
    Ctrl-C stops the pool, releases the lock and raises :class:`~jntk_dist.errors.JobInterrupted`
    saying how many tiles the store keeps.
    """
    try:
        return _run_gram(config, overwrite, progress, on_start, repair)
    except KeyboardInterrupt:
        raise JobInterrupted(_kept_tiles(config.output, config.storage_options)) from None


def _kept_tiles(path: Path | str, options: dict[str, Any]) -> str:
    """``14 of 16 tiles kept; the same command resumes`` (what an interrupted job leaves)."""
    try:
        store = open_gram(path, options)
        total = store.layout.total_tiles
        kept = total - len(store.missing_tiles())
    except Exception:  # noqa: BLE001 -- no store, or one cut during its creation
        return "no tile was computed yet; the same command starts it again"
    return f"{kept} of {total} tiles kept; the same command resumes"


def check_disk_space(path: Path | str, n: int, d0: int, config: GramJobConfig) -> None:
    """Refuse a new local store that cannot fit the free space of its file system (its size
    uncompressed: the kernel's float64 digits compress little), before any work."""
    if not isinstance(path, Path) or os.path.exists(path):
        return  # a URL (no free space to ask), or an existing store (resumed or replaced)
    itemsize = np.dtype(config.kernel.dtype).itemsize
    need = tile_bytes(n, d0, config.store, itemsize)
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        fields = tile_bytes(n, d0, "fields", itemsize)
        smaller = (f", --set store=fields ({fields / 1e9:.3g} GB: the 8 scalar fields)"
                   if config.store == "dense" else "")
        raise ResourceError(
            f"the {config.store} Gram store {path} needs {need / 1e9:.3g} GB (N={n}, d0={d0}, "
            f"uncompressed) but {folder} has {free / 1e9:.3g} GB free: choose another output "
            f"(a bigger disk or an s3:// URL){smaller}, or the matrix-free route "
            "(jntk solve/eigen --structured: no Gram stored)")


def _run_gram(config: GramJobConfig, overwrite: bool, progress: bool | None,
              on_start: Callable[[list[Any]], None] | None, repair: bool) -> GramRunResult:
    path, options = config.output, config.storage_options
    data = config.dataset.load()
    X, y = data.X, data.y
    validate_dataset(X, y, data.name)
    warning = near_parallel_note(X, config.near_parallel_warning, data.name)
    check_disk_space(path, X.shape[0], X.shape[1], config)
    lock = store_lock(path, options).acquire()
    started_ray = False
    actors: list[Any] = []

    def tile_points(n: int, d0: int) -> int:  # automatic tile sizes look at the workers
        nonlocal started_ray
        started_ray = _start_ray(config.ray) or started_ray
        return _auto_tile_points(config, n, d0)

    try:
        layout, notes, repaired = prepare_store(path, config, X, y, data.name, overwrite,
                                                repair, tile_points)
        missing = open_gram(path, options).missing_tiles()
        result = GramRunResult(path=path, tiles_total=layout.total_tiles,
                               tiles_already_done=layout.total_tiles - len(missing),
                               storage_options=dict(options), repaired=repaired,
                               notes=[n for n in (warning, *notes) if n])
        if missing:
            log.info("store %s: %d of %d tiles to compute (%d points/tile)", path, len(missing),
                     layout.total_tiles, layout.tile_points)
            started_ray = _start_ray(config.ray) or started_ray
            pairs = float(sum(_tile_pairs(layout, i, j) for i, j in missing))
            actors = _spawn_pool(config, path, len(missing), result, pairs)
            if on_start is not None:
                on_start(actors)
            show = config.progress if progress is None else progress
            _dispatch(actors, missing, config.ray.tasks_per_actor, layout, result, show,
                      on_progress=lambda tiles: record_progress(
                          path, layout, set(missing) - set(tiles), options))
        else:
            log.info("store %s is already complete (%d tiles)", path, layout.total_tiles)
        finalize_store(path, options)
        return result
    except OSError as err:  # disk full, permissions: one line naming the file, resumable
        if not is_storage_error(err):
            raise
        raise JobError(os_error_message(err, path)) from err
    finally:
        _stop_pool(actors, started_ray, config.ray.cpus_per_actor)
        lock.release()


def _auto_tile_points(config: GramJobConfig, n: int, d0: int) -> int:
    """Points per tile from ``tile_bytes`` and the memory of one worker of the pool."""
    plan = _pool_plan(config.ray, 1 << 30)
    memory = _worker_memory(plan[2], plan[0])
    target = config.tile_bytes or DEFAULT_TILE_BYTES * (4 if plan[2] > 0 else 1)
    itemsize = np.dtype(config.kernel.dtype).itemsize
    return auto_tile_points(n, d0, config.store, itemsize, target, memory)


def _stop_pool(actors: list[Any], started_ray: bool, cpus_per_actor: float,
               wait_s: float = 10.0) -> None:
    """Kill the actors and, in a shared Ray session, wait until their CPUs are free again."""
    if "ray" not in sys.modules:  # refused before Ray was needed: importing it costs seconds
        return
    import ray

    if not ray.is_initialized():
        return
    if started_ray:
        ray.shutdown()
        return
    if not actors:
        return
    before = float(ray.available_resources().get("CPU", 0.0))
    for actor in actors:
        ray.kill(actor)
    deadline = time.monotonic() + wait_s
    target = min(float(ray.cluster_resources().get("CPU", 0.0)),
                 before + len(actors) * cpus_per_actor) - 1e-6
    while time.monotonic() < deadline:
        if float(ray.available_resources().get("CPU", 0.0)) >= target:
            break
        time.sleep(0.1)


# eager CPU throughput is ~1.5e6 pair-layers/s per worker: above this a worker has minutes of
# work, against a compile warm-up of seconds (warm disk cache) to a minute or two (cold)
AUTO_COMPILE_PAIR_LAYERS = 3e8


def _tile_pairs(layout: StoreLayout, i: int, j: int) -> int:
    (a, b), (c, d) = layout.points(i), layout.points(j)
    return (b - a) * (d - c)


def resolve_compile(setting: bool | str, activation: str, depth: int, pairs: float,
                    n_actors: int, gpu_workers: bool = False) -> bool:
    """The ``compile`` setting of a run: ``"auto"`` compiles closed-form activations (erf,
    gelu) on GPU workers (the compiled recursion and fused expansion are the GPU path), and on
    CPU workers when each has more than AUTO_COMPILE_PAIR_LAYERS pair-layers to compute."""
    if setting != "auto":
        return bool(setting)
    closed_form = kernels.get_activation(activation).has_closed_form
    return closed_form and (gpu_workers
                            or pairs * depth / max(1, n_actors) > AUTO_COMPILE_PAIR_LAYERS)


def _spawn_pool(config: GramJobConfig, path: Path | str, n_tasks: int,
                result: GramRunResult, pairs: float) -> list[Any]:
    import ray

    n, cpus, gpus = _pool_plan(config.ray, n_tasks)
    k = config.kernel
    use_compile = resolve_compile(config.compile, k.activation, k.depth, pairs, n, gpus > 0)
    if use_compile:
        log.info("workers compile the field recursion (compile: %s)", config.compile)
    remote_cls = ray.remote(TileWorker).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=config.ray.max_restarts,
        max_task_retries=config.ray.max_task_retries)
    where = location_name(path)  # workers may run in another directory
    actors = [remote_cls.remote(where, k.kind, k.depth, k.activation, k.dtype, use_compile,
                                config.storage_options or None)
              for _ in range(n)]
    result.num_actors = n
    start = time.perf_counter()
    try:
        ray.get([a.pid.remote() for a in actors])  # tile timings then exclude worker start-up
    except ray.exceptions.RayError as err:
        raise_for_worker_error(err, path)  # e.g. killed by Ray's memory monitor
        raise
    log.info("pool: %d actor(s), %g CPU and %g GPU each, ready in %.1f s", n, cpus, gpus,
             time.perf_counter() - start)
    return actors


def _dispatch(actors: list[Any], tiles: list[tuple[int, int]], per_actor: int,
              layout: StoreLayout, result: GramRunResult, show_progress: bool,
              on_progress: Callable[[list[tuple[int, int]]], None] | None = None,
              progress_every_s: float = 30.0) -> None:
    """Keep ``per_actor`` tiles queued on each actor until all are written.

    ``on_progress`` gets the tiles computed so far every ``progress_every_s`` seconds.
    """
    import ray

    queue = deque(tiles)
    pending: dict[Any, tuple[int, int, int]] = {}

    def submit(k: int) -> None:
        if queue:
            i, j = queue.popleft()
            # logged before the call: a tile a worker finishes is always in the log, even when
            # the driver dies right after submitting it
            log.debug("submitting tile (%d, %d) to actor %d", i, j, k)
            pending[actors[k].compute.remote(i, j)] = (i, j, k)

    start = last_record = time.perf_counter()
    with progress(result.tiles_total, "gram tiles", unit="tile",
                  initial=result.tiles_already_done, enabled=show_progress) as bar:
        for k in range(len(actors)):
            for _ in range(per_actor):
                submit(k)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, j, k = pending.pop(ref)
                try:
                    _, _, entries, seconds, cpu, pid = ray.get(ref)
                except ray.exceptions.RayError as err:
                    raise_for_worker_error(err, result.path, (i, j))  # disk full, memory
                    if isinstance(err, ray.exceptions.RayActorError):
                        raise JobError(f"tile ({i}, {j}) failed: its worker died more often "
                                       f"than max_restarts allows ({err})") from err
                    raise
                result.tiles_computed.append((i, j))
                result.entries += entries
                result.worker_pids.add(pid)
                result.worker_cpu_seconds += cpu
                elapsed = time.perf_counter() - start
                log.info("tile (%d, %d) done: %d entries in %.3f s (worker pid %d)",
                         i, j, entries, seconds, pid)
                bar.update(1)
                bar.set_postfix(f"{result.entries / max(elapsed, 1e-9):.3g} entries/s")
                submit(k)
                if on_progress is not None and time.perf_counter() - last_record > progress_every_s:
                    on_progress(result.tiles_computed)
                    last_record = time.perf_counter()
    result.seconds = time.perf_counter() - start


def describe(result: GramRunResult) -> str:
    """Human summary: where the store is and how to open it."""
    store = open_gram(result.path, result.storage_options)
    where = location_name(result.path)
    options = (", storage_options={…}" if result.storage_options else "")
    rate = (f", {result.entries_per_s:.3g} entries/s with {result.num_actors} actor(s)"
            if result.tiles_computed else "")
    scaled = (f"Θ_λ with the stored λ={store.lam:g}" if store.lam is not None
              else "Θ (no λ recorded)")
    return "\n".join([
        f"store: {where}",
        f"  {store.kind} depth={store.depth} {store.activation}, N={store.layout.n_points}, "
        f"d0={store.layout.d0}, {store.mode}, Gram {store.shape[0]}x{store.shape[1]}",
        f"  tiles: {len(result.tiles_computed)} computed now, {result.tiles_already_done} already "
        f"done, {result.tiles_total} total in {result.seconds:.1f} s{rate}",
        *[f"  note: {note}" for note in result.notes],
        "open it:",
        f"  from jntk_dist.store import open_gram; g = open_gram({where!r}{options})",
        f"  g.dask_array()   # lazy {scaled}, one chunk per tile; lam=None: unscaled Θ",
        "  g.to_xarray()    # the same as an xarray Dataset with (point, component) coordinates",
        f"  xarray.open_zarr({where!r}{options})   # the stored arrays (unscaled Θ)",
    ])


CONFIG = GramJobConfig


def execute(config: GramJobConfig, *, overwrite: bool = False, progress: bool = True,
            repair: bool = False) -> str:
    """Run the job (the registry's entry point); returns what the CLI prints."""
    return describe(run_gram(config, overwrite=overwrite, progress=None if progress else False,
                             repair=repair))
