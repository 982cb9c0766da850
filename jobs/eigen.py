"""Entry point for ``ray job submit -- python jobs/eigen.py CONFIG.yaml`` (same code as ``jntk eigen``).

Inside a Ray job RAY_ADDRESS is set: the Dask graphs of the solver run on that Ray cluster
(compute.scheduler: auto); outside one they run on Dask's threads or compute.dask_address.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jntk_dist.commands.eigen import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"jobs/eigen.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
