"""The rules of Figs. 4/5 and B9–B13: how accuracy and robustness of the eigenfeatures relate
with the Jacobian regulariser (λ > 0) and with standard training (the plain NTK).

The paper (§5.2, l.217–219): with regularisation "we could not find" eigenfeatures "that are
highly accurate but less robust, or highly robust but less accurate", "achieving high test
accuracy implies satisfying robustness"; standard training "shows less or no correlation between
accuracy and robustness". The statistics are :func:`jntk_dist.analysis.accuracy_robustness`
(Pearson r of clean against perturbed accuracy, and the fractions of accurate-but-not-robust and
robust-but-not-accurate features) over the eigenfeatures whose eigenvalue a float32 eigensolver
resolves; the thresholds are ours and stand in each config.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..analysis import PositivityRule, accuracy_robustness, bootstrap_less_correlated
from .verdicts import ClaimSpec, Row, claim_specs, depth_ranges

__all__ = ["eigenfeatures_rows", "eigenfeatures_table", "depth_onset_row", "FEATURE_RULES"]


def _label(name: str) -> str:
    return "standard NTK (λ = 0)" if name == "standard" else name.replace("lam_", "λ = ")


def _resolved(s: dict[str, Any], rule: PositivityRule) -> np.ndarray:
    """Features whose eigenvalue is resolved under ``rule`` (the rest are numerical noise)."""
    w = np.asarray(s["eigenvalues"], dtype=float)
    return w > rule.threshold(int(s["gram_size"]), float(np.max(w)))


def _stats(spec: ClaimSpec, s: dict[str, Any]) -> tuple[Any, np.ndarray]:
    rule = PositivityRule.model_validate(spec.params.get("features", {}))
    keep = _resolved(s, rule)
    step = float(spec.params.get("step", 0.1))
    clean = np.asarray(s["test_accuracy"], dtype=float)[keep]
    pert = np.asarray(s["perturbed_accuracy"][step], dtype=float)[keep]
    if keep.sum() < 3:
        return None, keep
    return accuracy_robustness(clean, pert, float(spec.params.get("decile", 0.1)),
                               float(spec.params.get("margin", 0.1))), keep


def _rule_aligned(spec: ClaimSpec, settings: dict[str, dict[str, Any]]) -> list[Row]:
    """Fig. 4: for every λ > 0, r ≥ ``min_correlation`` and no accurate-but-not-robust nor
    robust-but-not-accurate feature."""
    p = spec.params
    r_min = float(p.get("min_correlation", 0.8))
    rule = PositivityRule.model_validate(p.get("features", {})).rule
    test = (f"aligned: over the features with λ_i above the {rule} threshold, Pearson "
            f"r(clean, step-{p.get('step', 0.1):g} accuracy) ≥ {r_min:g}, and "
            f"no feature in the top {p.get('decile', 0.1):g} by clean accuracy loses more than "
            f"{p.get('margin', 0.1):g} (nor, top by perturbed accuracy, is less accurate by more)")
    out = []
    for name, s in settings.items():
        if name == "standard":
            continue
        st, keep = _stats(spec, s)
        if st is None or not np.isfinite(st.r):
            out.append(Row(spec.claim, f"{int(keep.sum())} resolved features", "n/a",
                           "too few resolved features, or constant accuracy", test, _label(name)))
            continue
        ok = st.r >= r_min and st.q_accurate == 0 and st.q_robust == 0
        why = [f"r {st.r:.2f} < {r_min:g}"] if st.r < r_min else []
        why += [f"{st.q_accurate:.0%} of the most accurate features are not robust"] \
            if st.q_accurate else []
        why += [f"{st.q_robust:.0%} of the most robust features are not accurate"] \
            if st.q_robust else []
        out.append(Row(spec.claim, f"r = {st.r:.2f}; accurate-but-not-robust {st.q_accurate:.0%}, "
                       f"robust-but-not-accurate {st.q_robust:.0%} ({st.n} resolved features)",
                       "agree" if ok else "disagree", "; ".join(why), test, _label(name)))
    return out


def _rule_standard_less_correlated(spec: ClaimSpec, settings: dict[str, dict[str, Any]]
                                   ) -> list[Row]:
    """Fig. 5: r of the standard NTK's features < the smallest r over λ > 0, bootstrap p <
    ``significance`` (resampling features)."""
    p = spec.params
    alpha = float(p.get("significance", 0.05))
    test = (f"standard_less_correlated: r(standard) < min over λ > 0 of r(λ), one-sided "
            f"bootstrap over features p < {alpha:g}")
    std = settings.get("standard")
    if std is None:
        return [Row(spec.claim, "no standard-training run", "n/a", "standard: false", test)]
    rs, pairs = {}, {}
    step = float(p.get("step", 0.1))
    for name, s in settings.items():
        st, keep = _stats(spec, s)
        if st is None or not np.isfinite(st.r):
            continue
        rs[name] = st.r
        pairs[name] = (np.asarray(s["test_accuracy"])[keep],
                       np.asarray(s["perturbed_accuracy"][step])[keep])
    others = [k for k in rs if k != "standard"]
    if "standard" not in rs or not others:
        return [Row(spec.claim, "too few resolved features", "n/a", "", test)]
    pval = bootstrap_less_correlated(pairs["standard"], [pairs[k] for k in others],
                                     int(p.get("bootstrap", 2000)), int(p.get("seed", 0)))
    lowest = min(others, key=lambda k: rs[k])
    ok = rs["standard"] < rs[lowest] and pval < alpha
    ours = (f"r(standard) = {rs['standard']:.2f}; r(λ) from {rs[lowest]:.2f} ({_label(lowest)}) "
            f"to {max(rs[k] for k in others):.2f}; bootstrap p = {pval:.3g}")
    why = "" if ok else ("the standard NTK's features are not less correlated"
                         if rs["standard"] >= rs[lowest] else f"not significant (p ≥ {alpha:g})")
    return [Row(spec.claim, ours, "agree" if ok else "disagree", why, test, "standard vs λ > 0")]


def _rule_attack_hurts_standard(spec: ClaimSpec, settings: dict[str, dict[str, Any]]
                                ) -> list[Row]:
    """"The 0.1 perturbation was enough to change the labels of some inputs": the standard
    predictor's test accuracy after the step is below its clean accuracy."""
    std = settings.get("standard")
    step = float(spec.params.get("step", 0.1))
    test = f"attack_hurts_standard: f_ntk(λ = 0) accuracy after step {step:g} < clean accuracy"
    if std is None:
        return [Row(spec.claim, "no standard-training run", "n/a", "standard: false", test)]
    clean = float(std["predictor_test_accuracy"])
    pert = {k: float(v) for k, v in std["predictor_accuracy_step"].items()}
    ok = pert[step] < clean
    return [Row(spec.claim, f"clean {clean:.3f}; " + ", ".join(
        f"step {k:g}: {v:.3f}" for k, v in sorted(pert.items())), "agree" if ok else "disagree",
        "" if ok else "accuracy not lowered", test, "standard NTK predictor")]


