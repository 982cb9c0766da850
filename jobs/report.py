"""Entry point for ``python jobs/report.py`` (same code as ``jntk report``): the paper runs in
``--runs`` → ``docs/reproduction.md`` with a claim / ours / verdict table per figure."""

from __future__ import annotations

import argparse
import sys

from jntk_dist.commands.report import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"jobs/report.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
