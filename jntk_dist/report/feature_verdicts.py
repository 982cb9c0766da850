"""The rules of Figs. 4/5 and B9–B13: how accuracy and robustness of the eigenfeatures relate
with the Jacobian regulariser (λ > 0) and with standard training (the plain NTK).

The paper (§5.2, l.217–219): with regularisation "we could not find" eigenfeatures "that are
highly accurate but less robust, or highly robust but less accurate", "achieving high test
accuracy implies satisfying robustness"; standard training "shows less or no correlation between
accuracy and robustness"; "The 0.1 perturbation was enough to change the labels of some inputs,
while for the 0.01 perturbation, there exists a classifier that classifies all the inputs
perfectly even after this perturbation". The statistics are
:func:`jntk_dist.analysis.accuracy_robustness` (Pearson r of clean against perturbed accuracy,
and the fractions of accurate-but-not-robust and robust-but-not-accurate features) over the
eigenfeatures whose eigenvalue is resolved, computed on every train/test split of the run and
reported as mean ± standard deviation over the splits; the thresholds are ours and stand in
each config. Every rule names its attack (``paper``: the gradient step of §5.2 with the step as
learning rate; ``normalised``: a step of fixed length) and step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..analysis import PositivityRule, accuracy_robustness, bootstrap_less_correlated
from .verdicts import ClaimSpec, Row, Verdict, claim_specs, depth_ranges

__all__ = ["eigenfeatures_rows", "eigenfeatures_table", "depth_onset_row", "FEATURE_RULES"]

Splits = Sequence[dict[str, dict[str, Any]]]


def _label(name: str) -> str:
    return "standard NTK (λ = 0)" if name == "standard" else name.replace("lam_", "λ = ")


def _resolved(s: dict[str, Any], rule: PositivityRule) -> np.ndarray:
    """Features whose eigenvalue is resolved under ``rule`` (the rest are numerical noise)."""
    w = np.asarray(s["eigenvalues"], dtype=float)
    return w > rule.threshold(int(s["gram_size"]), float(np.max(w)))


def _attack(spec: ClaimSpec) -> tuple[str, float]:
    return str(spec.params.get("attack", "paper")), float(spec.params.get("step", 0.1))


def _pert(s: dict[str, Any], key: str, attack: str, step: float) -> Any:
    """``s[key]`` ({(attack, step): value}) at one attack and step; a mapping keyed by the step
    alone is a store of one (normalised) attack."""
    table = s[key]
    return table[(attack, step)] if (attack, step) in table else table[step]


def _ms(values: Sequence[float], digits: int = 2) -> str:
    """Mean ± standard deviation over the splits ('mean' alone for one split)."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.nanmean(v):.{digits}f} ± {np.nanstd(v, ddof=1):.{digits}f}"


def _stats(spec: ClaimSpec, s: dict[str, Any]) -> tuple[Any, np.ndarray]:
    rule = PositivityRule.model_validate(spec.params.get("features", {}))
    keep = _resolved(s, rule)
    attack, step = _attack(spec)
    clean = np.asarray(s["test_accuracy"], dtype=float)[keep]
    pert = np.asarray(_pert(s, "perturbed_accuracy", attack, step), dtype=float)[keep]
    if keep.sum() < 3:
        return None, keep
    return accuracy_robustness(clean, pert, float(spec.params.get("decile", 0.1)),
                               float(spec.params.get("margin", 0.1))), keep


def _splits_note(splits: Splits) -> str:
    return f" over {len(splits)} splits (mean ± sd)" if len(splits) > 1 else " (one split)"


