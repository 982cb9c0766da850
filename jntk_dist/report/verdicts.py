"""The verdict rules: from our numbers and a paper config's ``claim:`` to table rows
(the paper's claim, ours, agree / disagree / n/a, why). Pure functions of the numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..workflows.reproduce import PaperConfig

__all__ = ["Verdict", "Row", "ExperimentReport", "drift_rows", "assumption8_rows",
           "merge_assumption8_rows", "eigenfeatures_rows", "pd_onset", "depth_ranges"]

Verdict = Literal["agree", "disagree", "n/a"]


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


def pd_onset(depths: Sequence[int], positive: Sequence[bool]) -> int | None:
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
        onset = pd_onset(depths, pos)
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
            skipped.append(f"run {t + 1}: L={depth_ranges(sorted(dropped))} "
                           f"({sum(dropped.values())} rows)")
    return list(merged.values()), skipped


def depth_ranges(depths: Sequence[int]) -> str:
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
