"""Reproduce the paper from ``configs/paper/`` and report, per figure, its claim next to our number.

The last step of the data path (… → analysis → report). It never re-implements an analysis: each
paper config names a job (``drift``, ``assumption8``, ``eigenfeatures``) and holds that job's
ordinary config, so ``jntk <job>`` runs it too; this module only

* runs the experiments (:func:`run_experiment`, :func:`reproduce`), optionally reduced by the
  config's ``quick:`` overrides (dotted keys, the ``--set`` syntax), each into
  ``<runs>/<name>/`` with a ``run.json`` (status, wall time, hardware, the config used);
* reads the result stores back and computes verdicts (:func:`evaluate`): each claim in the
  config's ``claim:`` block is a rule on the stored numbers (a fitted slope's sign, the depth from
  which a Gram is positive definite, a rank correlation), so a different number flips the verdict;
* writes ``docs/reproduction.md`` (:func:`write_report`) with one table per figure (the paper's
  claim, ours, agree / disagree / n/a, why) and the figures (PNG, copied and kept small),
  keeping the hand-written part of the file above :data:`GENERATED_MARKER`.

Paper config format (``configs/paper/<name>.yaml``)::

    title: ...                 # one line
    figures: [Fig. 6]
    job: assumption8           # drift | assumption8 | eigenfeatures
    claim: {text: ..., <rule keys of the job, see the _evaluate_* functions>}
    config: {...}              # the job's config, paper scale
    quick: {grid.widths: [16, 32], ...}   # overrides for --quick
    quick_points: 48           # eigenfeatures only: stratified random subset in --quick
    cluster: ...               # how the full run is meant to be run (free text)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError, JobConfig, apply_overrides, load_config

__all__ = [
    "PAPER_CONFIGS",
    "GENERATED_MARKER",
    "PaperConfig",
    "Row",
    "ExperimentReport",
    "load_paper_config",
    "paper_configs",
    "job_config",
    "run_experiment",
    "reproduce",
    "evaluate",
    "drift_rows",
    "assumption8_rows",
    "merge_assumption8_rows",
    "eigenfeatures_rows",
    "collect",
    "write_report",
]

log = logging.getLogger(__name__)

PAPER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
GENERATED_MARKER = "<!-- everything below is written by `jntk report`; edit above this line -->"
FIGURE_MAX_BYTES = 200_000
JobName = Literal["drift", "assumption8", "eigenfeatures"]
Verdict = Literal["agree", "disagree", "n/a"]


# ---- paper configs ------------------------------------------------------------------------


class PaperConfig(BaseModel):
    """One experiment of the paper: which job, the job's config, the claim, the quick overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    title: str
    figures: list[str] = Field(min_length=1)
    job: JobName
    claim: dict[str, Any]
    config: dict[str, Any]
    quick: dict[str, Any] = Field(default_factory=dict)
    quick_points: int | None = Field(default=None, ge=8)
    cluster: str = ""

    def model_post_init(self, _: Any) -> None:
        if not isinstance(self.claim.get("text"), str):
            raise ValueError(f"paper config {self.name!r}: claim.text (the paper's claim, in words) "
                             "is required")
        if self.quick_points is not None and self.job != "eigenfeatures":
            raise ValueError(f"paper config {self.name!r}: quick_points applies to eigenfeatures "
                             "jobs only (the others have max_points in their config)")


def _job_model(job: str) -> type[JobConfig]:
    if job == "drift":
        from .drift import DriftConfig

        return DriftConfig
    if job == "assumption8":
        from .commands.assumption8 import Assumption8JobConfig

        return Assumption8JobConfig
    if job == "eigenfeatures":
        from .commands.eigenfeatures import EigenfeaturesJobConfig

        return EigenfeaturesJobConfig
    raise ValueError(f"unknown job {job!r}; expected one of drift, assumption8, eigenfeatures")


