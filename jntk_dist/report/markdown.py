"""The Markdown report: one table per figure (the paper's claim, ours, the verdict, why) and
the figures, below the hand-written part of ``docs/reproduction.md``."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .verdicts import ExperimentReport

__all__ = ["GENERATED_MARKER", "write_report"]

GENERATED_MARKER = "<!-- everything below is written by `jntk report`; edit above this line -->"
FIGURE_MAX_BYTES = 200_000


def _copy_figure(src: Path, dst: Path) -> Path:
    """Copy a PNG, re-encoding it with a palette (and then smaller) if over 200 KB."""
    shutil.copyfile(src, dst)
    if dst.stat().st_size <= FIGURE_MAX_BYTES:
        return dst
    from PIL import Image

    with Image.open(src) as im:
        img = im.convert("RGB")
    scale = 1.0
    while True:
        small = img if scale == 1.0 else img.resize((max(1, int(img.width * scale)),
                                                     max(1, int(img.height * scale))))
        small.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(dst, optimize=True)
        if dst.stat().st_size <= FIGURE_MAX_BYTES or scale < 0.3:
            return dst
        scale *= 0.8


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _hardware_line(hw: dict[str, Any]) -> str:
    gpu = hw.get("gpu") or "no GPU"
    return (f"{hw.get('cpus')} CPU cores, {hw.get('memory_gib')} GiB, {gpu}; load average "
            f"{hw.get('load_average_1min')} at start; {hw.get('platform')}, torch {hw.get('torch')}")


DEFAULT_HEADER = """# Reproducing Kim & Yang (ICML 2024) from `configs/paper/`

(Hand-written part: edit freely above the marker line; `jntk report` keeps it.)
"""


def write_report(reports: Sequence[ExperimentReport], out: str | Path,
                 figures_dir: str | Path | None = None, runs_dir: str | Path | None = None) -> Path:
    """Write (or update) the Markdown report; figures are copied to ``figures_dir``
    (default ``<out's folder>/figures``). Text above :data:`GENERATED_MARKER` is kept."""
    out = Path(out)
    figures_dir = Path(figures_dir) if figures_dir is not None else out.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    header = DEFAULT_HEADER
    if out.exists():
        text = out.read_text()
        header = text.split(GENERATED_MARKER)[0] if GENERATED_MARKER in text else text
    lines = [header.rstrip("\n"), "", GENERATED_MARKER, ""] + _summary(reports, runs_dir)
    for r in reports:
        lines += _section(r, out, figures_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip("\n") + "\n")
    return out


def _summary(reports: Sequence[ExperimentReport], runs_dir: str | Path | None) -> list[str]:
    """The results' heading and one line per experiment: size, wall time, verdict counts."""
    quick = {bool(r.record.get("quick")) for r in reports if r.record}
    kind = ("reduced-size quick runs (`--quick`)" if quick == {True} else
            "full-size runs" if quick == {False} else "a mix of quick and full-size runs")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Results: {kind}", "",
             f"Generated {when} by `jntk report` from the runs in `{runs_dir or '?'}`. Verdicts are "
             "computed from the stored numbers by the rules named in each config's "
             "`claim.rules` (`jntk_dist/report/verdicts.py`, `drift_verdicts.py`, "
             "`feature_verdicts.py`); every row quotes the sentence of the paper it checks, "
             "with its section, figure and line of the text extraction, or is marked as ours. "
             "Only rules that can fail are counted (agree / disagree); a rule with too few "
             "points, or an experiment not run at the paper's size, is *not tested*; a rule "
             "that holds by construction, is self-referential or uses a calibrated constant is "
             "a *consistency check*, reported but never counted as agreement with the paper. "
             "Quick runs (reduced size) carry no weight: their rows are shown, counted as not "
             "tested.", "",
             "| experiment | figures | size | wall time | agree | disagree | not tested | "
             "consistency check | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in reports:
        c = r.counts()
        quick = bool(r.record and r.record.get("quick"))
        if quick:  # a reduced run tests nothing: every row it has is "not tested"
            c = {**c, "not tested": c["not tested"] + c["agree"] + c["disagree"], "agree": 0,
                 "disagree": 0}
        secs = [rec["seconds"] for rec in r.records if "seconds" in rec]
        wall = (f"{sum(secs):.0f} s" + (f" ({len(secs)} runs)" if len(secs) > 1 else "")
                if secs else "—")
        size = ("quick, no weight" if quick else "full") if r.record else "—"
        status = r.problem or (_not_at_paper_size(r) if quick else "ok")
        lines.append(f"| [{r.exp.name}](#{r.exp.name}) | {', '.join(r.exp.figures)} | {size} | "
                     f"{wall} | {c['agree']} | {c['disagree']} | {c['not tested']} | "
                     f"{c['consistency check']} | {_cell(status)} |")
    return lines


def _not_at_paper_size(r: ExperimentReport) -> str:
    """What the report says of an experiment whose only run is a quick one."""
    return "not run at the paper's size" + (f": {r.exp.paper_size.strip()}"
                                            if r.exp.paper_size else "")


def _section(r: ExperimentReport, out: Path, figures_dir: Path) -> list[str]:
    """One experiment: the paper's claim, its runs, the rows, further tables, the figures."""
    lines = ["", f"### {r.exp.name}", "",
             f"**{', '.join(r.exp.figures)} — {r.exp.title}** "
             f"(`configs/paper/{r.exp.name}.yaml`, job `jntk {r.exp.job}`)", "",
             f"*The paper:* {r.exp.claim['text'].strip()}", ""]
    several = len(r.records) > 1
    if several:
        lines += [f"*Runs:* {len(r.records)} runs merged into one table "
                  "(`jntk report --merge`):", ""]
    for i, rec in enumerate(r.records):
        where = f"{i + 1}. `{rec.get('run_dir')}`: " if several else "*Run:* "
        by = f" by `{rec['runner']}`" if rec.get("runner") else ""
        lines.append(f"{where}{'quick (reduced size)' if rec.get('quick') else 'full size'}{by}"
                     f"{' with ' + ', '.join(rec['overrides']) if rec.get('overrides') else ''}; "
                     f"started {rec.get('started_utc')}, wall time {rec.get('seconds', 0):.1f} s "
                     f"on {_hardware_line(rec.get('hardware', {}))}.")
    if several:
        lines.append("")
    if r.size:
        lines.append(f"*Size:* {r.size}.")
    if r.exp.cluster:
        lines.append(f"*Full size:* {r.exp.cluster.strip()}")
    lines.append("")
    if r.problem:
        lines += [f"**No results:** {_cell(r.problem)}", ""]
    elif r.record and r.record.get("quick"):
        lines += [f"**{_not_at_paper_size(r)[0].upper() + _not_at_paper_size(r)[1:]}.** The "
                  "rows below come from a quick run and are not counted.", ""]
    if r.rows:
        lines += ["| curve / setting | the paper says | rule (how we test it) | we get | "
                  "verdict | why |", "|---|---|---|---|---|---|"]
        lines += [f"| {_cell(x.subject)} | {_cell(x.claim)} | {_cell(x.rule)} | "
                  f"{_cell(x.ours)} | **{x.verdict}** | {_cell(x.why)} |" for x in r.rows]
        lines.append("")
    for table in r.tables:
        lines += [table.rstrip("\n"), ""]
    for fig in r.figures:
        name = fig.name if fig.name.startswith(r.exp.name) else f"{r.exp.name}_{fig.name}"
        dst = _copy_figure(fig, figures_dir / name)
        lines += [f"![{r.exp.name}: {fig.stem}]({os.path.relpath(dst, out.parent)})", ""]
    return lines
