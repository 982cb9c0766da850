"""The ``jntk`` command line: one sub-command per module in :mod:`jntk_dist.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from . import __version__
from .config import JobError

# Each entry is a module of jntk_dist.commands exposing ``register(subparsers)``; the parser it
# adds must ``set_defaults(func=...)`` with a function taking the parsed namespace.
COMMAND_MODULES = ["kernel", "gram", "drift", "solve", "eigen", "assumption8", "eigenfeatures", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jntk", description="Exact Jacobian NNGP / JNTK kernels, distributed.")
    parser.add_argument("--version", action="version", version=f"jntk_dist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"jntk_dist.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError, JobError) as err:
        print(f"jntk {args.command}: error: {err}", file=sys.stderr)
        return 2


def run_job(command: str, argv: Sequence[str] | None = None) -> int:
    """``python jobs/<command>.py CONFIG …`` (what ``ray job submit`` runs) = ``jntk <command> …``."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = [a for a in args if a in ("-v", "--verbose")]
    rest = [a for a in args if a not in ("-v", "--verbose")]
    return main([*verbose, command, *rest])


if __name__ == "__main__":
    sys.exit(main())