def load_paper_config(path: str | Path) -> PaperConfig:
    """Read and validate a paper config, including its job config at full and quick size."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"paper config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"paper config {path}: top level must be a mapping")
    try:
        exp = PaperConfig.model_validate({**data, "name": path.stem})
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                 for e in err.errors()]
        raise ConfigError(f"invalid paper config {path}:\n" + "\n".join(lines)) from None
    for quick in (False, True):  # both sizes must be valid job configs
        job_config(exp, Path("runs/paper"), quick=quick, materialise=False)
    return exp


def paper_configs(directory: str | Path = PAPER_CONFIGS,
                  only: Sequence[str] | None = None) -> list[PaperConfig]:
    """All paper configs in ``directory`` (sorted by name), or those named in ``only``."""
    directory = Path(directory)
    # the paper's order: main-text figures first (fig1, fig2, …), then the appendix ones
    paths = sorted(directory.glob("*.yaml"), key=lambda p: (not p.stem.startswith("fig"), p.stem))
    names = [p.stem for p in paths]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; {directory} has {names}")
        paths = [p for p in paths if p.stem in only]
    if not paths:
        raise FileNotFoundError(f"no paper configs (*.yaml) in {directory}")
    return [load_paper_config(p) for p in paths]


def job_config(exp: PaperConfig, runs_dir: Path, quick: bool = False,
               overrides: Sequence[str] = (), materialise: bool = True) -> JobConfig:
    """The validated job config of ``exp``: its ``config`` + ``quick`` overrides (when ``quick``)
    + ``overrides``, with ``output`` set to ``<runs_dir>/<name>/<name>.zarr``.

    With ``quick_points`` (eigenfeatures), a stratified random subset of the dataset is written to
    ``<runs_dir>/<name>/quick_subset.npz`` and used as the dataset (``materialise=False`` only
    validates, without reading the data)."""
    data = copy.deepcopy(exp.config)
    sets = [f"{k}={json.dumps(v)}" for k, v in exp.quick.items()] if quick else []
    apply_overrides(data, sets + list(overrides))
    run_dir = Path(runs_dir) / exp.name
    data["output"] = str(run_dir / f"{exp.name}.zarr")
    if exp.job == "drift":
        data.setdefault("progress", False)
    if quick and exp.quick_points is not None and materialise:
        data["dataset"] = {"path": str(_quick_subset(exp, data, run_dir))}
    try:
        return load_config(data, _job_model(exp.job))
    except ConfigError as err:
        raise ConfigError(f"paper config {exp.name!r}{' (quick)' if quick else ''}: {err}") from None


def _quick_subset(exp: PaperConfig, data: dict[str, Any], run_dir: Path) -> Path:
    """Write a stratified random subset of ``quick_points`` rows of the job's dataset to npz."""
    from .commands.solve import split_indices
    from .config import DatasetSpec

    loaded = DatasetSpec.model_validate(data["dataset"]).load()
    n = loaded.X.shape[0]
    assert exp.quick_points is not None
    if exp.quick_points >= n:
        raise ValueError(f"{exp.name}: quick_points={exp.quick_points} ≥ the {n} rows of "
                         f"{loaded.name!r}")
    _, keep = split_indices(loaded.y, exp.quick_points / n, int(data.get("seed", 0)))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "quick_subset.npz"
    np.savez(path, X=loaded.X[keep], y=loaded.y[keep], source_index=keep)
    return path


# ---- running ------------------------------------------------------------------------------


