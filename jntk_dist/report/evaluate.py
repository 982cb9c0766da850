"""Reading the runs back: each experiment's ``run.json`` and store, evaluated into rows, and
the figures redrawn from the stores (so the report's figures follow the configs' rules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..analysis import PositivityRule
from ..workflows.assumption8 import plot as plot_assumption8
from ..workflows.drift import open_drift, plot_drift
from ..workflows.eigenfeatures import pairplot, split_group
from ..workflows.reproduce import PAPER_CONFIGS, PaperConfig, load_paper_config
from .drift_verdicts import DriftNumbers, drift_rows
from .feature_verdicts import (FEATURE_RULES, depth_onset_row, eigenfeatures_rows,
                              eigenfeatures_table)
from .verdicts import (ExperimentReport, assumption8_curves, assumption8_depth_table,
                       assumption8_rows, calibrated_rule, claim_specs, depth_ranges,
                       merge_assumption8_rows, positivity_rule)

__all__ = ["evaluate", "collect"]


def _evaluate_drift(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport,
                    ctx: "_Context") -> None:
    ds = open_drift(record["output"])
    if not bool(ds["complete"].all()):
        rep.problem = (f"store {record['output']} is incomplete "
                       f"({int(ds['complete'].sum())}/{ds['complete'].size} runs); rerun to finish")
        return
    cfg = record.get("config", {})
    n_networks = cfg.get("monte_carlo", {}).get("n_networks")
    numbers = DriftNumbers.from_dataset(ds, n_networks)
    rep.rows = drift_rows(numbers, exp.claim, bool(record.get("quick")))
    plots_dir = Path(cfg.get("plots") or Path(record["output"]).with_name(
        Path(record["output"]).stem + "_plots"))
    if not sorted(plots_dir.glob("*.png")):  # e.g. a run of benchmarks/run_fig1_fig3_gpu.py
        plots_dir.mkdir(parents=True, exist_ok=True)
        plot_drift(ds, plots_dir, title=exp.title)
    rep.figures = sorted(plots_dir.glob("*.png"))
    g = cfg.get("grid", {})
    steps = cfg.get("training", {}).get("record_steps", [0])
    extra = (f", {n_networks} networks per run" if ds.attrs.get("experiment") == "nngp"
             else f", steps {steps}")
    device = cfg.get("device", "auto")
    rep.size = (f"{ds.attrs.get('n_points')} points (d0={ds.attrs.get('d0')}), widths "
                f"{g.get('widths')}, depths {g.get('depths')}, {len(g.get('seeds', []))} seeds"
                + extra + f", {cfg.get('dtype', 'float64')} on device {device}"
                + (" (TF32 matmuls)" if cfg.get("matmul_precision") == "high" else ""))


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


def _assumption8_runs_rows(records: Sequence[dict[str, Any]]
                           ) -> tuple[list[dict[str, Any]], list[str]]:
    return merge_assumption8_rows([_assumption8_table(r["output"]) for r in records])


def _evaluate_assumption8(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport,
                          ctx: "_Context") -> None:
    records = [record] + rep.merged
    rows, skipped = _assumption8_runs_rows(records)
    rule = positivity_rule(exp.config)  # the paper config's rule, whatever the run recorded
    rep.rows = assumption8_rows(rows, exp.claim, rule, bool(record.get("quick")))
    rep.tables = [assumption8_depth_table(rows, rule, calibrated_rule(exp.claim))]
    # the plot is redrawn from the table: its markers follow the config's rule
    stem = Path(record["output"]).with_suffix("")
    png = stem.parent / "report" / f"{stem.name}_assumption8.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_assumption8(rows, png, rule=rule)
    rep.figures = [png]
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


def _setting(g: Any, attacks: Sequence[str], steps: Sequence[float], legacy: bool
             ) -> dict[str, Any]:
    """One setting's arrays of an eigenfeatures store group ({(attack, step): …} keyed)."""
    a = dict(g.attrs)

    def name(prefix: str, attack: str, step: float) -> str:
        return f"{prefix}_{step:g}" if legacy else f"{prefix}_{attack}_{step:g}"

    keys = [(at, st) for at in attacks for st in steps]
    return {"eigenvalues": g["eigenvalues"][...], "gram_size": int(a["gram_size"]),
            "test_accuracy": g["test_accuracy"][...],
            "perturbed_accuracy": {k: g[name("perturbed_accuracy", *k)][...] for k in keys},
            "predictor_test_accuracy": float(a["predictor_test_accuracy"]),
            "predictor_accuracy": {k: float(a[name("predictor_accuracy" if not legacy else
                                                   "predictor_accuracy_step", *k)])
                                   for k in keys},
            "perturbation_norm": {k: float(a.get(name("perturbation_norm", *k), np.nan))
                                  for k in keys}}


