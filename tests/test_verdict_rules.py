"""The report's rules on hand-made numbers: the eigenfeature statistic of Figs. 4/5, the growth
rules of Fig. 3 and the Monte-Carlo-floor rule of Fig. 1. Each expected value is worked out by hand
from the numbers written here, not from an earlier output of the code."""

from __future__ import annotations

import numpy as np
import pytest

from jntk_dist.analysis import accuracy_robustness, bootstrap_less_correlated, pearson
from jntk_dist.report import DriftNumbers, drift_rows, eigenfeatures_rows

QUOTE = {"quote": "q", "where": "w"}


def test_accuracy_robustness_on_a_hand_made_case() -> None:
    # ten features; the top decile by clean accuracy is feature 0 (0.9), which keeps 0.85
    clean = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.4, 0.3, 0.2])
    pert = clean - 0.05
    st = accuracy_robustness(clean, pert)
    assert st.r == pytest.approx(1.0) and st.q_accurate == 0.0 and st.q_robust == 0.0
    pert2 = pert.copy()
    pert2[0] = 0.3  # the most accurate feature is not robust: loses 0.6 > 0.1
    st = accuracy_robustness(clean, pert2)
    assert st.q_accurate == 1.0
    # the most robust is now feature 1 (0.75), with clean 0.8: not "robust but less accurate"
    assert st.q_robust == 0.0
    a, b = clean - clean.mean(), pert2 - pert2.mean()
    assert st.r == pytest.approx(float(a @ b / np.sqrt((a @ a) * (b @ b))))
    # ties at the cut are all in the top set: 0.5, 0.5 are the 5th and 6th of ten (decile 0.5)
    st = accuracy_robustness(clean, np.where(clean == 0.5, 0.0, clean), decile=0.5)
    assert st.q_accurate == pytest.approx(2 / 6)
    assert np.isnan(pearson(np.ones(4), np.arange(4.0)))


def test_bootstrap_tells_a_weak_correlation_from_a_strong_one() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(size=400)
    strong = (a, a + 0.05 * rng.standard_normal(400))  # r ≈ 0.99
    weak = (a, rng.uniform(size=400))  # r ≈ 0
    assert bootstrap_less_correlated(weak, [strong], n_boot=500) < 0.01
    assert bootstrap_less_correlated(strong, [weak], n_boot=500) > 0.99


def _settings(r_std: float, r_reg: float, n: int = 300, seed: int = 0) -> dict[str, dict]:
    """Per setting, accuracies whose clean/perturbed correlation is about the given r (the
    eigenvalues all well above any threshold)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, r in (("lam_1", r_reg), ("lam_0.01", r_reg), ("standard", r_std)):
        a = rng.uniform(0.3, 0.7, n)
        noise = rng.uniform(0.3, 0.7, n)
        b = r * a + np.sqrt(1 - r * r) * noise
        out[name] = {"eigenvalues": np.logspace(2, -1, n), "gram_size": n,
                     "test_accuracy": a, "perturbed_accuracy": {0.1: b, 0.01: a},
                     "predictor_test_accuracy": 0.9,
                     "predictor_accuracy_step": {0.1: 0.6, 0.01: 0.88}}
    return out


def test_eigenfeature_rules_follow_the_numbers() -> None:
    claim = {"rules": [
        {**QUOTE, "rule": "aligned", "step": 0.1, "min_correlation": 0.8, "decile": 0.1,
         "margin": 0.1},
        {**QUOTE, "rule": "standard_less_correlated", "step": 0.1, "bootstrap": 500},
        {**QUOTE, "rule": "attack_hurts_standard", "step": 0.1}]}
    rows = eigenfeatures_rows(_settings(r_std=0.1, r_reg=0.995), claim)
    by = {(r.rule.split(":")[0], r.subject): r.verdict for r in rows}
    assert by[("aligned", "λ = 1")] == by[("aligned", "λ = 0.01")] == "agree"
    assert by[("standard_less_correlated", "standard vs λ > 0")] == "agree"
    assert by[("attack_hurts_standard", "standard NTK predictor")] == "agree"
    rows = eigenfeatures_rows(_settings(r_std=0.995, r_reg=0.3), claim)
    by = {(r.rule.split(":")[0], r.subject): r for r in rows}
    assert by[("aligned", "λ = 1")].verdict == "disagree" and "r 0." in by[("aligned", "λ = 1")].why
    assert by[("standard_less_correlated", "standard vs λ > 0")].verdict == "disagree"
    # features whose eigenvalue a float32 eigensolver cannot resolve are left out
    s = _settings(r_std=0.1, r_reg=0.995)
    for v in s.values():
        v["eigenvalues"] = np.full(v["gram_size"], 1e-9)
    rows = eigenfeatures_rows(s, {"rules": claim["rules"][:1]})
    assert {r.verdict for r in rows} == {"n/a"} and "0 resolved" in rows[0].ours


def _fig3(delta_of_t: np.ndarray, acc: float = 1.0, seeds: int = 2) -> DriftNumbers:
    """Two widths, one depth, the paper's steps; Δ(width, t) = Δ_t / √width + seed jitter."""
    steps = [0] + [2 ** k for k in range(12)]
    widths = [64, 256]
    jitter = 1 + 1e-3 * np.arange(seeds)
    dist = np.array([[[[[v / np.sqrt(w) * j] * 2 for v in delta_of_t] for j in jitter]]
                     for w in widths])  # (width, depth, seed, step, component)
    shape4 = dist.shape[:4]
    return DriftNumbers(widths, [11], steps, ["00", "22"], dist, dist.copy(),
                        np.full(shape4, acc), np.zeros(shape4))