def _rule_aligned(spec: ClaimSpec, splits: Splits) -> list[Row]:
    """Fig. 4: for every λ > 0, mean r over the splits ≥ ``min_correlation`` and the mean
    fractions of accurate-but-not-robust and robust-but-not-accurate features ≤
    ``max_fraction`` (0: none)."""
    p = spec.params
    r_min, q_max = float(p.get("min_correlation", 0.8)), float(p.get("max_fraction", 0.0))
    attack, step = _attack(spec)
    rule = PositivityRule.model_validate(p.get("features", {})).rule
    test = (f"aligned ({attack} attack, step {step:g}): over the features with λ_i above the "
            f"{rule} threshold, mean Pearson r(clean, perturbed accuracy) ≥ {r_min:g}, and at "
            f"most {q_max:.0%} of the top {p.get('decile', 0.1):g} by clean accuracy lose more "
            f"than {p.get('margin', 0.1):g} (nor, top by perturbed accuracy, are less accurate "
            "by more)")
    out = []
    for name in splits[0]:
        if name == "standard":
            continue
        stats = [_stats(spec, sp[name]) for sp in splits if name in sp]
        if any(st is None or not np.isfinite(st.r) for st, _ in stats):
            out.append(Row(spec.claim, f"{int(stats[0][1].sum())} resolved features",
                           "not tested", "too few resolved features, or constant accuracy",
                           test, _label(name)))
            continue
        r = [st.r for st, _ in stats]
        qa, qr = [st.q_accurate for st, _ in stats], [st.q_robust for st, _ in stats]
        ok = np.mean(r) >= r_min and np.mean(qa) <= q_max and np.mean(qr) <= q_max
        why = [f"mean r {np.mean(r):.2f} < {r_min:g}"] if np.mean(r) < r_min else []
        why += [f"{np.mean(qa):.1%} of the most accurate features are not robust"] \
            if np.mean(qa) > q_max else []
        why += [f"{np.mean(qr):.1%} of the most robust features are not accurate"] \
            if np.mean(qr) > q_max else []
        out.append(Row(spec.claim, f"r = {_ms(r)}; accurate-but-not-robust {_ms(qa)}, "
                       f"robust-but-not-accurate {_ms(qr)} ({stats[0][0].n} resolved features"
                       f"{_splits_note(splits)})", "agree" if ok else "disagree", "; ".join(why),
                       test, _label(name)))
    return out


def _rule_standard_less_correlated(spec: ClaimSpec, splits: Splits) -> list[Row]:
    """Fig. 5: in every split r of the standard NTK's features < the smallest r over λ > 0, and
    the median over the splits of the bootstrap p (resampling features) < ``significance``."""
    p = spec.params
    alpha = float(p.get("significance", 0.05))
    attack, step = _attack(spec)
    test = (f"standard_less_correlated ({attack} attack, step {step:g}): r(standard) < min over "
            f"λ > 0 of r(λ) in every split, median one-sided bootstrap p over features < {alpha:g}")
    if "standard" not in splits[0]:
        return [Row(spec.claim, "no standard-training run", "not tested", "standard: false", test)]
    r_std, r_low, pvals = [], [], []
    for sp in splits:
        rs, pairs = {}, {}
        for name, s in sp.items():
            st, keep = _stats(spec, s)
            if st is None or not np.isfinite(st.r):
                continue
            rs[name] = st.r
            pairs[name] = (np.asarray(s["test_accuracy"])[keep],
                           np.asarray(_pert(s, "perturbed_accuracy", attack, step))[keep])
        others = [k for k in rs if k != "standard"]
        if "standard" not in rs or not others:
            return [Row(spec.claim, "too few resolved features", "not tested", "", test)]
        pvals.append(bootstrap_less_correlated(
            pairs["standard"], [pairs[k] for k in others], int(p.get("bootstrap", 2000)),
            int(p.get("seed", 0))))
        r_std.append(rs["standard"])
        r_low.append(min(rs[k] for k in others))
    below = sum(a < b for a, b in zip(r_std, r_low))
    ok = below == len(splits) and float(np.median(pvals)) < alpha
    ours = (f"r(standard) = {_ms(r_std)}; smallest r(λ > 0) = {_ms(r_low)}; bootstrap p per "
            f"split {', '.join(f'{v:.3g}' for v in pvals)}")
    why = "" if ok else (f"the standard NTK's features are less correlated in {below} of "
                         f"{len(splits)} splits" if below < len(splits)
                         else f"not significant (median p ≥ {alpha:g})")
    return [Row(spec.claim, ours, "agree" if ok else "disagree", why, test, "standard vs λ > 0")]


