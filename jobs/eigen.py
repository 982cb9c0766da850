"""Entry point for ``ray job submit -- python jobs/eigen.py CONFIG.yaml`` (same code as ``jntk eigen``).

Inside a Ray job RAY_ADDRESS is set: the Dask graphs of the solver run on that Ray cluster
(compute.scheduler: auto); outside one they run on Dask's threads or compute.dask_address.
"""

import sys

from jntk_dist.cli import run_job


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) as ``jntk eigen`` does and run the job."""
    return run_job("eigen", argv)


if __name__ == "__main__":
    sys.exit(main())
