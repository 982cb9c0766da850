"""Sub-commands of the ``jntk`` CLI (see :data:`jntk_dist.cli.COMMAND_MODULES`)."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, example: str,
                         overwrite_help: str | None = None) -> None:
    """The arguments every config-driven job takes: CONFIG, ``--set``, ``--no-progress``
    (and ``--overwrite`` when the job writes a store it could refuse to replace)."""
    parser.add_argument("config", help=f"YAML job config (see {example})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. kernel.depth=3 "
                        "(repeatable; values parsed as YAML)")
    if overwrite_help:
        parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
