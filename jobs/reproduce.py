"""Entry point for ``ray job submit -- python jobs/reproduce.py …`` (same code as ``jntk reproduce``):
run the paper's experiments of ``configs/paper/`` in sequence (``--quick``: reduced sizes).

    python jobs/reproduce.py --quick                      # all, reduced, into runs/paper
    python jobs/reproduce.py --only fig6,b7 --out runs/paper-full
    jntk report --runs runs/paper --out docs/reproduction.md               # then the report
"""

import sys

from jntk_dist.cli import run_job


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) as ``jntk reproduce`` does and run it."""
    return run_job("reproduce", argv)


if __name__ == "__main__":
    sys.exit(main())