def test_growth_rules_of_fig3() -> None:
    claim = {"rules": [
        {**QUOTE, "rule": "distance_grows", "min_fraction": 0.75},
        {**QUOTE, "rule": "growth_slows", "window": 3, "ratio": 0.5, "min_fraction": 0.75},
        {**QUOTE, "rule": "final_accuracy", "min_accuracy": 0.95, "min_width": 128}]}
    t = np.array([0] + [2 ** k for k in range(12)], dtype=float)

    def verdicts(d: DriftNumbers) -> dict[str, str]:
        return {r.rule.split(":")[0]: r.verdict for r in drift_rows(d, claim, quick=False)}

    # Δ grows like 2 − 2^-k over the doublings k: the increments halve, ρ = 2^-6 → slows
    slowing = 1 + 1 - np.concatenate([[1.0], 2.0 ** -np.arange(12)])
    assert verdicts(_fig3(slowing)) == {"distance_grows": "agree", "growth_slows": "agree",
                                        "final_accuracy": "agree"}
    # Δ ∝ t: the increments double → does not slow; accuracy 0.9 < 0.95
    v = verdicts(_fig3(1 + t, acc=0.9))
    assert v == {"distance_grows": "agree", "growth_slows": "disagree",
                 "final_accuracy": "disagree"}
    # Δ falls with t: no growth
    assert verdicts(_fig3(2 - slowing / 2))["distance_grows"] == "disagree"
    assert verdicts(_fig3(np.ones(13)))["growth_slows"] == "n/a"  # flat: nothing to slow down


def test_fig1_rule_fits_only_above_the_monte_carlo_floor() -> None:
    widths = [64, 128, 256, 512]
    bias = 1.0 / np.array(widths, dtype=float)  # the finite-width bias ∝ 1/width
    floor = np.full(4, 2e-3)  # Monte-Carlo floor: Δ ≈ max(bias, floor)

    def numbers(delta: np.ndarray) -> DriftNumbers:
        dist = delta[:, None, None, None, None] * np.ones((4, 1, 1, 1, 1))
        fl = floor[:, None, None, None, None] * np.ones((4, 1, 1, 1, 1))
        nan = np.full((4, 1, 1, 1), np.nan)
        return DriftNumbers(widths, [2], [0], ["00"], dist, dist * np.nan, nan, nan, fl, 10 ** 4)

    claim = {"rules": [{**QUOTE, "rule": "decreasing", "floor_factor": 2.0}]}
    # 1/64, 1/128 are above 2×floor = 4e-3 (1/256 = 3.9e-3 is not): two widths, slope −1
    (row,) = drift_rows(numbers(np.maximum(bias, floor)), claim, quick=False)
    assert row.verdict == "agree" and "-1 over 2 widths above the floor" in row.ours
    # a plain slope over all widths would include the flat floor; the rule does not
    (row,) = drift_rows(numbers(np.maximum(bias[::-1], floor)), claim, quick=False)
    assert row.verdict == "disagree"
    (row,) = drift_rows(numbers(np.full(4, 3e-3)), claim, quick=False)
    assert row.verdict == "n/a" and "more networks needed" in row.why
