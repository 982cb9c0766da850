"""The rules of Figs. 1–3: how the max-norm distance Δ of a finite network's kernel to the
analytic one behaves with width and, during robust training (Fig. 3), with the step t.

Each rule reads the seed means of a drift store (:class:`DriftNumbers`); the paper's sentences
and the rules' parameters stand in the configs' ``claim.rules``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..networks.training import component_label
from ..workflows.drift import loglog_slope
from .verdicts import ClaimSpec, Row, Verdict, claim_specs, fmt

__all__ = ["DriftNumbers", "drift_rows", "DRIFT_RULES"]


@dataclass
class DriftNumbers:
    """A drift store's numbers: Δ per (width, depth, seed, step, component), the kernel's own
    movement ``drift``, test accuracy per (width, depth, seed, step), and for Fig. 1 the
    Monte-Carlo floor of Δ (None in stores written before it was recorded)."""

    widths: list[int]
    depths: list[int]
    steps: list[int]
    components: list[str]
    distance: np.ndarray
    drift: np.ndarray
    test_accuracy: np.ndarray
    loss: np.ndarray
    mc_floor: np.ndarray | None = None
    n_networks: int | None = None

    @classmethod
    def from_dataset(cls, ds: Any, n_networks: int | None = None) -> "DriftNumbers":
        """From the ``xarray.Dataset`` of :func:`jntk_dist.workflows.drift.open_drift`."""
        order = ("width", "depth", "seed", "step", "component")
        floor = None
        if "mc_floor" in ds and np.isfinite(ds["mc_floor"].values).any():
            floor = ds["mc_floor"].transpose(*order).values
        return cls([int(v) for v in ds["width"].values], [int(v) for v in ds["depth"].values],
                   [int(v) for v in ds["step"].values],
                   [component_label(int(a), int(b)) for a, b in zip(ds["alpha"].values,
                                                                    ds["beta"].values)],
                   ds["distance"].transpose(*order).values, ds["drift"].transpose(*order).values,
                   ds["test_accuracy"].transpose(*order[:4]).values,
                   ds["loss"].transpose(*order[:4]).values, floor, n_networks)

    def mean(self, name: str = "distance") -> np.ndarray:
        """Seed mean: (width, depth, step, component) for Δ, drift, floor; (width, depth, step)
        for accuracy and loss."""
        return np.nanmean(getattr(self, name), axis=2)


def _where(d: DriftNumbers, depth: int, step: int | None) -> str:
    return f"L={depth}" + (f", step {step}" if step is not None and len(d.steps) > 1 else "")


def _rule_decreasing(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """Δ falls with width (log-log slope of the seed mean < 0) for every component, at every
    depth and recorded step. With a Monte-Carlo floor (Fig. 1) the slope is fitted over the widths
    whose Δ exceeds ``floor_factor`` × the floor (Monte-Carlo error alone gives Δ ≈ floor): the
    paper does not "expect that […] the graphs converge to 0 because of the Monte-Carlo errors";
    a component with fewer than two such widths is not tested (more networks are needed), and so
    is the row unless another component already disagrees."""
    k = float(spec.params.get("floor_factor", 2.0))
    mean = d.mean()
    floor = d.mean("mc_floor") if d.mc_floor is not None else None
    test = "decreasing: log-log slope of mean Δ over width < 0 for every component" + (
        f", over the widths with Δ > {k:g}× the Monte-Carlo floor" if floor is not None else "")
    out = []
    for j, depth in enumerate(d.depths):
        for t, step in enumerate(d.steps):
            parts, bad, na = [], [], []
            for c, comp in enumerate(d.components):
                m = mean[:, j, t, c]
                fit = np.ones(m.shape, bool) if floor is None else m > k * floor[:, j, t, c]
                slope = loglog_slope(np.asarray(d.widths)[fit], m[fit])
                parts.append(f"{comp}: {fmt(slope)}" + ("" if floor is None else
                             f" over {int(fit.sum())} widths above the floor"))
                if floor is not None and fit.sum() < 2:
                    na.append(comp)
                elif not (math.isfinite(slope) and slope < 0):
                    bad.append(comp)
            # "for every component": one component that cannot be tested leaves the row untested
            verdict: Verdict = "disagree" if bad else "not tested" if na else "agree"
            why = "; ".join(([f"Δ does not fall with width for {', '.join(bad)}"] if bad else [])
                            + ([f"{', '.join(na)}: fewer than two widths above the Monte-Carlo "
                                "floor (more networks needed)"] if na else []))
            ends = "; ".join(f"{comp}: {fmt(mean[0, j, t, c])}→{fmt(mean[-1, j, t, c])}"
                             for c, comp in enumerate(d.components))
            floors = "" if floor is None else "; floor at the widest " + ", ".join(
                f"{fmt(floor[-1, j, t, c])}" for c in range(len(d.components)))
            out.append(Row(spec.claim, f"slopes {', '.join(parts)} (widths {d.widths[0]}–"
                           f"{d.widths[-1]}; mean Δ {ends}{floors})", verdict,
                           _quick(why, quick), test, _where(d, depth, step)))
    return out


def _quick(why: str, quick: bool) -> str:
    note = "quick run: few, narrow widths and seeds — carries no weight"
    return why if not quick else f"{why}; {note}" if why else note


def _rule_rate(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """The mean log-log slope over components lies within ``slope`` ± ``tolerance``."""
    target, tol = float(spec.params["slope"]), float(spec.params.get("tolerance", 0.25))
    mean = d.mean()
    out = []
    for j, depth in enumerate(d.depths):
        for t, step in enumerate(d.steps):
            slopes = [loglog_slope(d.widths, mean[:, j, t, c]) for c in range(mean.shape[-1])]
            finite = [s for s in slopes if math.isfinite(s)]
            if not finite:
                continue
            avg = float(np.mean(finite))
            ok = abs(avg - target) <= tol
            out.append(Row(spec.claim, f"mean slope {avg:.2f}", "agree" if ok else "disagree",
                           _quick("" if ok else f"outside {target:g} ± {tol:g}", quick),
                           f"rate: mean log-log slope in {target:g} ± {tol:g}",
                           _where(d, depth, step)))
    return out


def _rule_ratio(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """Mean Δ of component ``larger`` / mean Δ of ``smaller`` ≥ ``min_ratio`` at every width
    ("much larger": a stated factor, the ratio per width reported)."""
    big, small = str(spec.params.get("larger", "22")), str(spec.params.get("smaller", "00"))
    least = float(spec.params.get("min_ratio", 10.0))
    mean = d.mean()
    b, s = d.components.index(big), d.components.index(small)
    out = []
    for j, depth in enumerate(d.depths):
        ratio = mean[:, j, 0, b] / mean[:, j, 0, s]
        ok = bool(np.all(ratio >= least))
        low = [w for w, v in zip(d.widths, ratio) if not v >= least]
        out.append(Row(spec.claim, f"Δ{big}/Δ{small} per width: " + ", ".join(
                       f"{w}: {v:.2f}" for w, v in zip(d.widths, ratio)),
                       "agree" if ok else "disagree",
                       _quick("" if ok else f"ratio < {least:g} at widths {low}", quick),
                       f"ratio: mean Δ{big} / mean Δ{small} ≥ {least:g} at every width",
                       _where(d, depth, None)))
    return out


def _growth(d: DriftNumbers, j: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (width, component), over the recorded steps t > 0: growth Δ(t_last) − Δ(t_first), its
    95% half-width over seeds, and ρ = (increase over the last ``window`` recorded steps) /
    (largest increase over any ``window`` consecutive ones)."""
    t_pos = [t for t, s in enumerate(d.steps) if s > 0]
    per_seed = d.distance[:, j][:, :, t_pos]  # (width, seed, step, comp)
    diff = per_seed[:, :, -1] - per_seed[:, :, 0]
    n = np.sum(np.isfinite(diff), axis=1)
    half = 1.96 * np.nanstd(diff, axis=1, ddof=1) / np.sqrt(np.maximum(n, 1)) if \
        per_seed.shape[1] > 1 else np.zeros(diff.shape[:1] + diff.shape[2:])
    m = np.nanmean(per_seed, axis=1)  # (width, step, comp)
    w = min(window, m.shape[1] - 1)
    inc = m[:, w:] - m[:, :-w] if w >= 1 else np.full((m.shape[0], 1, m.shape[2]), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = inc[:, -1] / np.max(inc, axis=1)
    return np.nanmean(diff, axis=1), half, rho


def _rule_distance_grows(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """Mean Δ at the last recorded step > at the first step t > 0, per component at ≥
    ``min_fraction`` of the widths."""
    frac = float(spec.params.get("min_fraction", 0.75))
    out = []
    for j, depth in enumerate(d.depths):
        growth, _, _ = _growth(d, j, 1)
        share = np.mean(growth > 0, axis=0)
        bad = [c for c, v in zip(d.components, share) if v < frac]
        out.append(Row(spec.claim, "widths where Δ grew from the first to the last step: " +
                       ", ".join(f"{c}: {v:.0%}" for c, v in zip(d.components, share)),
                       "agree" if not bad else "disagree",
                       _quick("" if not bad else f"Δ grows at < {frac:.0%} of the widths for "
                              f"{', '.join(bad)}", quick),
                       f"distance_grows: mean Δ(t={d.steps[-1]}) > Δ(first step t > 0) at ≥ "
                       f"{frac:.0%} of the widths, per component", _where(d, depth, None)))
    return out


def _rule_growth_slows(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """ρ = last / largest increase of mean Δ over ``window`` recorded steps < ``ratio``, per
    component at ≥ ``min_fraction`` of the widths whose Δ grew beyond its 95% band ("flat"
    widths, without growth to slow down, are not counted)."""
    window = int(spec.params.get("window", 3))
    limit = float(spec.params.get("ratio", 0.5))
    frac = float(spec.params.get("min_fraction", 0.75))
    test = (f"growth_slows: ρ = (rise of mean Δ over the last {window} recorded steps) / (largest "
            f"such rise) < {limit:g} at ≥ {frac:.0%} of the widths where Δ grew beyond its 95% band")
    out = []
    for j, depth in enumerate(d.depths):
        growth, half, rho = _growth(d, j, window)
        grew = growth > half
        cells, bad, na = [], [], []
        for c, comp in enumerate(d.components):
            if not grew[:, c].any() or not np.isfinite(rho[grew[:, c], c]).any():
                na.append(comp)
                cells.append(f"{comp}: flat at every width")
                continue
            r = rho[grew[:, c], c]
            share = float(np.mean(r < limit))
            cells.append(f"{comp}: ρ {', '.join(f'{v:.2f}' for v in r)} ({share:.0%} < {limit:g})")
            if share < frac:
                bad.append(comp)
        verdict: Verdict = ("disagree" if bad else "not tested" if len(na) == len(d.components)
                            else "agree")
        why = (f"the increase does not slow down for {', '.join(bad)}" if bad else
               "Δ did not grow beyond its 95% band" if verdict == "not tested" else "")
        out.append(Row(spec.claim, "; ".join(cells), verdict, _quick(why, quick), test,
                       _where(d, depth, None)))
    return out


def _rule_final_accuracy(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """Mean test accuracy at the last recorded step ≥ ``min_accuracy`` at every width ≥
    ``min_width`` (the widest width if none is that wide)."""
    least = float(spec.params.get("min_accuracy", 0.95))
    wide = int(spec.params.get("min_width", 1024))
    acc = d.mean("test_accuracy")[:, :, -1]
    sel = [i for i, w in enumerate(d.widths) if w >= wide] or [len(d.widths) - 1]
    out = []
    for j, depth in enumerate(d.depths):
        vals = acc[sel, j]
        ok = bool(np.all(vals >= least))
        out.append(Row(spec.claim, f"test accuracy at step {d.steps[-1]}: " + ", ".join(
            f"width {d.widths[i]}: {acc[i, j]:.3f}" for i in range(len(d.widths))),
            "agree" if ok else "disagree",
            _quick("" if ok else f"below {least:g} at width(s) "
                   f"{[d.widths[i] for i, v in zip(sel, vals) if v < least]}", quick),
            f"final_accuracy: mean test accuracy at the last step ≥ {least:g} at widths ≥ {wide}",
            _where(d, depth, None)))
    return out


def _rule_kernel_constant(spec: ClaimSpec, d: DriftNumbers, quick: bool) -> list[Row]:
    """The network's own kernel movement |Θ_t − Θ_0| falls with width at every step t > 0."""
    mean = d.mean("drift")
    out = []
    for j, depth in enumerate(d.depths):
        for t, step in enumerate(d.steps):
            if step == 0:
                continue
            slopes = [loglog_slope(d.widths, mean[:, j, t, c]) for c in range(mean.shape[-1])]
            bad = [c for c, s in zip(d.components, slopes) if not (math.isfinite(s) and s < 0)]
            out.append(Row(spec.claim, "slopes " + ", ".join(
                f"{c}: {fmt(s)}" for c, s in zip(d.components, slopes)),
                "agree" if not bad else "disagree",
                _quick("" if not bad else f"no decrease for {', '.join(bad)}", quick),
                "kernel_constant: log-log slope of mean |Θ_t − Θ_0| over width < 0",
                _where(d, depth, step)))
    return out


DRIFT_RULES: dict[str, Callable[[ClaimSpec, DriftNumbers, bool], list[Row]]] = {
    "decreasing": _rule_decreasing, "rate": _rule_rate, "ratio": _rule_ratio,
    "distance_grows": _rule_distance_grows, "growth_slows": _rule_growth_slows,
    "final_accuracy": _rule_final_accuracy, "kernel_constant": _rule_kernel_constant}


def drift_rows(numbers: DriftNumbers, claim: dict[str, Any], quick: bool) -> list[Row]:
    """Rows for a drift figure (Figs. 1–3) under the rules of ``claim.rules``."""
    out: list[Row] = []
    for spec in claim_specs(claim, list(DRIFT_RULES)):
        out += DRIFT_RULES[spec.rule](spec, numbers, quick)
    return out
