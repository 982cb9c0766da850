"""Reading the runs back: each experiment's ``run.json`` and store, evaluated into rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..networks.training import component_label
from ..workflows.assumption8 import plot as plot_assumption8
from ..workflows.drift import fit_slopes, open_drift
from ..workflows.reproduce import PaperConfig
from .verdicts import (ExperimentReport, assumption8_rows, depth_ranges, drift_rows,
                       eigenfeatures_rows, merge_assumption8_rows)

__all__ = ["evaluate", "collect"]


def _evaluate_drift(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport) -> None:
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


def _evaluate_assumption8(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport) -> None:
    records = [record] + rep.merged
    rows, skipped = merge_assumption8_rows([_assumption8_table(r["output"]) for r in records])
    rep.rows = assumption8_rows(rows, exp.claim, bool(record.get("quick")))
    stem = Path(record["output"]).with_suffix("")
    if rep.merged:  # one plot of the merged table, beside the main run's store
        merged_png = stem.parent / "merged" / f"{stem.name}_assumption8.png"
        merged_png.parent.mkdir(parents=True, exist_ok=True)
        plot_assumption8(rows, merged_png)
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
            f"{name}: {depth_ranges(sorted(d))}" for name, d in depths.items())
    if rep.merged:
        rep.size += f" (merged from {len(records)} runs"
        rep.size += f"; duplicates skipped, first run kept: {', '.join(skipped)})" if skipped \
            else ")"


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
