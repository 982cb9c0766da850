"""Gram job throughput against raw Zarr writes of random data with the same chunking, same run.

For a dense store and a fields store, with 1 and 2 Ray actors:

* ``gram``: :func:`jntk_dist.workflows.gram.run_gram` (fields -> tile -> Zarr, mirror chunk, done mark),
  entries/s over the tile phase (the pool is started and ready before the clock starts) and
  end to end (validation, store creation, pool start-up, tiles, finish);
* ``raw``: the same number of actors writing pre-generated random tiles into an array of the same
  shape, chunking, dtype and compression (tile and mirror chunk per task, no kernel maths).

Prints entries/s, gram/raw ratios and the 1 -> 2 actor scaling efficiency
(throughput(2) / (2 · throughput(1))). Targets: gram ≥ 50 % of raw; scaling ≥ 80 %.
Raw and gram runs are interleaved (best of ``--repeats`` each). Besides wall-clock throughput it
prints the ratio of CPU seconds the workers spent (compute + write), which a machine shared with
other jobs disturbs far less than wall time.

    python benchmarks/bench_gram_store.py                 # defaults below (about 2-4 minutes)
    python benchmarks/bench_gram_store.py --dense-n 240 --fields-n 1000 --repeats 1
    python benchmarks/bench_gram_store.py --checksums --repeats 3   # crc32c on vs off

``--checksums`` measures what the crc32c checksum on every chunk costs: gram runs and raw writes
with ``checksum: false`` and ``true`` interleaved (one actor, best of ``--repeats``), and the
codec pipeline alone (encode and decode of one tile chunk, best of 20).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import zarr

from jntk_dist.workflows.config import load_config
from jntk_dist.workflows.gram import GramJobConfig, run_gram
from jntk_dist.store.layout import zarr_compressors
from jntk_dist.store.tiling import tile_range, upper_tiles


class RawWriter:
    """Ray actor writing one pre-generated random tile (and its mirror) per call."""

    def __init__(self, path: str, name: str, tile_shape: tuple[int, ...], seed: int) -> None:
        self.array = zarr.open_group(path, mode="r+")[name]
        self.tile = np.random.default_rng(seed).normal(size=tile_shape)

    def ready(self) -> bool:
        return True

    def write(self, region: tuple[slice, ...],
              mirror: tuple[slice, ...] | None) -> tuple[int, float]:
        """Write the tile (and mirror); (values written, CPU seconds of this process)."""
        cpu = time.process_time()
        shape = tuple(s.stop - s.start for s in region)
        data = self.tile[tuple(slice(0, k) for k in shape)]
        self.array[region] = data
        if mirror is not None:
            self.array[mirror] = np.swapaxes(data, -1, -2)
        return data.size * (2 if mirror is not None else 1), time.process_time() - cpu


def _regions(mode: str, n: int, d0: int, P: int) -> list[tuple[tuple[slice, ...], Any]]:
    p = d0 + 1
    out = []
    for i, j in upper_tiles(-(-n // P)):
        (a, b), (c, d) = tile_range(i, n, P), tile_range(j, n, P)
        if mode == "dense":
            region = (slice(a * p, b * p), slice(c * p, d * p))
            mirror = (slice(c * p, d * p), slice(a * p, b * p))
        else:
            region = (slice(0, 8), slice(a, b), slice(c, d))
            mirror = (slice(0, 8), slice(c, d), slice(a, b))
        out.append((region, None if i == j else mirror))
    return out


def raw_write(root: Path, mode: str, n: int, d0: int, P: int, actors: int,
              compression: dict[str, Any]) -> dict[str, float]:
    """Wall seconds, CPU seconds and values written by ``actors`` writers of random tiles."""
    p = d0 + 1
    shape, chunks = (((n * p, n * p), (P * p, P * p)) if mode == "dense"
                     else ((8, n, n), (8, P, P)))
    path = root / f"raw-{mode}-{actors}.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("data", shape=shape, chunks=chunks, dtype="float64", fill_value=np.nan,
                       compressors=zarr_compressors(compression))
    cls = ray.remote(RawWriter).options(num_cpus=1)
    pool = [cls.remote(str(path), "data", chunks, seed) for seed in range(actors)]
    ray.get([w.ready.remote() for w in pool])
    work = _regions(mode, n, d0, P)
    start = time.perf_counter()
    refs = [pool[k % actors].write.remote(*w) for k, w in enumerate(work)]
    done = ray.get(refs)
    seconds = time.perf_counter() - start
    for w in pool:
        ray.kill(w)
    shutil.rmtree(path)
    time.sleep(1.0)  # let Ray hand the CPUs back
    return {"wall_s": seconds, "cpu_s": sum(c for _, c in done),
            "values": sum(v for v, _ in done)}


def gram_run(root: Path, data: Path, mode: str, P: int, actors: int, depth: int,
             compression: dict[str, Any], compile: bool = False) -> dict[str, float]:
    out = root / f"gram-{mode}-{actors}.zarr"
    config = load_config({"dataset": {"path": str(data)},
                          "kernel": {"kind": "jntk", "depth": depth, "activation": "gelu"},
                          "output": str(out), "store": mode, "tile_points": P,
                          "compression": compression, "progress": False,
                          "ray": {"num_actors": actors}, "compile": compile}, GramJobConfig)
    start = time.perf_counter()
    result = run_gram(config)
    wall = time.perf_counter() - start
    shutil.rmtree(out)
    time.sleep(1.0)
    return {"tile_s": result.seconds, "wall_s": wall, "entries": result.entries,
            "cpu_s": result.worker_cpu_seconds}


def codec_seconds(mode: str, d0: int, P: int, compression: dict[str, Any]
                  ) -> dict[str, float]:
    """Encode and decode seconds (best of 20) of one kernel-like tile chunk through Zarr's codec
    pipeline (bytes -> compressor [-> crc32c]), and its stored size."""
    shape = (P * (d0 + 1),) * 2 if mode == "dense" else (8, P, P)
    x = np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
    tile = np.sin(7.0 * x) * np.exp(-x * x)  # smooth values: compress like a Gram tile
    best = {"encode_s": float("inf"), "decode_s": float("inf"), "bytes": 0.0}
    for _ in range(20):
        store = zarr.storage.MemoryStore()
        arr = zarr.create_array(store, shape=shape, chunks=shape, dtype="float64",
                                compressors=zarr_compressors(compression))
        t0 = time.perf_counter()
        arr[...] = tile
        t1 = time.perf_counter()
        back = arr[...]
        t2 = time.perf_counter()
        assert np.array_equal(back, tile)
        best["encode_s"] = min(best["encode_s"], t1 - t0)
        best["decode_s"] = min(best["decode_s"], t2 - t1)
        best["bytes"] = float(arr.nbytes_stored())
    return best


def compare_checksums(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Gram runs and raw writes with and without crc32c, interleaved, one actor."""
    rows = []
    for mode, n, P in (("dense", args.dense_n, args.dense_tile),
                       ("fields", args.fields_n, args.fields_tile)):
        if mode not in args.modes.split(","):
            continue
        X = np.random.default_rng(0).normal(size=(n, args.d0))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        data = root / f"{mode}.npz"
        np.savez(data, X=X, y=np.ones(n))
        runs: dict[bool, dict[str, list]] = {False: {"gram": [], "raw": []},
                                             True: {"gram": [], "raw": []}}
        for _ in range(args.repeats):
            for checksum in (False, True):
                comp = {"codec": args.codec, "level": args.level, "checksum": checksum}
                runs[checksum]["raw"].append(raw_write(root, mode, n, args.d0, P, 1, comp))
                runs[checksum]["gram"].append(gram_run(root, data, mode, P, 1, args.depth, comp,
                                                       args.compile))
        for checksum in (False, True):
            comp = {"codec": args.codec, "level": args.level, "checksum": checksum}
            gram = min(runs[checksum]["gram"], key=lambda r: r["tile_s"])
            raw = min(runs[checksum]["raw"], key=lambda r: r["wall_s"])
            codec = codec_seconds(mode, args.d0, P, comp)
            rows.append({"mode": mode, "checksum": checksum, "n": n, "tile_points": P,
                         "gram_entries_per_s": gram["entries"] / gram["tile_s"],
                         "gram_cpu_s": min(g["cpu_s"] for g in runs[checksum]["gram"]),
                         "raw_values_per_s": raw["values"] / raw["wall_s"],
                         "raw_cpu_s": min(r["cpu_s"] for r in runs[checksum]["raw"]),
                         **{f"chunk_{k}": v for k, v in codec.items()}})
        off, on = rows[-2], rows[-1]
        print(f"{mode:6s} N={n} P={P}: gram {off['gram_entries_per_s']:.3g} -> "
              f"{on['gram_entries_per_s']:.3g} entries/s "
              f"({on['gram_entries_per_s'] / off['gram_entries_per_s']:.1%}), worker CPU "
              f"{off['gram_cpu_s']:.2f} -> {on['gram_cpu_s']:.2f} s; raw "
              f"{off['raw_values_per_s']:.3g} -> {on['raw_values_per_s']:.3g} values/s "
              f"({on['raw_values_per_s'] / off['raw_values_per_s']:.1%}); one chunk encode "
              f"{off['chunk_encode_s'] * 1e3:.2f} -> {on['chunk_encode_s'] * 1e3:.2f} ms, "
              f"decode {off['chunk_decode_s'] * 1e3:.2f} -> {on['chunk_decode_s'] * 1e3:.2f} ms,"
              f" {off['chunk_bytes']:.0f} -> {on['chunk_bytes']:.0f} bytes", flush=True)
    return rows