def _rule_attack_hurts_standard(spec: ClaimSpec, splits: Splits) -> list[Row]:
    """"The 0.1 perturbation was enough to change the labels of some inputs": the standard
    predictor's accuracy drops by at least ``min_drop`` on average over the splits (and by more
    than twice its standard error, with several splits), and by at most ``max_drop`` ("some",
    not most, when given)."""
    attack, step = _attack(spec)
    lo, hi = float(spec.params.get("min_drop", 0.05)), spec.params.get("max_drop")
    test = (f"attack_hurts_standard ({attack} attack, step {step:g}): f_ntk(λ = 0) accuracy "
            f"drops by ≥ {lo:g}" + (f" and ≤ {float(hi):g}" if hi is not None else "")
            + " (mean over the splits; with several splits, by more than 2 standard errors)")
    if "standard" not in splits[0]:
        return [Row(spec.claim, "no standard-training run", "not tested", "standard: false", test)]
    clean = np.array([float(sp["standard"]["predictor_test_accuracy"]) for sp in splits])
    pert = np.array([float(_pert(sp["standard"], "predictor_accuracy", attack, step))
                     for sp in splits])
    drop = clean - pert
    se = float(np.std(drop, ddof=1) / np.sqrt(drop.size)) if drop.size > 1 else 0.0
    why = []
    if not drop.mean() >= lo:
        why.append(f"mean drop {drop.mean():.3f} < {lo:g}")
    if drop.size > 1 and not drop.mean() > 2 * se:
        why.append(f"mean drop {drop.mean():.3f} within 2 standard errors ({2 * se:.3f}) of 0")
    if hi is not None and drop.mean() > float(hi):
        why.append(f"mean drop {drop.mean():.3f} > {float(hi):g}: most labels change, not some")
    return [Row(spec.claim, f"clean {_ms(clean, 3)}; after the step {_ms(pert, 3)}; drop "
                f"{_ms(drop, 3)}{_splits_note(splits)}", "disagree" if why else "agree",
                "; ".join(why), test, "standard NTK predictor")]


def _rule_small_step_separable(spec: ClaimSpec, splits: Splits) -> list[Row]:
    """"for the 0.01 perturbation, there exists a classifier that classifies all the inputs
    perfectly even after this perturbation": in every split, some classifier we have — a resolved
    eigenfeature of any setting or a whole predictor f_ntk — has accuracy 1 on the perturbed test
    inputs."""
    attack, step = _attack(spec)
    rule = PositivityRule.model_validate(spec.params.get("features", {}))
    test = (f"small_step_separable ({attack} attack, step {step:g}): in every split some resolved "
            "eigenfeature or predictor f_ntk classifies every perturbed test input correctly")
    best = []
    for sp in splits:
        vals = [0.0]
        for s in sp.values():
            acc = np.asarray(_pert(s, "perturbed_accuracy", attack, step), dtype=float)
            vals += list(acc[_resolved(s, rule)]) + [float(_pert(s, "predictor_accuracy",
                                                                  attack, step))]
        best.append(max(vals))
    ok = all(b >= 1.0 for b in best)
    verdict: Verdict = "agree" if ok else "disagree"
    return [Row(spec.claim, "best perturbed test accuracy per split: " + ", ".join(
        f"{b:.3f}" for b in best), verdict, "" if ok else
        f"no perfect classifier in {sum(b < 1.0 for b in best)} of {len(best)} splits", test,
        "every classifier")]


FEATURE_RULES: dict[str, Callable[[ClaimSpec, Splits], list[Row]]] = {
    "aligned": _rule_aligned, "standard_less_correlated": _rule_standard_less_correlated,
    "attack_hurts_standard": _rule_attack_hurts_standard,
    "small_step_separable": _rule_small_step_separable}


def eigenfeatures_rows(splits: Splits | dict[str, dict[str, Any]], claim: dict[str, Any],
                       quick: bool = False) -> list[Row]:
    """Rows for Figs. 4/5 / B9–B13 from per-split, per-setting eigenvalues and accuracies.

    ``splits[k][name]`` holds ``eigenvalues``, ``gram_size``, ``test_accuracy``,
    ``perturbed_accuracy`` ({(attack, step): array}), ``predictor_test_accuracy`` and
    ``predictor_accuracy`` ({(attack, step): float}); one dict of settings is one split. Rules:
    :data:`FEATURE_RULES` (``depth_is_onset`` is evaluated by :func:`depth_onset_row`, it needs
    another experiment's run)."""
    splits = [splits] if isinstance(splits, dict) else list(splits)
    out: list[Row] = []
    for spec in claim_specs(claim, list(FEATURE_RULES) + ["depth_is_onset"]):
        if spec.rule in FEATURE_RULES:
            out += FEATURE_RULES[spec.rule](spec, splits)
    if quick:
        for r in out:
            r.why = (r.why + "; " if r.why else "") + "quick run on a small subset"
    return out


