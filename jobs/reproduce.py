"""Run every paper experiment of ``configs/paper/`` in sequence (``--quick``: reduced sizes).

    python jobs/reproduce.py --quick                      # all, reduced, into runs/paper
    python jobs/reproduce.py --only fig6,b7 --out runs/paper-full
    ray job submit --working-dir . -- python jobs/reproduce.py --only fig1   # on a cluster
    jntk report --runs runs/paper --out docs/reproduction.md               # then the report

Each experiment calls its job's library entry point (``jntk drift`` / ``assumption8`` /
``eigenfeatures``) with the config's ``config:`` block, plus its ``quick:`` overrides with
``--quick``, plus ``--set`` overrides; output goes to ``<out>/<name>/`` with a ``run.json``
(status, wall time, hardware). A failing experiment is recorded and the others still run; the exit
status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jntk_dist.report import PAPER_CONFIGS, paper_configs, reproduce
from jntk_dist.store import is_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="apply each config's quick: block")
    parser.add_argument("--only", default=None, help="comma-separated experiment names")
    parser.add_argument("--out", default="runs/paper", help="runs folder (default runs/paper)")
    parser.add_argument("--configs", default=str(PAPER_CONFIGS), help="folder of paper configs")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a job-config key in every selected "
                        "experiment (after quick:)")
    parser.add_argument("--overwrite", action="store_true", help="delete earlier results first "
                        "(otherwise drift grids resume and the analyses rewrite their groups)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if is_url(args.out):
        print(f"jobs/reproduce.py: error: --out {args.out} is a URL; the runs folder (run.json, "
              "stores, figures read by jntk report) must be a local or shared path",
              file=sys.stderr)
        return 2
    try:
        exps = paper_configs(args.configs, only)
    except (ValueError, FileNotFoundError) as err:
        print(f"jobs/reproduce.py: error: {err}", file=sys.stderr)
        return 2
    records = reproduce(exps, args.out, quick=args.quick, overrides=args.overrides,
                        overwrite=args.overwrite, progress=not args.no_progress,
                        num_cpus=args.num_cpus)
    for r in records:
        state = "ok" if r["status"] == "ok" else f"FAILED: {r.get('error')}"
        print(f"{r['experiment']:>16}: {r['seconds']:8.1f} s  {state}", flush=True)
    print(f"runs in {args.out}; report: jntk report --runs {args.out}", flush=True)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
