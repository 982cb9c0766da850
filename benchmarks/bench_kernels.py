"""Dense Gram construction speed vs. a memory copy of the same number of bytes (same run).

    python benchmarks/bench_kernels.py [--n 512] [--d0 11] [--depth 11] [--repeats 3]

Prints, per activation: time for the 8 fields (O(N² L)), time for expanding them into the
point-major Gram (O(N² d0²), into a preallocated matrix), total entries/s and its ratio to copy
bandwidth (target ≥ 25%), and `kernels.gram` end to end (which also allocates the matrix: its
first-touch page faults cost about as much as the expansion) against a copy into a fresh buffer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from jntk_dist import kernels


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--d0", type=int, default=11)
    p.add_argument("--depth", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--compile", action="store_true",
                   help="also time the torch.compile'd recursion (compiles once, untimed)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d0))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xt = torch.from_numpy(x)
    side = args.n * (args.d0 + 1)
    entries = side * side
    nbytes = entries * 8

    src = torch.empty(entries, dtype=torch.float64).normal_()
    dst = torch.empty_like(src)
    t_copy = best_of(lambda: dst.copy_(src), args.repeats)
    copy_rate = entries / t_copy
    t_fresh = best_of(lambda: torch.empty_like(src).copy_(src), args.repeats)
    print(f"N={args.n} d0={args.d0} L={args.depth} float64: {entries:,} entries ({nbytes/2**20:.0f} MiB), "
          f"torch threads={torch.get_num_threads()}")
    print(f"memory copy of the same bytes: {t_copy*1e3:8.1f} ms  ({copy_rate/1e6:8.1f} M entries/s, "
          f"{nbytes/t_copy/2**30:.2f} GiB/s); into a fresh buffer (page faults included): "
          f"{t_fresh*1e3:.1f} ms")
    p_ = args.d0 + 1
    gram_out = torch.empty((side, side), dtype=torch.float64)
    out = gram_out.view(args.n, p_, args.n, p_).permute(0, 2, 1, 3)  # point-major Gram layout
    src = dst = None  # free the copy buffers before the kernels run
    modes = [("erf", False), ("gelu", False)]
    if args.compile:
        modes += [("erf", True), ("gelu", True)]
    for act, compiled in modes:
        f_holder = {}

        def make_fields():
            f_holder["f"] = kernels.fields(xt, depth=args.depth, activation=act, kind="jntk",
                                           compile=compiled)

        if compiled:
            t0 = time.perf_counter()
            make_fields()
            kernels.expand_blocks(f_holder["f"], xt, out=out, compile=True)
            print(f"{act}: torch.compile warm-up {time.perf_counter() - t0:.1f} s (untimed)")

        t_fields = best_of(make_fields, args.repeats)
        t_expand = best_of(lambda: kernels.expand_blocks(f_holder["f"], xt, out=out,
                                                                compile=compiled), args.repeats)
        total = t_fields + t_expand
        rate = entries / total
        t_gram = best_of(lambda: kernels.gram(xt, depth=args.depth, activation=act,
                                              compile=compiled), args.repeats)
        label = f"{act}{'+compile' if compiled else ''}"
        print(f"{label:13s}: fields {t_fields*1e3:8.1f} ms, expansion {t_expand*1e3:8.1f} ms, "
              f"total {total*1e3:8.1f} ms -> {rate/1e6:8.1f} M entries/s = "
              f"{rate/copy_rate:6.1%} of copy bandwidth (expansion alone {entries/t_expand/copy_rate:6.1%}); "
              f"kernels.gram (fresh matrix) {t_gram*1e3:8.1f} ms = {t_fresh/t_gram:6.1%} of a fresh copy")


if __name__ == "__main__":
    main()
