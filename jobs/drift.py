"""Entry point for ``ray job submit -- python jobs/drift.py CONFIG.yaml`` (same code as ``jntk drift``).

Inside a Ray job the driver connects to the running cluster (RAY_ADDRESS is set by Ray). On a
multi-node cluster ``output`` and ``checkpoints`` must be on storage every node sees.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jntk_dist.commands.drift import add_arguments, run


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
        print(f"jobs/drift.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