def hardware() -> dict[str, Any]:
    """Where a run ran: platform, CPUs, memory, GPU, load average at start."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch": torch.__version__}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2**30, 1)
        info["load_average_1min"] = round(os.getloadavg()[0], 1)
    except (OSError, ValueError, AttributeError):
        pass
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def run_experiment(exp: PaperConfig, runs_dir: str | Path, quick: bool = False,
                   overrides: Sequence[str] = (), overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Run one experiment's job into ``<runs_dir>/<name>/`` and write its ``run.json``.

    A failing job does not raise: its record says ``status: failed`` with the error, so that the
    other experiments still run and the report shows what is missing."""
    runs_dir = Path(runs_dir)
    run_dir = runs_dir / exp.name
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "experiment": exp.name, "job": exp.job, "figures": exp.figures, "quick": quick,
        "overrides": list(overrides), "started_utc": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "hardware": hardware(), "status": "failed"}
    t0 = time.perf_counter()
    try:
        cfg = job_config(exp, runs_dir, quick=quick, overrides=overrides)
        record["config"] = cfg.to_dict()
        record["output"] = str(cfg.output)
        record["summary"] = _run_job(exp.job, cfg, progress)
        record["status"] = "ok"
    except Exception as err:  # recorded, reported; the other experiments go on
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc(limit=8)
        log.error("experiment %s failed: %s", exp.name, record["error"])
    record["seconds"] = round(time.perf_counter() - t0, 2)
    (run_dir / "run.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def _run_job(job: str, cfg: Any, progress: bool) -> dict[str, Any]:
    """Call the job's library entry point; return a small JSON-able summary."""
    if job == "drift":
        from .drift import run_drift

        res = run_drift(cfg, progress=progress)
        return {"runs_total": res.runs_total, "runs_computed": len(res.runs_computed),
                "plots": [str(p) for p in res.plots]}
    if job == "assumption8":
        from .commands.assumption8 import run_assumption8

        rows = run_assumption8(cfg, progress=progress)
        return {"rows": len(rows)}
    from .commands.eigenfeatures import run_eigenfeatures

    s = run_eigenfeatures(cfg, progress=progress)
    return {"n_train": s["n_train"], "n_test": s["n_test"], "plot": s["plot"]}


def reproduce(experiments: Sequence[PaperConfig], runs_dir: str | Path, quick: bool = False,
              overrides: Sequence[str] = (), overwrite: bool = False, progress: bool = True,
              num_cpus: int | None = None) -> list[dict[str, Any]]:
    """Run the experiments in sequence (one embedded Ray for all drift grids); return records."""
    started_ray = False
    if any(e.job == "drift" for e in experiments) and not os.environ.get("RAY_ADDRESS"):
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            started_ray = True
    try:
        records = []
        for exp in experiments:
            log.info("experiment %s (%s, %s)", exp.name, exp.job, "quick" if quick else "full size")
            records.append(run_experiment(exp, runs_dir, quick, overrides, overwrite, progress))
        return records
    finally:
        if started_ray:
            import ray

            ray.shutdown()


# ---- verdicts -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a figure's table."""

    claim: str
    ours: str
    verdict: Verdict
    why: str = ""


@dataclass
class ExperimentReport:
    """What the report says about one experiment."""

    exp: PaperConfig
    record: dict[str, Any] | None
    rows: list[Row] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    size: str = ""
    problem: str = ""  # why there are no rows (not run, failed, unreadable store)
    merged: list[dict[str, Any]] = field(default_factory=list)  # records of --merge runs

    @property
    def records(self) -> list[dict[str, Any]]:
        """The run records behind this report: the main run, then the merged ones."""
        return ([self.record] if self.record else []) + self.merged

    def counts(self) -> dict[str, int]:
        out = {"agree": 0, "disagree": 0, "n/a": 0}
        for r in self.rows:
            out[r.verdict] += 1
        return out


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def drift_rows(slopes: dict[tuple[int, int], dict[str, float]],
               first_last: dict[tuple[int, int], dict[str, tuple[float, float]]],
               widths: Sequence[int], claim: dict[str, Any], quick: bool,
               drift_slopes: dict[tuple[int, int], dict[str, float]] | None = None,
               note: str = "") -> list[Row]:
    """Rows for a drift figure from fitted log-log slopes of mean Δ vs width.

    ``slopes[(depth, step)][component]``; ``first_last`` the mean Δ at the narrowest and widest
    width. Rules: ``decreasing`` (every slope < 0); ``slope`` ± ``slope_tolerance`` (the mean slope
    over components lies in the band); ``kernel_constant`` (Fig. 3: the network's own kernel
    movement Θ_t − Θ_0 shrinks with width at every recorded step t > 0, from ``drift_slopes``).
    """
    rows = []
    w = f"widths {min(widths)}–{max(widths)}"
    multi_step = len({s for _, s in slopes}) > 1
    for (depth, step), comp in slopes.items():
        where = f"L={depth}, step {step}" if multi_step else f"L={depth}"
        vals = ", ".join(f"{c}: {_fmt(v)}" for c, v in comp.items())
        fl = first_last[(depth, step)]
        ends = "; ".join(f"{c}: {_fmt(a)}→{_fmt(b)}" for c, (a, b) in fl.items())
        finite = [v for v in comp.values() if math.isfinite(v)]
        if claim.get("decreasing", True):
            if not finite:
                verdict, why = "n/a", "no finite slopes (fewer than two widths with Δ > 0)"
            else:
                bad = [c for c, v in comp.items() if not (math.isfinite(v) and v < 0)]
                verdict = "agree" if not bad else "disagree"
                why = "" if not bad else (
                    f"Δ does not fall with width for {', '.join(bad)} over {w}"
                    + (f"; {note}" if note else "")
                    + ("; quick run: few, narrow widths and few seeds" if quick else ""))
            rows.append(Row(f"{where}: Δ decreases with width (log-log slope < 0)",
                            f"slopes {vals} ({w}; mean Δ {ends})", verdict, why))
        if "slope" in claim and finite:
            target, tol = float(claim["slope"]), float(claim.get("slope_tolerance", 0.25))
            mean = float(np.mean(finite))
            ok = abs(mean - target) <= tol
            rows.append(Row(f"{where}: rate Δ ∝ width^{target:g} (±{tol:g})",
                            f"mean slope {mean:.2f}", "agree" if ok else "disagree",
                            "" if ok else f"mean slope {mean:.2f} outside {target:g}±{tol:g} over "
                            f"{w}" + ("; quick run: 2–3 narrow widths, few seeds" if quick else "")))
    if claim.get("kernel_constant") and drift_slopes:
        for (depth, step), comp in drift_slopes.items():
            if step == 0:
                continue
            vals = ", ".join(f"{c}: {_fmt(v)}" for c, v in comp.items())
            bad = [c for c, v in comp.items() if not (math.isfinite(v) and v < 0)]
            rows.append(Row(f"L={depth}, step {step}: the kernel's movement |Θ_t − Θ_0| shrinks "
                            "with width", f"slopes {vals}", "agree" if not bad else "disagree",
                            "" if not bad else f"no decrease for {', '.join(bad)} over {w}"
                            + (f"; {note}" if note else "") + ("; quick run" if quick else "")))
    return rows


def _evaluate_drift(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport) -> None:
    from .drift import fit_slopes, open_drift
    from .training import component_label

    ds = open_drift(record["output"])
    if not bool(ds["complete"].all()):
        rep.problem = (f"store {record['output']} is incomplete "
                       f"({int(ds['complete'].sum())}/{ds['complete'].size} runs); rerun to finish")
        return
    labels = [component_label(int(a), int(b)) for a, b in zip(ds["alpha"].values,
                                                               ds["beta"].values)]
    widths = [int(v) for v in ds["width"].values]
    mean = ds["distance"].mean("seed").transpose("width", "depth", "step", "component").values

    def table(arr: Any) -> dict[tuple[int, int], dict[str, float]]:
        vals = arr.transpose("depth", "step", "component").values
        return {(int(d), int(s)): {labels[c]: float(vals[j, t, c]) for c in range(len(labels))}
                for j, d in enumerate(ds["depth"].values) for t, s in enumerate(ds["step"].values)}

    slopes = table(fit_slopes(ds))
    first_last = {(int(d), int(s)): {labels[c]: (float(mean[0, j, t, c]), float(mean[-1, j, t, c]))
                                     for c in range(len(labels))}
                  for j, d in enumerate(ds["depth"].values)
                  for t, s in enumerate(ds["step"].values)}
    drift_slopes = None
    if exp.claim.get("kernel_constant"):
        drift_slopes = table(fit_slopes(ds.assign(distance=ds["drift"])))
    cfg = record.get("config", {})
    note = ""
    loss = ds["loss"].mean("seed").transpose("width", "depth", "step").values
    if ds.sizes["step"] > 1 and np.isfinite(loss[-1, 0]).all():
        note = (f"training loss of the widest nets {loss[-1, 0, 0]:.3g} → {loss[-1, 0, -1]:.3g} "
                f"(step {int(ds['step'].values[-1])})")
    if ds.attrs.get("experiment") == "nngp":
        n = cfg.get("monte_carlo", {}).get("n_networks")
        note = (f"Monte-Carlo error of {n} networks (∝ n^-1/2) can exceed the finite-width bias "
                f"(∝ 1/width) at wide widths")
    rep.rows = drift_rows(slopes, first_last, widths, exp.claim, bool(record.get("quick")),
                          drift_slopes, note)
    plots_dir = Path(cfg.get("plots") or Path(record["output"]).with_name(
        Path(record["output"]).stem + "_plots"))
    rep.figures = sorted(plots_dir.glob("*.png"))
    g = cfg.get("grid", {})
    steps = cfg.get("training", {}).get("record_steps", [0])
    extra = (f", {cfg.get('monte_carlo', {}).get('n_networks')} networks per run"
             if ds.attrs.get("experiment") == "nngp" else f", steps {steps}")
    rep.size = (f"{ds.attrs.get('n_points')} points (d0={ds.attrs.get('d0')}), widths "
                f"{g.get('widths')}, depths {g.get('depths')}, {len(g.get('seeds', []))} seeds"
                + extra)


def _onset(depths: Sequence[int], positive: Sequence[bool]) -> int | None:
    """Smallest computed depth from which every computed depth is positive (None: never)."""
    onset = None
    for d, p in sorted(zip(depths, positive), reverse=True):
        if not p:
            break
        onset = d
    return onset


def assumption8_rows(rows: Sequence[dict[str, Any]], claim: dict[str, Any],
                     quick: bool) -> list[Row]:
    """Rows for Fig. 6 / B7 / B8 from the λ_min table (positive iff λ_min > τ, recomputed here).

    A row may carry ``lambda_min_residual`` (structured mode: λ_min is a Ritz value θ ≥ λ_min with
    that residual); positive then means θ − residual > τ.

    Rules: ``ntk_always_pd`` (NTK positive at every depth), ``jntk_pd_from_depth: {act: L}`` (the
    JNTK Gram is positive from depth L on and not just below it; with a coarse depth grid, not
    positive at the deepest computed depth < L), ``jntk_pd_eventually`` (positive at the deepest
    computed depth).
    """
    out: list[Row] = []
    groups: dict[tuple[str, str, str], list[tuple[int, bool, float, float, float, float]]] = {}
    for r in rows:
        pos = (float(r["lambda_min"]) - float(r.get("lambda_min_residual", 0.0))
               > float(r["tolerance"]))
        groups.setdefault((str(r["dataset"]), str(r["activation"]), str(r["kernel"])), []).append(
            (int(r["depth"]), pos, float(r["lambda_min"]), float(r["tolerance"]),
             float(r.get("lambda_max", math.nan)), float(r.get("lambda_min_residual", 0.0))))
    small = "; quick run on a subset: λ_min depends on the points" if quick else ""
    for (dataset, act, kind), vals in groups.items():
        vals.sort()
        depths = [v[0] for v in vals]
        pos = [v[1] for v in vals]
        onset = _onset(depths, pos)
        lo = min(vals, key=lambda v: v[2])
        where = f"{dataset}, {act}"
        if kind == "ntk" and claim.get("ntk_always_pd", False):
            bad = [d for d, p in zip(depths, pos) if not p]
            out.append(Row(f"{where}: NTK Gram positive definite at every depth",
                           f"positive at {len(depths) - len(bad)}/{len(depths)} depths "
                           f"{depths[0]}–{depths[-1]}; smallest λ_min {lo[2]:.2e} (L={lo[0]})",
                           "agree" if not bad else "disagree",
                           "" if not bad else f"λ_min ≤ τ = n·eps·λ_max at L={bad}{small}"))
        if kind != "jntk":
            continue
        if onset is None:
            state = "not positive at any computed depth"
        elif onset == depths[0] and depths[0] > 1:
            state = f"positive at every computed depth (onset ≤ L={onset}, the shallowest computed)"
        else:
            state = f"positive from L={onset}"
        cond = "" if not math.isfinite(vals[-1][4]) else f", λ_min/λ_max={vals[-1][2] / vals[-1][4]:.1e}"
        res = f" ± {vals[-1][5]:.1e}" if vals[-1][5] > 0 else ""  # a Ritz value's residual
        ours = (f"{state} (depths {depths}; at L={depths[-1]}: λ_min={vals[-1][2]:.2e}{res}, "
                f"τ={vals[-1][3]:.1e}{cond})")
        target = claim.get("jntk_pd_from_depth", {}).get(act)
        if target is not None:
            target = int(target)
            above = [p for d, p in zip(depths, pos) if d >= target]
            below = [p for d, p in zip(depths, pos) if d < target]
            if not above:
                verdict, why = "n/a", f"depth {target} not computed (depths {depths})"
            elif all(above) and (not below or not below[-1]):
                verdict = "agree"
                why = "" if target in depths and (not below or target - 1 in depths) else \
                    f"consistent on the computed depths {depths} (coarse grid)"
            else:
                verdict = "disagree"
                if onset is None:
                    why = "never positive on these points"
                elif onset < target:
                    why = (f"already positive at L={onset} (< {target}) on these points; the paper's "
                           "positivity criterion is not published (ours: λ_min > n·eps·λ_max)")
                else:
                    why = f"positive only from L={onset} (> {target}) on these points"
                why += small
            out.append(Row(f"{where}: JNTK Gram positive definite from depth {target}", ours,
                           verdict, why))
        elif claim.get("jntk_pd_eventually", False):
            ok = pos[-1]
            out.append(Row(f"{where}: JNTK Gram positive definite for deep enough networks", ours,
                           "agree" if ok else "disagree",
                           "" if ok else f"λ_min ≤ τ at the deepest computed L={depths[-1]}" + small))
    return out


def _assumption8_table(output: str | Path) -> list[dict[str, Any]]:
    """The rows of an assumption8 store (``lambda_min_residual`` 0 where the store has none)."""
    import zarr

    g = zarr.open_group(str(Path(output) / "assumption8"), mode="r")
    cols = ["dataset", "activation", "depth", "kernel", "n", "lambda_min", "lambda_max",
            "tolerance"]
    arrays = {c: np.asarray(g[c][...]) for c in cols}
    depth = arrays["depth"]
    arrays["lambda_min_residual"] = (np.asarray(g["lambda_min_residual"][...])
                                     if "lambda_min_residual" in g else np.zeros(depth.shape))
    return [{c: arrays[c][i] for c in arrays} for i in range(depth.shape[0])]


def merge_assumption8_rows(tables: Sequence[Sequence[dict[str, Any]]]
                           ) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of several assumption8 runs as one table: a (dataset, activation, kernel, depth)
    computed by more than one run is taken from the first; the second value says, per later run,
    the depths whose rows were skipped so (e.g. "run 2: L=11 (4 rows)")."""
    merged: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    skipped: list[str] = []
    for t, table in enumerate(tables):
        dropped: dict[int, int] = {}
        for r in table:
            key = (str(r["dataset"]), str(r["activation"]), str(r["kernel"]), int(r["depth"]))
            if key in merged:
                dropped[key[3]] = dropped.get(key[3], 0) + 1
                continue
            merged[key] = r
        if dropped:
            skipped.append(f"run {t + 1}: L={_depth_ranges(sorted(dropped))} "
                           f"({sum(dropped.values())} rows)")
    return list(merged.values()), skipped


def _evaluate_assumption8(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport) -> None:
    records = [record] + rep.merged
    rows, skipped = merge_assumption8_rows([_assumption8_table(r["output"]) for r in records])
    rep.rows = assumption8_rows(rows, exp.claim, bool(record.get("quick")))
    stem = Path(record["output"]).with_suffix("")
    if rep.merged:  # one plot of the merged table, beside the main run's store
        from .commands.assumption8 import plot

        merged_png = stem.parent / "merged" / f"{stem.name}_assumption8.png"
        merged_png.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, merged_png)
        rep.figures = [merged_png]
    else:
        rep.figures = [p for p in [Path(f"{stem}_assumption8.png")] if p.exists()]
    sizes = dict.fromkeys(f"{r['dataset']} ({r['kernel']} Gram {int(r['n'])})" for r in rows)
    depths: dict[str, set[int]] = {}
    for r in rows:
        depths.setdefault(str(r["dataset"]), set()).add(int(r["depth"]))
    if len({tuple(sorted(d)) for d in depths.values()}) == 1:
        rep.size = "; ".join(sizes) + f"; depths {sorted(next(iter(depths.values())))}"
    else:  # merged runs cover different depths per dataset
        rep.size = "; ".join(sizes) + "; depths " + "; ".join(
            f"{name}: {_depth_ranges(sorted(d))}" for name, d in depths.items())
    if rep.merged:
        rep.size += f" (merged from {len(records)} runs"
        rep.size += f"; duplicates skipped, first run kept: {', '.join(skipped)})" if skipped \
            else ")"


def _depth_ranges(depths: Sequence[int]) -> str:
    """[1, 2, 3, 5, 7, 8] → "1–3, 5, 7–8"."""
    parts: list[str] = []
    start = prev = depths[0]
    for d in list(depths[1:]) + [None]:  # type: ignore[list-item]
        if d is not None and d == prev + 1:
            prev = d
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if d is not None:
            start = prev = d
    return ", ".join(parts)


def eigenfeatures_rows(settings: dict[str, dict[str, Any]], claim: dict[str, Any],
                       quick: bool) -> list[Row]:
    """Rows for Figs. 4/5 / B9–B13 from per-setting eigenvalues and accuracies.

    ``settings[name]`` holds ``eigenvalues``, ``tolerance``, ``test_accuracy``,
    ``perturbed_accuracy`` ({step: array}) and the predictor's ``predictor_test_accuracy`` and
    ``predictor_accuracy_step`` ({step: float}). Rules: ``robust_large_eigenvalues`` (Spearman
    ρ(log λ_i, accuracy after the ``step`` perturbation) > 0 over the eigenpairs above τ, one-sided
    p < ``significance``, default 0.05);
    ``attack_hurts_standard`` (the perturbation lowers the standard predictor's accuracy).
    """
    from scipy.stats import spearmanr

    out: list[Row] = []
    step = float(claim.get("step", 0.1))
    alpha = float(claim.get("significance", 0.05))
    note = "; quick run on a small subset" if quick else ""
    for name, s in settings.items():
        label = "standard NTK" if name == "standard" else name.replace("lam_", "λ=")
        w = np.asarray(s["eigenvalues"], dtype=float)
        keep = w > float(s["tolerance"])
        if claim.get("robust_large_eigenvalues"):
            acc = np.asarray(s["perturbed_accuracy"][step], dtype=float)[keep]
            if keep.sum() < 3 or np.ptp(acc) == 0:
                out.append(Row(f"{label}: eigenfeatures with larger eigenvalues keep more accuracy "
                               f"under the step-{step:g} perturbation",
                               f"{int(keep.sum())} eigenpairs above τ", "n/a",
                               "too few eigenpairs above τ, or constant accuracy"))
            else:
                res = spearmanr(np.log(w[keep]), acc, alternative="greater")
                rho, p = float(res.statistic), float(res.pvalue)
                top = acc[np.argsort(w[keep])[::-1][:5]]
                ok = rho > 0 and p < alpha
                out.append(Row(f"{label}: eigenfeatures with larger eigenvalues keep more accuracy "
                               f"under the step-{step:g} perturbation",
                               f"Spearman ρ(log λ_i, accuracy) = {rho:+.2f} (one-sided p = "
                               f"{p:.2g}) over {int(keep.sum())} eigenpairs above τ; top-5 "
                               f"features' accuracy {np.round(top, 2).tolist()}",
                               "agree" if ok else "disagree",
                               "" if ok else f"no significant positive rank correlation "
                               f"(p ≥ {alpha:g}){note}"))
    std = settings.get("standard")
    if claim.get("attack_hurts_standard") and std is not None:
        clean = float(std["predictor_test_accuracy"])
        pert = {k: float(v) for k, v in std["predictor_accuracy_step"].items()}
        worst = pert[max(pert)]
        ok = worst < clean
        out.append(Row("standard NTK predictor: the one-step PGD perturbation lowers its test "
                       "accuracy (the attack of Figs. 4/5 works)",
                       f"clean {clean:.3f}; " + ", ".join(f"step {k:g}: {v:.3f}"
                                                          for k, v in sorted(pert.items())),
                       "agree" if ok else "disagree", "" if ok else "accuracy not lowered" + note))
    if claim.get("report_predictor_accuracy", True):
        for name, s in settings.items():
            if name == "standard":
                continue
            pert = ", ".join(f"step {k:g}: {float(v):.3f}"
                             for k, v in sorted(s["predictor_accuracy_step"].items()))
            out.append(Row(f"{name.replace('lam_', 'λ=')}: f_ntk accuracy, clean and perturbed "
                           "(recorded, no claim)",
                           f"clean {float(s['predictor_test_accuracy']):.3f}; {pert}", "n/a",
                           "no numeric claim to compare"))
    return out


def _evaluate_eigenfeatures(exp: PaperConfig, record: dict[str, Any],
                            rep: ExperimentReport) -> None:
    import zarr

    root = zarr.open_group(str(Path(record["output"]) / "eigenfeatures"), mode="r")
    attrs = dict(root.attrs)
    steps = [float(s) for s in attrs["steps"]]
    settings = {}
    for name in attrs["runs"]:
        g = root[name]
        a = dict(g.attrs)
        settings[name] = {
            "eigenvalues": g["eigenvalues"][...], "tolerance": float(a["tolerance"]),
            "test_accuracy": g["test_accuracy"][...],
            "perturbed_accuracy": {s: g[f"perturbed_accuracy_{s:g}"][...] for s in steps},
            "predictor_test_accuracy": float(a["predictor_test_accuracy"]),
            "predictor_accuracy_step": {s: float(a[f"predictor_accuracy_step_{s:g}"])
                                        for s in steps}}
    rep.rows = eigenfeatures_rows(settings, exp.claim, bool(record.get("quick")))
    stem = Path(record["output"]).with_suffix("")
    rep.figures = [p for p in [stem.parent / f"{stem.name}_eigenfeatures.png"] if p.exists()]
    sizes = {n: int(root[n].attrs["gram_size"]) for n in attrs["runs"]}
    rep.size = (f"{attrs['source']}, depth {attrs['depth']} {attrs['activation']}, "
                f"{attrs['n_train']} train / {attrs['n_test']} test points, Gram sizes "
                + ", ".join(f"{k}: {v}" for k, v in sizes.items()))


_EVALUATORS: dict[str, Callable[[PaperConfig, dict[str, Any], ExperimentReport], None]] = {
    "drift": _evaluate_drift, "assumption8": _evaluate_assumption8,
    "eigenfeatures": _evaluate_eigenfeatures}


def _read_record(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text())
    if record.get("output"):  # the runs folder may have been moved since: look inside it
        moved = path.parent / Path(record["output"]).name
        if moved.exists():
            record["output"] = str(moved)
    record["run_dir"] = str(path.parent.parent)
    return record


def evaluate(exp: PaperConfig, runs_dir: str | Path,
             merge: Sequence[str | Path] = ()) -> ExperimentReport:
    """Read ``<runs_dir>/<name>/run.json`` and the job's store; compute the table rows.

    ``merge``: further runs folders; where one holds a successful run of this experiment
    (``<folder>/<name>/run.json``), its rows join the table (assumption8 experiments only: e.g.
    depths run separately; a depth computed twice is taken from the first folder)."""
    path = Path(runs_dir) / exp.name / "run.json"
    extra = [_read_record(p) for p in (Path(d) / exp.name / "run.json" for d in merge)
             if p.exists()]
    failed = [r for r in extra if r.get("status") != "ok"]
    if not path.exists() and not extra:
        return ExperimentReport(exp, None, problem=f"not run ({path} missing)")
    if path.exists():
        record, merged = _read_record(path), extra
    else:
        record, merged = extra[0], extra[1:]
    rep = ExperimentReport(exp, record, merged=merged)
    if record.get("status") != "ok":
        rep.problem = f"the job failed: {record.get('error', 'unknown error')}"
        return rep
    if failed:
        rep.problem = (f"a run to merge failed ({failed[0]['run_dir']}: "
                       f"{failed[0].get('error', 'unknown error')})")
        return rep
    if merged and exp.job != "assumption8":
        rep.problem = (f"runs of {exp.name!r} in {[r['run_dir'] for r in merged]} cannot be "
                       f"merged: merging is supported for assumption8 experiments only")
        return rep
    if len({bool(r.get("quick")) for r in rep.records}) > 1:
        rep.problem = "quick and full-size runs cannot be merged"
        return rep
    try:
        _EVALUATORS[exp.job](exp, record, rep)
    except Exception as err:  # an unreadable store is reported, not fatal for the others
        rep.problem = f"results could not be read: {type(err).__name__}: {err}"
    return rep


def collect(runs_dir: str | Path, experiments: Sequence[PaperConfig],
            merge: Sequence[str | Path] = ()) -> list[ExperimentReport]:
    """Evaluate every experiment against its run in ``runs_dir`` (plus the ``merge`` folders)."""
    return [evaluate(e, runs_dir, merge) for e in experiments]


# ---- the Markdown report ------------------------------------------------------------------


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
    lines = [header.rstrip("\n"), "", GENERATED_MARKER, ""]
    quick = {bool(r.record.get("quick")) for r in reports if r.record}
    kind = ("reduced-size quick runs (`--quick`)" if quick == {True} else
            "full-size runs" if quick == {False} else "a mix of quick and full-size runs")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [f"## Results: {kind}", "",
              f"Generated {when} by `jntk report` from the runs in `{runs_dir or '?'}`. Verdicts are "
              "computed from the stored numbers by the rules in `jntk_dist/report.py` "
              "(the claim's keys in each config name the rule).", "",
              "| experiment | figures | size | wall time | agree | disagree | n/a | status |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in reports:
        c = r.counts()
        secs = [rec["seconds"] for rec in r.records if "seconds" in rec]
        wall = (f"{sum(secs):.0f} s" + (f" ({len(secs)} runs)" if len(secs) > 1 else "")
                if secs else "—")
        size = ("quick" if r.record.get("quick") else "full") if r.record else "—"
        status = r.problem or "ok"
        lines.append(f"| [{r.exp.name}](#{r.exp.name}) | {', '.join(r.exp.figures)} | {size} | "
                     f"{wall} | {c['agree']} | {c['disagree']} | {c['n/a']} | {_cell(status)} |")
    for r in reports:
        lines += ["", f"### {r.exp.name}", "",
                  f"**{', '.join(r.exp.figures)} — {r.exp.title}** "
                  f"(`configs/paper/{r.exp.name}.yaml`, job `jntk {r.exp.job}`)", "",
                  f"*Paper's claim:* {r.exp.claim['text'].strip()}", ""]
        several = len(r.records) > 1
        if several:
            lines += [f"*Runs:* {len(r.records)} runs merged into one table "
                      "(`jntk report --merge`):", ""]
        for i, rec in enumerate(r.records):
            where = f"{i + 1}. `{rec.get('run_dir')}`: " if several else "*Run:* "
            lines.append(f"{where}{'quick (reduced size)' if rec.get('quick') else 'full size'}"
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
        if r.rows:
            lines += ["| paper's claim | ours | verdict | why (where they differ) |",
                      "|---|---|---|---|"]
            lines += [f"| {_cell(x.claim)} | {_cell(x.ours)} | **{x.verdict}** | {_cell(x.why)} |"
                      for x in r.rows]
            lines.append("")
        for fig in r.figures:
            name = fig.name if fig.name.startswith(r.exp.name) else f"{r.exp.name}_{fig.name}"
            dst = _copy_figure(fig, figures_dir / name)
            rel = os.path.relpath(dst, out.parent)
            lines += [f"![{r.exp.name}: {fig.stem}]({rel})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip("\n") + "\n")
    return out
