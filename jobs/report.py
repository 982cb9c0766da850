"""Entry point for ``python jobs/report.py`` (same code as ``jntk report``): the paper runs in
``--runs`` → ``<runs>/reproduction.md`` (``--out`` names another file) with a claim / ours /
verdict table per figure."""

import sys

from jntk_dist.cli import run_job


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) as ``jntk report`` does and run it."""
    return run_job("report", argv)


if __name__ == "__main__":
    sys.exit(main())
