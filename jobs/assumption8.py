"""Entry point for ``ray job submit -- python jobs/assumption8.py CONFIG.yaml`` (same code as ``jntk assumption8``).

Inside a Ray job RAY_ADDRESS is set: the Dask graphs of the solver run on that Ray cluster
(compute.scheduler: auto); outside one they run on Dask's threads or compute.dask_address.
"""

import sys

from jntk_dist.cli import run_job


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) as ``jntk assumption8`` does and run the job."""
    return run_job("assumption8", argv)


if __name__ == "__main__":
    sys.exit(main())
