"""Entry point for ``ray job submit -- python jobs/drift.py CONFIG.yaml`` (same code as ``jntk drift``).

Inside a Ray job the driver connects to the running cluster (RAY_ADDRESS is set by Ray). On a
multi-node cluster ``output`` and ``checkpoints`` must be on storage every node sees.
"""

import sys

from jntk_dist.cli import run_job


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) as ``jntk drift`` does and run the job."""
    return run_job("drift", argv)


if __name__ == "__main__":
    sys.exit(main())