FEATURE_RULES: dict[str, Callable[[ClaimSpec, dict[str, dict[str, Any]]], list[Row]]] = {
    "aligned": _rule_aligned, "standard_less_correlated": _rule_standard_less_correlated,
    "attack_hurts_standard": _rule_attack_hurts_standard}


def eigenfeatures_rows(settings: dict[str, dict[str, Any]], claim: dict[str, Any],
                       quick: bool = False) -> list[Row]:
    """Rows for Figs. 4/5 / B9–B13 from per-setting eigenvalues and accuracies.

    ``settings[name]`` holds ``eigenvalues``, ``gram_size``, ``test_accuracy``,
    ``perturbed_accuracy`` ({step: array}), ``predictor_test_accuracy`` and
    ``predictor_accuracy_step`` ({step: float}). Rules: :data:`FEATURE_RULES` (``depth_is_onset``
    is evaluated by :func:`depth_onset_row`, it needs another experiment's run)."""
    out: list[Row] = []
    for spec in claim_specs(claim, list(FEATURE_RULES) + ["depth_is_onset"]):
        if spec.rule in FEATURE_RULES:
            out += FEATURE_RULES[spec.rule](spec, settings)
    if quick:
        for r in out:
            r.why = (r.why + "; " if r.why else "") + "quick run on a small subset"
    return out