def depth_onset_row(spec: ClaimSpec, depth: int, onset: int | None, depths: Sequence[int],
                    source: str, rule: str, missing: str = "") -> Row:
    """"We use the smallest depth network that satisfies the minimum eigenvalue assumption": the
    depth of this experiment equals the onset of positivity found in ``source``'s run under
    ``rule`` (``missing``: why there is nothing to compare with). The depths of our configs were
    chosen from those onsets: a consistency check, never counted as agreement with the paper."""
    test = (f"depth_is_onset: the depth used equals the JNTK onset of {source} under the {rule} "
            "rule (our depth was chosen from it: a consistency check, not counted)")
    where = "the depth used"
    if missing:
        return Row(spec.claim, f"depth {depth}", "not tested", missing, test, where)
    if onset is None:
        return Row(spec.claim, f"depth {depth}; {source}: never positive on depths "
                   f"{depth_ranges(list(depths))}", "inconsistent", "no onset to use", test, where)
    ok = onset == depth
    return Row(spec.claim, f"depth {depth}; onset in {source}: L={onset}",
               "consistent" if ok else "inconsistent", "" if ok else f"the onset is L={onset}",
               test, where)


def eigenfeatures_table(splits: Splits | dict[str, dict[str, Any]], claim: dict[str, Any]
                        ) -> str:
    """Per setting, every attack and step side by side: r and the two fractions, and the
    predictor's accuracies, mean ± sd over the splits (Markdown), under the parameters of the
    config's ``aligned`` rule."""
    splits = [splits] if isinstance(splits, dict) else list(splits)
    specs = [s for s in claim_specs(claim, list(FEATURE_RULES) + ["depth_is_onset"])
             if s.rule == "aligned"]
    if not specs:
        return ""
    spec = specs[0]
    keys = list(splits[0][next(iter(splits[0]))]["perturbed_accuracy"])
    keys = [k if isinstance(k, tuple) else ("normalised", k) for k in keys]
    rule = PositivityRule.model_validate(spec.params.get("features", {}))
    dec, mar = float(spec.params.get("decile", 0.1)), float(spec.params.get("margin", 0.1))
    lines = [f"Per setting, over the eigenfeatures with λ_i above {rule.describe()} (of "
             f"Θ_λ's size n), mean ± sd over {len(splits)} train/test split(s): r = Pearson(clean, "
             f"perturbed accuracy), q_acc / q_rob = fractions of the top {dec:g} by clean / "
             f"perturbed accuracy that lose more than {mar:g} on the other; f_ntk = the whole "
             "predictor. Attacks: `paper` = a gradient step of the standard predictor's squared "
             "loss with the step as learning rate (§5.2); `normalised` = a step of that length.",
             "", "| setting | features (resolved / all) | " + " | ".join(
                 f"r; q_acc; q_rob, {a} {s:g}" for a, s in keys) + " | f_ntk clean | " +
             " | ".join(f"f_ntk {a} {s:g}" for a, s in keys) + " |",
             "|---|---:|" + "---|" * len(keys) + "---:|" + "---:|" * len(keys)]
    for name in splits[0]:
        keep = _resolved(splits[0][name], rule)
        cells = []
        for a, st in keys:
            vals = []
            for sp in splits:
                s = sp[name]
                k = _resolved(s, rule)
                x = np.asarray(s["test_accuracy"], dtype=float)[k]
                y = np.asarray(_pert(s, "perturbed_accuracy", a, st), dtype=float)[k]
                vals.append(accuracy_robustness(x, y, dec, mar) if k.sum() else None)
            cells.append("—" if None in vals else "; ".join(
                _ms([getattr(v, f) for v in vals]) for f in ("r", "q_accurate", "q_robust")))
        acc = [_ms([float(_pert(sp[name], "predictor_accuracy", a, st)) for sp in splits], 3)
               for a, st in keys]
        clean = _ms([float(sp[name]["predictor_test_accuracy"]) for sp in splits], 3)
        lines.append(f"| {_label(name)} | {int(keep.sum())} / {keep.size} | " + " | ".join(cells)
                     + f" | {clean} | " + " | ".join(acc) + " |")
    moved = [[float(sp[n].get("perturbation_norm", {}).get(k, np.nan)) for sp in splits
              for n in sp if n == "standard"] for k in keys]
    if all(m and np.isfinite(m).all() for m in moved):
        lines += ["", "Median distance |x' − x| the attack moves a test input (on the unit "
                  "sphere), mean ± sd over the splits: " + "; ".join(
                      f"{a} {s:g}: {_ms(m, 3)}" for (a, s), m in zip(keys, moved)) + "."]
    return "\n".join(lines) + "\n"
