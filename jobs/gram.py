"""Entry point for ``ray job submit -- python jobs/gram.py CONFIG.yaml`` (same code as ``jntk gram``).

Inside a Ray job the driver connects to the running cluster (RAY_ADDRESS is set by Ray).
"""

import sys

from jntk_dist.cli import run_job


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) as ``jntk gram`` does and run the job."""
    return run_job("gram", argv)


if __name__ == "__main__":
    sys.exit(main())