def depth_onset_row(spec: ClaimSpec, depth: int, onset: int | None, depths: Sequence[int],
                    source: str, rule: str, missing: str = "") -> Row:
    """"We use the smallest depth network that satisfies the minimum eigenvalue assumption": the
    depth of this experiment equals the onset of positivity found in ``source``'s run
    (``missing``: why there is nothing to compare with — no verdict)."""
    test = (f"depth_is_onset: the depth used equals the JNTK onset of {source} under its "
            f"{rule} rule")
    where = "the depth used"
    if missing:
        return Row(spec.claim, f"depth {depth}", "n/a", missing, test, where)
    if onset is None:
        return Row(spec.claim, f"depth {depth}; {source}: never positive on depths "
                   f"{depth_ranges(list(depths))}", "disagree", "no onset to use", test, where)
    ok = onset == depth
    return Row(spec.claim, f"depth {depth}; onset in {source}: L={onset}",
               "agree" if ok else "disagree", "" if ok else f"the onset is L={onset}", test, where)


def eigenfeatures_table(settings: dict[str, dict[str, Any]], claim: dict[str, Any]) -> str:
    """Per setting: resolved features, r and the two fractions at every step, and the predictor's
    accuracies (Markdown), under the parameters of the config's ``aligned`` rule."""
    specs = [s for s in claim_specs(claim, list(FEATURE_RULES) + ["depth_is_onset"])
             if s.rule == "aligned"]
    if not specs:
        return ""
    spec = specs[0]
    steps = sorted(next(iter(settings.values()))["perturbed_accuracy"])
    rule = PositivityRule.model_validate(spec.params.get("features", {}))
    lines = [f"Per setting, over the eigenfeatures with λ_i above {rule.describe()} (of "
             f"Θ_λ's size n): r = Pearson(clean, perturbed accuracy), q_acc / q_rob = fractions of "
             f"the top {spec.params.get('decile', 0.1):g} by clean / perturbed accuracy that lose "
             f"more than {spec.params.get('margin', 0.1):g} on the other; f_ntk = the whole "
             "predictor.", "",
             "| setting | features (resolved / all) | " + " | ".join(
                 f"r, q_acc, q_rob at step {s:g}" for s in steps) + " | f_ntk clean | " +
             " | ".join(f"f_ntk step {s:g}" for s in steps) + " |",
             "|---|---:|" + "---|" * len(steps) + "---:|" + "---:|" * len(steps)]
    for name, s in settings.items():
        keep = _resolved(s, rule)
        cells = []
        for st in steps:
            a = np.asarray(s["test_accuracy"], dtype=float)[keep]
            b = np.asarray(s["perturbed_accuracy"][st], dtype=float)[keep]
            v = accuracy_robustness(a, b, float(spec.params.get("decile", 0.1)),
                                    float(spec.params.get("margin", 0.1))) if keep.sum() else None
            cells.append("—" if v is None else f"{v.r:.2f}, {v.q_accurate:.2f}, {v.q_robust:.2f}")
        acc = [f"{float(s['predictor_accuracy_step'][st]):.3f}" for st in steps]
        lines.append(f"| {_label(name)} | {int(keep.sum())} / {keep.size} | " + " | ".join(cells)
                     + f" | {float(s['predictor_test_accuracy']):.3f} | " + " | ".join(acc) + " |")
    return "\n".join(lines) + "\n"