def _eigenfeature_settings(output: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per train/test split, the per-setting arrays of an eigenfeatures store; and the store's
    attributes. A store written before attacks and splits were recorded holds one split of the
    normalised attack."""
    import zarr

    root = zarr.open_group(str(Path(output)), mode="r")
    attrs = dict(root["eigenfeatures"].attrs)
    steps = [float(s) for s in attrs["steps"]]
    legacy = "attacks" not in attrs
    attacks = ["normalised"] if legacy else list(attrs["attacks"])
    return [{name: _setting(root[split_group(k, name)], attacks, steps, legacy)
             for name in attrs["runs"]} for k in range(int(attrs.get("splits", 1)))], attrs


def _depth_onset_rows(exp: PaperConfig, record: dict[str, Any], ctx: "_Context") -> list[Any]:
    """The ``depth_is_onset`` rows: this experiment's depth against the JNTK onset of positivity
    in another experiment's run (its config's rule), read from the same runs folders."""
    out = []
    for spec in claim_specs(exp.claim, list(FEATURE_RULES) + ["depth_is_onset"]):
        if spec.rule != "depth_is_onset":
            continue
        src, label = str(spec.params["experiment"]), str(spec.params["dataset"])
        act = str(spec.params["activation"])
        depth = int(record["config"]["kernel"]["depth"])
        source = load_paper_config(ctx.configs / f"{src}.yaml")
        records = [r for r in (_read_optional(Path(d) / src / "run.json") for d in ctx.folders)
                   if r is not None and r.get("status") == "ok"
                   and bool(r.get("quick")) == bool(record.get("quick"))]
        # the rule our depth was chosen by (the config's ``positivity``), else the source's
        rule = (PositivityRule.model_validate(spec.params["positivity"])
                if "positivity" in spec.params else positivity_rule(source.config))
        curve = None if not records or record.get("quick") else assumption8_curves(
            _assumption8_runs_rows(records)[0], rule).get((label, act, "jntk"))
        missing = ("quick run: the onset of a subset is not the depth to use" if record.get("quick")
                   else f"{src} has no run of this size" if not records
                   else f"{src}'s run has no JNTK curve for {label}, {act}" if curve is None
                   else "")
        out.append(depth_onset_row(spec, depth, None if curve is None else curve.onset,
                                   [] if curve is None else curve.depths, src, rule.rule,
                                   missing=missing))
    return out


def _evaluate_eigenfeatures(exp: PaperConfig, record: dict[str, Any], rep: ExperimentReport,
                            ctx: "_Context") -> None:
    splits, attrs = _eigenfeature_settings(record["output"])
    rep.rows = _depth_onset_rows(exp, record, ctx) + eigenfeatures_rows(
        splits, exp.claim, bool(record.get("quick")))
    rep.tables = [t for t in [eigenfeatures_table(splits, exp.claim)] if t]
    rep.figures = [_redraw_pairplot(exp, record, splits[0], attrs)]
    sizes = {n: s["gram_size"] for n, s in splits[0].items()}
    attacks = attrs.get("attack_text") or {"normalised": attrs.get("attack", "")}
    rep.size = (f"{attrs['source']}, depth {attrs['depth']} {attrs['activation']}, "
                f"{attrs['n_train']} train / {attrs['n_test']} test points, {len(splits)} "
                "stratified train/test split(s), Gram sizes "
                + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + "; attacks: "
                + "; ".join(f"`{k}` {v}" for k, v in attacks.items()))


def _redraw_pairplot(exp: PaperConfig, record: dict[str, Any], settings: dict[str, Any],
                     attrs: dict[str, Any]) -> Path:
    """The pair plot of the first split and the store's first attack, from the store, the
    features filtered by the config's resolution rule."""
    attack = (attrs.get("attacks") or ["normalised"])[0]
    steps = [float(s) for s in attrs["steps"]]
    rules = [r for r in exp.claim.get("rules", []) if "features" in r]
    rule = PositivityRule.model_validate(rules[0]["features"] if rules else {})
    data = {name: (np.asarray(s["eigenvalues"]), np.asarray(s["test_accuracy"]),
                   {st: np.asarray(s["perturbed_accuracy"][(attack, st)]) for st in steps},
                   rule.threshold(s["gram_size"], float(np.max(s["eigenvalues"]))))
            for name, s in settings.items()}
    stem = Path(record["output"]).with_suffix("")
    png = stem.parent / "report" / f"{stem.name}_eigenfeatures.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    with open(png, "wb") as fh:
        pairplot(data, steps, fh)
    return png


