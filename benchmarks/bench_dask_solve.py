"""Blockwise Dask Cholesky solve on a Zarr Gram store vs scipy on the in-memory matrix.

    python benchmarks/bench_dask_solve.py                      # N = 2000 points, d0 = 9: 20 000²
    python benchmarks/bench_dask_solve.py --points 600 --d0 9  # a quick run (6 000²)

Writes a JNTK Θ_λ Gram store (tile by tile with the store's own writer), then runs each solver in
its own subprocess (so that each peak RSS is its own):

* ``scipy``: read the whole matrix into memory, ``scipy.linalg.cho_factor`` + ``cho_solve``
  (BLAS on all cores) -- the baseline;
* ``dask-threads``: :func:`jntk_dist.solvers.cholesky_solve` on the lazy store, Dask's threads;
* ``dask-limited``: the same on a ``distributed.LocalCluster`` whose workers each have a memory
  limit *below the matrix size* (they spill to disk): the out-of-core demonstration.

Prints seconds, ratio to scipy, peak memory (driver RSS; plus the workers' summed peak RSS for the
cluster) and the relative difference of each solution to scipy's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def build_store(path: Path, points: int, d0: int, depth: int, activation: str,
                tile_points: int, seed: int) -> None:
    import torch
    from tqdm import tqdm

    from jntk_dist import kernels, store

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((points, d0))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.where(X[:, 0] > 0, 1.0, -1.0)
    layout = store.StoreLayout(mode="dense", n_points=points, d0=d0, tile_points=tile_points,
                               dtype="float64")
    store.create_store(path, X, y, layout, {"kernel": "jntk", "depth": depth,
                                            "activation": activation, "lam": 1.0},
                       )
    writer = store.TileWriter(path)
    T = layout.n_tiles
    with tqdm(total=T * (T + 1) // 2, desc="writing Gram tiles") as bar:
        for i in range(T):
            for j in range(i, T):
                xi, xj = (torch.from_numpy(writer.points(k)) for k in (i, j))
                writer.write(i, j, kernels.fields(xi, xj, depth=depth, activation=activation),
                             xi, xj)
                bar.update()


class RssSampler:
    """Peak RSS of a set of processes (sampled every 50 ms)."""

    def __init__(self, pids_fn):
        import psutil

        self.psutil, self.pids_fn, self.peak = psutil, pids_fn, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.pids_fn():
                try:
                    total += self.psutil.Process(pid).memory_info().rss
                except self.psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def part(name: str, store_path: str, ridge: float, block: int, worker_memory: str,
         out: str) -> None:
    """One solver, in this (fresh) process; writes x and timings."""
    from jntk_dist import solvers
    from jntk_dist.store import open_gram

    st = open_gram(store_path)
    n = st.shape[0]
    rhs = np.zeros(n)
    rhs[:: st.layout.block] = st.y  # Y = (y_1, 0…0, y_2, …)
    result: dict = {"part": name, "n": n}
    t0 = time.perf_counter()
    if name == "scipy":
        import scipy.linalg

        A = st.to_numpy()  # Θ (λ = 1) in memory
        result["read_seconds"] = time.perf_counter() - t0
        A[np.diag_indices(n)] += ridge
        t1 = time.perf_counter()
        c = scipy.linalg.cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
        x = scipy.linalg.cho_solve(c, rhs, check_finite=False)
        result["solve_seconds"] = time.perf_counter() - t1
    elif name == "dask-threads":
        x = solvers.cholesky_solve(st.dask_array(), rhs, ridge=ridge, block_size=block,
                                  scheduler_name="threads")
        result["solve_seconds"] = time.perf_counter() - t0
    elif name == "dask-limited":
        import shutil

        from distributed import Client, LocalCluster

        spill = tempfile.mkdtemp(prefix="dask-spill-")
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=worker_memory,
                          processes=True, dashboard_address=None,
                          local_directory=spill) as cluster, \
                Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
            with RssSampler(lambda: pids) as sampler:
                t1 = time.perf_counter()
                x = solvers.cholesky_solve(st.dask_array(), rhs, ridge=ridge, block_size=block,
                                          scheduler_name="distributed")
                result["solve_seconds"] = time.perf_counter() - t1
            result["workers_peak_rss_gib"] = sampler.peak / 2 ** 30
            result["worker_memory_limit"] = worker_memory
        shutil.rmtree(spill, ignore_errors=True)
    else:
        raise ValueError(name)
    result["total_seconds"] = time.perf_counter() - t0
    result["driver_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    np.save(out + ".npy", x)
    Path(out + ".json").write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--d0", type=int, default=9)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--activation", default="erf")
    ap.add_argument("--tile-points", type=int, default=200)
    ap.add_argument("--block", type=int, default=2000, help="Dask Cholesky block rows")
    ap.add_argument("--ridge", type=float, default=1e-6)
    ap.add_argument("--worker-memory", default="1.2GiB",
                    help="per-worker limit of the dask-limited run (2 workers)")
    ap.add_argument("--parts", default="scipy,dask-threads,dask-limited")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        part(args.part, args.store, args.ridge, args.block, args.worker_memory, args.out)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-dask-solve-"))
    store_path = work / "gram.zarr"
    if not store_path.exists():
        t0 = time.perf_counter()
        build_store(store_path, args.points, args.d0, args.depth, args.activation,
                    args.tile_points, seed=0)
        print(f"store {store_path}: {time.perf_counter() - t0:.1f}s to compute and write", flush=True)
    n = args.points * (args.d0 + 1)
    print(f"Gram {n}×{n} float64 = {8 * n * n / 2**30:.2f} GiB, JNTK depth {args.depth} "
          f"{args.activation}, ridge {args.ridge:g}, Dask block {args.block}", flush=True)
    results = {}
    for name in args.parts.split(","):
        env = dict(os.environ)
        threads = "2" if name == "scipy" else "1"  # dask runs 2 tasks at once, 1 BLAS thread each
        env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out = str(work / name)
        cmd = [sys.executable, str(HERE), "--part", name, "--store", str(store_path), "--out", out,
               "--ridge", str(args.ridge), "--block", str(args.block),
               "--worker-memory", args.worker_memory]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[name] = json.loads(Path(out + ".json").read_text())
        results[name]["x"] = np.load(out + ".npy")
        r = results[name]
        print(f"{name:>13}: solve {r['solve_seconds']:.1f}s (total {r['total_seconds']:.1f}s), "
              f"driver peak RSS {r['driver_peak_rss_gib']:.2f} GiB"
              + (f", workers peak RSS {r['workers_peak_rss_gib']:.2f} GiB (limit "
                 f"{r['worker_memory_limit']} each)" if "workers_peak_rss_gib" in r else ""),
              flush=True)
    if "scipy" in results:
        base = results["scipy"]
        for name, r in results.items():
            diff = np.linalg.norm(r["x"] - base["x"]) / np.linalg.norm(base["x"])
            print(f"{name:>13}: time ratio vs scipy solve {r['solve_seconds'] / base['solve_seconds']:.2f}"
                  f" (vs scipy read+solve {r['total_seconds'] / base['total_seconds']:.2f}), "
                  f"relative difference to scipy's x {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