def compare_raw_and_gram(args: argparse.Namespace, root: Path,
                         compression: dict[str, Any]) -> list[dict[str, Any]]:
    """Raw writes and gram runs, interleaved, for each store mode and 1 and 2 actors."""
    rows: list[dict[str, Any]] = []
    modes = args.modes.split(",")
    for mode, n, P in (("dense", args.dense_n, args.dense_tile),
                       ("fields", args.fields_n, args.fields_tile)):
        if mode not in modes:
            continue
        X = np.random.default_rng(0).normal(size=(n, args.d0))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        data = root / f"{mode}.npz"
        np.savez(data, X=X, y=np.ones(n))
        per_value = (args.d0 + 1) ** 2 / 8 if mode == "fields" else 1.0
        for actors in (1, 2):
            raws, grams = [], []
            for _ in range(args.repeats):  # interleaved: both see the same machine load
                raws.append(raw_write(root, mode, n, args.d0, P, actors, compression))
                grams.append(gram_run(root, data, mode, P, actors, args.depth, compression,
                                      args.compile))
            raw = min(raws, key=lambda r: r["wall_s"])
            gram = min(grams, key=lambda r: r["tile_s"])
            raw_cpu = min(r["cpu_s"] for r in raws)
            gram_cpu = min(g["cpu_s"] for g in grams)
            stored_values = raw["values"]  # both write exactly the same chunks
            row = {
                "mode": mode, "n": n, "d0": args.d0, "tile_points": P, "actors": actors,
                "raw_values_per_s": stored_values / raw["wall_s"],
                "gram_values_per_s": stored_values / gram["tile_s"],
                "raw_values_per_cpu_s": stored_values / raw_cpu,
                "gram_values_per_cpu_s": stored_values / gram_cpu,
                "gram_entries_per_s": gram["entries"] / gram["tile_s"],
                "gram_entries_per_s_end_to_end": gram["entries"] / gram["wall_s"],
                "gram_wall_s": gram["wall_s"], "gram_tile_s": gram["tile_s"],
                "raw_s": raw["wall_s"], "dense_entries_per_stored_value": per_value,
            }
            row["gram_over_raw"] = row["gram_values_per_s"] / row["raw_values_per_s"]
            row["gram_over_raw_cpu"] = gram_cpu and raw_cpu / gram_cpu
            rows.append(row)
            print(f"{mode:6s} N={n} P={P} actors={actors}: raw {row['raw_values_per_s']:.3g} "
                  f"values/s, gram {row['gram_values_per_s']:.3g} values/s "
                  f"({row['gram_entries_per_s']:.3g} Gram entries/s; end to end "
                  f"{row['gram_entries_per_s_end_to_end']:.3g}) -> gram/raw "
                  f"{row['gram_over_raw']:.0%} wall, {row['gram_over_raw_cpu']:.0%} "
                  "per CPU-second", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-n", type=int, default=480, help="points, dense store")
    parser.add_argument("--dense-tile", type=int, default=60)
    parser.add_argument("--fields-n", type=int, default=2400, help="points, fields store")
    parser.add_argument("--fields-tile", type=int, default=300)
    parser.add_argument("--d0", type=int, default=11)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--codec", default="zstd")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--compile", action="store_true",
                        help="workers run the torch.compile'd field recursion (warm-up included)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--modes", default="dense,fields", help="store modes to run")
    parser.add_argument("--checksums", action="store_true",
                        help="compare writes with and without crc32c chunk checksums instead")
    args = parser.parse_args()
    compression = {"codec": args.codec, "level": args.level}

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    root = Path(tempfile.mkdtemp(prefix="bench_gram_"))
    rows: list[dict[str, Any]] = []
    try:
        if args.checksums:
            rows = compare_checksums(args, root)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
            return
        modes = args.modes.split(",")
        rows = compare_raw_and_gram(args, root, compression)
        print("\nmode    actors  gram/raw (wall)  gram/raw (CPU)  scaling 1->2 gram / raw")
        for mode in modes:
            one, two = [r for r in rows if r["mode"] == mode]
            g = two["gram_values_per_s"] / (2 * one["gram_values_per_s"])
            r = two["raw_values_per_s"] / (2 * one["raw_values_per_s"])
            one["scaling_gram"], one["scaling_raw"] = g, r
            print(f"{mode:6s}  1 / 2   {one['gram_over_raw']:.0%} / {two['gram_over_raw']:.0%}"
                  f"        {one['gram_over_raw_cpu']:.0%} / {two['gram_over_raw_cpu']:.0%}"
                  f"       {g:.0%} / {r:.0%}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