class _Context:
    """Where the other experiments' runs and configs are (for rules that read them)."""

    def __init__(self, runs_dir: str | Path, merge: Sequence[str | Path],
                 configs: str | Path) -> None:
        self.folders = [Path(runs_dir)] + [Path(d) for d in merge]
        self.configs = Path(configs)


_EVALUATORS: dict[str, Callable[[PaperConfig, dict[str, Any], ExperimentReport, _Context],
                                None]] = {
    "drift": _evaluate_drift, "assumption8": _evaluate_assumption8,
    "eigenfeatures": _evaluate_eigenfeatures}


def _read_optional(path: Path) -> dict[str, Any] | None:
    return _read_record(path) if path.exists() else None


def _read_record(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text())
    if record.get("output"):  # the runs folder may have been moved since: look inside it
        moved = path.parent / Path(record["output"]).name
        if moved.exists():
            record["output"] = str(moved)
    record["run_dir"] = str(path.parent.parent)
    return record


def evaluate(exp: PaperConfig, runs_dir: str | Path, merge: Sequence[str | Path] = (),
             configs: str | Path = PAPER_CONFIGS) -> ExperimentReport:
    """Read ``<runs_dir>/<name>/run.json`` and the job's store; compute the table rows.

    ``merge``: further runs folders; where one holds a successful run of this experiment
    (``<folder>/<name>/run.json``), its rows join the table (assumption8 experiments only: e.g.
    depths run separately; a depth computed twice is taken from the first folder). ``configs``:
    the paper configs' folder (rules that compare with another experiment read its config)."""
    path = Path(runs_dir) / exp.name / "run.json"
    extra = [_read_record(p) for p in (Path(d) / exp.name / "run.json" for d in merge)
             if p.exists()]
    failed = [r for r in extra if r.get("status") != "ok"]
    if not path.exists() and not extra:
        return ExperimentReport(exp, None, problem=exp.not_run or (
            f"not run at the paper's size: {exp.paper_size.strip()}" if exp.paper_size
            else f"not run ({path} missing)"))
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
        _EVALUATORS[exp.job](exp, record, rep, _Context(runs_dir, merge, configs))
    except Exception as err:  # an unreadable store is reported, not fatal for the others
        rep.problem = f"results could not be read: {type(err).__name__}: {err}"
    return rep


def collect(runs_dir: str | Path, experiments: Sequence[PaperConfig],
            merge: Sequence[str | Path] = (), configs: str | Path = PAPER_CONFIGS
            ) -> list[ExperimentReport]:
    """Evaluate every experiment against its run in ``runs_dir`` (plus the ``merge`` folders)."""
    return [evaluate(e, runs_dir, merge, configs) for e in experiments]
