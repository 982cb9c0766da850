"""``jntk report``: collect the paper-experiment runs into a Markdown report.

Reads ``<runs>/<name>/run.json`` and the result store of every config in ``configs/paper/`` (run
them with ``jntk reproduce [--quick]``), computes the verdicts from the stored numbers
and writes one table per figure (the paper's claim, ours, agree / disagree, why) with the figures.
By default the report goes beside the runs (``<runs>/reproduction.md``, figures in
``<runs>/figures/``); a file tracked by git -- the committed ``docs/reproduction.md`` -- is only
ever written when ``--out`` (or ``--figures``) names it.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

REPORT_NAME = "reproduction.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``jntk report`` and ``jobs/report.py``."""
    from ..workflows.reproduce import PAPER_CONFIGS

    parser.add_argument("--runs", default="runs/paper", help="folder of the runs, as written by "
                        "jntk reproduce --out (default: runs/paper)")
    parser.add_argument("--out", default=None, help="Markdown report to write; its text above "
                        f"the marker line is kept (default: <runs>/{REPORT_NAME}; the committed "
                        f"report is docs/{REPORT_NAME}, written only when named here)")
    parser.add_argument("--figures", default=None, help="where the PNGs are copied (default: "
                        "figures/ next to the report)")
    parser.add_argument("--configs", default=str(PAPER_CONFIGS), help="folder of paper configs "
                        f"(default: {PAPER_CONFIGS})")
    parser.add_argument("--only", default=None, help="comma-separated experiment names "
                        "(e.g. fig6,b7; default: every config in --configs)")
    parser.add_argument("--merge", action="append", default=[], metavar="RUNS",
                        help="another runs folder whose assumption8 runs join the tables of "
                        "--runs (e.g. depths run separately; repeatable; a depth computed twice "
                        "is taken from the first folder; default: none)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report", help="paper claims vs our numbers, from the runs of jntk reproduce",
        description="Collect the runs of the paper configs into a Markdown report: per figure "
                    "the paper's claim, our number, agree/disagree and why, and the figures. "
                    f"Written to <runs>/{REPORT_NAME} unless --out says otherwise; a file "
                    "tracked by git is never overwritten unless --out or --figures names it.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def tracked_files(path: Path) -> list[str]:
    """Files under ``path`` (a file or a folder) that git tracks; [] outside a work tree or
    without git."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists():
        folder = folder.parent
    try:
        listed = subprocess.run(["git", "-C", str(folder), "ls-files", "--", str(path.resolve())],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return listed.stdout.split() if listed.returncode == 0 else []


def _report_paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The report and figures paths; a default that would overwrite a tracked file is an error
    (an explicit --out or --figures is what the user asked for)."""
    out = Path(args.out) if args.out else Path(args.runs) / REPORT_NAME
    figures = Path(args.figures) if args.figures else None
    defaulted = ([] if args.out else [out]) + ([] if args.out or args.figures
                                               else [out.parent / "figures"])
    clash = [f for p in defaulted for f in tracked_files(p)]
    if clash:
        raise FileExistsError(f"the default report path {out} would overwrite files tracked by "
                              f"git ({', '.join(clash[:3])}{' …' if len(clash) > 3 else ''}); "
                              "name the report with --out (e.g. --out docs/reproduction.md to "
                              "update the committed one) or pick another --runs")
    return out, figures


def run(args: argparse.Namespace) -> int:
    """Write the report and print one summary line per experiment."""
    from ..report import collect, write_report
    from ..workflows.reproduce import paper_configs

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    exps = paper_configs(args.configs, only)
    if not Path(args.runs).is_dir():
        raise FileNotFoundError(f"runs folder {args.runs} does not exist; run "
                                "`jntk reproduce --quick --out "
                                f"{args.runs}` first")
    missing = [d for d in args.merge if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"runs folder(s) to merge do not exist: {missing}")
    out, figures = _report_paths(args)
    reports = collect(args.runs, exps, merge=args.merge, configs=args.configs)
    runs = args.runs + "".join(f"` + `{d}" for d in args.merge)
    out = write_report(reports, out, figures, runs_dir=runs)
    for r in reports:
        c = r.counts()
        state = r.problem or (f"{c['agree']} agree, {c['disagree']} disagree, "
                              f"{c['not tested']} not tested, "
                              f"{c['consistency check']} consistency checks")
        print(f"{r.exp.name:>16} ({', '.join(r.exp.figures)}): {state}")
    print(f"report: {out}", flush=True)
    return 0
