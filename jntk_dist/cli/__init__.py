"""The ``jntk`` command line: thin. It parses, looks the job up in the one registry
(:mod:`jntk_dist.workflows.registry`), runs it and prints one-line errors: the package's errors
(:mod:`jntk_dist.errors`) and the OS errors a user causes as ``jntk <cmd>: error: …`` (exit 2),
Ctrl-C as ``jntk <cmd>: interrupted…`` (exit 130), anything else -- a bug -- with its traceback
(exit 1). ``-v`` adds the traceback to every error. Jobs are imported only when they run, so
``jntk --help`` and a wrong config path answer without importing torch, Ray or Zarr.

    jntk <job> CONFIG [--set key=value …] [--overwrite] [--repair] [--structured] [--no-progress]
    jntk kernel …        one dataset's kernel in this process, to .npy/.npz/.zarr
    jntk verify STORE    check every chunk of a Gram store
    jntk reproduce …     the paper's experiments (configs/paper/)
    jntk report …        their verdicts, into <runs>/reproduction.md (or --out FILE)
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Sequence

from ..errors import JntkError, is_user_os_error
from ..workflows.registry import JOBS, Job, load_job_config, run_config_job
from . import kernel, report, reproduce, verify

__all__ = ["build_parser", "main", "run_job"]


def add_config_arguments(parser: argparse.ArgumentParser, job: Job) -> None:
    """The arguments every config job takes: CONFIG, ``--set``, ``--no-progress`` (and
    ``--overwrite`` / ``--structured`` where the job has them)."""
    parser.add_argument("config", help=f"YAML job config (see {job.example})")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. kernel.depth=3 "
                        "(repeatable; values parsed as YAML)")
    if job.overwrite_help:
        parser.add_argument("--overwrite", action="store_true", help=job.overwrite_help)
    if job.repair_help:
        parser.add_argument("--repair", action="store_true", help=job.repair_help)
    if job.structured:
        parser.add_argument("--structured", action="store_true",
                            help="never form the dense Gram: matrix-free structured operator "
                                 "(sets structured.enabled; tune with --set structured.tol=… etc.)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_config_job(args: argparse.Namespace) -> int:
    job = JOBS[args.command]
    config = load_job_config(job, args.config, args.overrides,
                             structured=getattr(args, "structured", False))
    text = run_config_job(job, config, overwrite=getattr(args, "overwrite", False),
                          progress=not args.no_progress, repair=getattr(args, "repair", False))
    print(text, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``jntk`` parser: one sub-command per registered job, plus kernel, reproduce, report."""
    parser = argparse.ArgumentParser(
        prog="jntk", description="Exact Jacobian NNGP / JNTK kernels, distributed.")
    parser.add_argument("--version", action="version", version=f"jntk_dist {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kernel.register(sub)
    for job in JOBS.values():
        p = sub.add_parser(job.name, help=job.help, description=job.description)
        add_config_arguments(p, job)
        p.set_defaults(func=_run_config_job)
    reproduce.register(sub)
    report.register(sub)
    verify.register(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def _one_line(err: BaseException) -> str:
    """An error's message; an OS error as ``PATH: what`` (its errno text, not ``[Errno N]``)."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def _interrupted(command: str, err: KeyboardInterrupt, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(err)
    job = JOBS.get(command)
    detail = getattr(err, "detail", "") or ("the same command resumes" if job and job.resumes
                                            else "")
    print(f"jntk {command}: interrupted" + (f"; {detail}" if detail else ""), file=sys.stderr,
          flush=True)
    return 130


def _failed(command: str, err: Exception, verbose: bool) -> int:
    """One line for an error the user can act on (exit 2); a traceback for a bug (exit 1)."""
    if isinstance(err, JntkError) or is_user_os_error(err):
        if getattr(err, "report", None):  # what was written or found, before the error line
            print(err.report, flush=True)  # type: ignore[attr-defined]
        if verbose:
            traceback.print_exception(err)
        print(f"jntk {command}: error: {_one_line(err)}", file=sys.stderr, flush=True)
        return 2
    if isinstance(err, MemoryError):  # numpy's _ArrayMemoryError names the array's size
        if verbose:
            traceback.print_exception(err)
        print(f"jntk {command}: error: out of memory ({_one_line(err)}): use the matrix-free "
              "route (--structured), a smaller dataset or smaller tiles (--set tile_points=…)",
              file=sys.stderr, flush=True)
        return 2
    traceback.print_exception(err)
    print(f"jntk {command}: internal error {type(err).__name__}: this is a bug in jntk_dist, "
          "not a problem with your input; please report it with the traceback above",
          file=sys.stderr, flush=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jntk``; returns the exit status: 2 for a one-line error, 130 after Ctrl-C, 1 for a
    bug (shown with its traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        return _interrupted(args.command, err, args.verbose)
    except Exception as err:  # noqa: BLE001 -- sorted into user errors and bugs
        return _failed(args.command, err, args.verbose)


def run_job(command: str, argv: Sequence[str] | None = None) -> int:
    """``python jobs/<command>.py CONFIG …`` (what ``ray job submit`` runs) = ``jntk <command> …``."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = [a for a in args if a in ("-v", "--verbose")]
    rest = [a for a in args if a not in ("-v", "--verbose")]
    return main([*verbose, command, *rest])


if __name__ == "__main__":
    sys.exit(main())
