"""Every paper experiment in --quick mode end to end (real Ray, Zarr, jobs), then the report.

The verdicts must come from the stored numbers: editing a store flips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from jntk_dist.analysis import RELATIVE, PositivityRule
from jntk_dist.cli import main as jntk_main
from jntk_dist.workflows.config import ConfigError
from jntk_dist.report import (GENERATED_MARKER, assumption8_rows, evaluate, positivity_rule,
                              write_report)
from jntk_dist.report.verdicts import calibrated_rule
from jntk_dist.workflows.reproduce import (PAPER_CONFIGS, PaperConfig, job_config,
                                           load_paper_config, paper_configs, run_experiment)

ROOT = Path(__file__).resolve().parents[1]
HEADER = "# My reproduction notes\n\nHand-written text that the report must keep.\n\n"


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All experiments at quick size through the real CLI, then `jntk report` on them."""
    base = tmp_path_factory.mktemp("paper")
    runs, docs = base / "runs", base / "docs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's package, not an installed one
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "reproduce.py"), "--quick",
                           "--out", str(runs), "--num-cpus", "2", "--no-progress"],
                          cwd=base, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs.mkdir()
    (docs / "reproduction.md").write_text(HEADER + GENERATED_MARKER + "\nold generated text\n")
    assert jntk_main(["report", "--runs", str(runs), "--out", str(docs / "reproduction.md")]) == 0
    return {"runs": runs, "docs": docs, "base": base}


def test_every_experiment_produces_its_figure_and_rows(quick_runs: dict[str, Path]) -> None:
    exps = paper_configs()
    names = [e.name for e in exps]
    # one config per experiment of the paper, in the paper's order, all five B9–B13 panels
    assert names == ["fig1", "fig1_gpu", "fig2", "fig3", "fig3_gpu", "fig4_5", "fig6", "b7", "b8",
                     "b9", "b10", "b11", "b12", "b13"]
    text = (quick_runs["docs"] / "reproduction.md").read_text()
    for exp in exps:
        record = json.loads((quick_runs["runs"] / exp.name / "run.json").read_text())
        assert record["status"] == "ok", record.get("error")
        assert record["quick"] is True and record["seconds"] > 0
        assert record["hardware"]["cpus"] >= 1
        rep = evaluate(exp, quick_runs["runs"])
        assert rep.problem == "", (exp.name, rep.problem)
        assert rep.rows, exp.name
        assert all(r.verdict in ("agree", "disagree", "not tested", "consistent",
                                 "inconsistent") for r in rep.rows)
        assert any(r.counted for r in rep.rows), exp.name
        # every row quotes the paper (sentence and where it stands) or says the claim is ours
        for r in rep.rows:
            assert (r.claim.startswith("“") and "” (" in r.claim) or \
                r.claim.startswith("(ours, not the paper's)"), r.claim
        assert rep.figures, exp.name
        for fig in rep.figures:
            assert fig.suffix == ".png" and fig.stat().st_size > 1000
        assert f"### {exp.name}" in text
        section = text.split(f"### {exp.name}\n")[1].split("\n### ")[0]
        assert "| curve / setting | the paper says | rule (how we test it) | we get |" in section
        assert section.count("**agree**") + section.count("**disagree**") >= 1
        links = [line for line in section.splitlines() if line.startswith("![")]
        assert len(links) == len(rep.figures)
        for line in links:
            png = quick_runs["docs"] / line.split("(")[1].rstrip(")")
            assert png.exists() and 1000 < png.stat().st_size <= 200_000
    # the per-depth table of Fig. 6 names both rules in its header
    fig6 = text.split("### fig6\n")[1].split("\n### ")[0]
    assert "adopted rule relative: λ_min > τ_rel = n·eps₆₄·λ_max" in fig6
    assert "other rule float32_resolution: λ_min > τ₃₂(n) = 1e-06·(n/2916)^0.5" in fig6
    # the header counts only rules that can fail; a quick run counts nothing
    assert "| agree | disagree | not tested | consistency check | status |" in text
    assert "| 0 | 0 |" in text.split("### fig1\n")[0].split("[fig1](#fig1)")[1].split("\n")[0]
    assert "not run at the paper's size: `python benchmarks/run_fig1_fig3_gpu.py --only fig1_gpu" \
        in text


def test_each_figure_is_checked_by_the_rules_of_its_config(quick_runs: dict[str, Path]) -> None:
    """The rows of every experiment are exactly the rules its config lists (by name), and the
    paper configs of one figure agree: fig1_gpu/fig3_gpu check what fig1/fig3 check, Fig. 6, B7
    and B8 share one positivity rule."""
    for exp in paper_configs():
        rep = evaluate(exp, quick_runs["runs"])
        ran = {r.rule.split(":")[0].split(" (")[0] for r in rep.rows}
        assert ran == {r["rule"] for r in exp.claim["rules"]}, exp.name
    by = {e.name: e for e in paper_configs()}
    for name in ("fig1", "fig3"):
        assert by[f"{name}_gpu"].claim == by[name].claim
    rules = {n: positivity_rule(by[n].config) for n in ("fig6", "b7", "b8")}
    assert rules["fig6"] == rules["b7"] == rules["b8"] == RELATIVE  # the primary rule
    calibrated = {n: calibrated_rule(by[n].claim) for n in ("fig6", "b7", "b8")}
    assert calibrated["fig6"] == calibrated["b7"] == calibrated["b8"] == PositivityRule(
        rule="float32_resolution", scale=1e-6, reference_n=2916, exponent=0.5)


def _with(exp: PaperConfig, **config: object) -> PaperConfig:
    """``exp`` with keys of its job config replaced (the config a reader might have written)."""
    return exp.model_copy(update={"config": {**exp.config, **config}})


def test_assumption8_verdict_uses_the_rule_written_in_the_config(quick_runs: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    """λ_min between the two thresholds: positive under the relative rule (the configs' primary
    one), not under the float32 one. Which verdict the report gives is decided by `positivity:`
    in the config."""
    exp = load_paper_config(PAPER_CONFIGS / "fig6.yaml")
    store = _copy_run(quick_runs, "fig6", tmp_path)
    g = zarr.open_group(str(store / "assumption8"), mode="r+")
    n, hi = g["n"][...], g["lambda_max"][...]
    f32 = calibrated_rule(exp.claim)
    assert f32 is not None and positivity_rule(exp.config) == RELATIVE
    lam = np.array([np.sqrt(RELATIVE.threshold(a, b) * f32.threshold(a, b)) for a, b in zip(n, hi)])
    assert np.all(lam > [RELATIVE.threshold(a, b) for a, b in zip(n, hi)])
    g["lambda_min"][...] = lam  # every Gram, every depth: between the two thresholds

    def verdicts(e: PaperConfig) -> set[str]:
        return {r.verdict for r in evaluate(e, tmp_path).rows if r.rule.startswith("ntk_always")}

    assert verdicts(exp) == {"agree"}
    f32_spec = {"rule": "float32_resolution", "scale": 1e-6, "reference_n": 2916, "exponent": 0.5}
    assert verdicts(_with(exp, positivity=f32_spec)) == {"disagree"}
    assert verdicts(_with(exp, positivity={"rule": "float32_resolution", "scale": 1e-30})) \
        == {"agree"}


def test_report_keeps_the_hand_written_header(quick_runs: dict[str, Path]) -> None:
    text = (quick_runs["docs"] / "reproduction.md").read_text()
    assert text.startswith(HEADER.rstrip("\n"))
    assert text.count(GENERATED_MARKER) == 1
    assert "old generated text" not in text
    assert "reduced-size quick runs" in text


def test_quick_overrides_reach_the_job_and_full_size_is_the_papers(
        quick_runs: dict[str, Path]) -> None:
    fig1 = load_paper_config(PAPER_CONFIGS / "fig1.yaml")
    record = json.loads((quick_runs["runs"] / "fig1" / "run.json").read_text())
    assert record["config"]["grid"]["widths"] == fig1.quick["grid.widths"]
    full = job_config(fig1, quick_runs["base"], quick=False)
    assert full.grid.widths == [2 ** k for k in range(6, 14)] and full.grid.depths == [1, 2, 3]
    assert full.monte_carlo.n_networks == 10 ** 6 and full.network.kappa == 0.1
    fig3 = job_config(load_paper_config(PAPER_CONFIGS / "fig3.yaml"), quick_runs["base"])
    assert fig3.grid.depths == [11] and fig3.training.lam == 0.01 and fig3.training.lr == 1.0
    assert fig3.training.record_steps[-1] == 2 ** 11
    # the GPU configs: the paper's widths on CUDA; their quick runs take the same path on the CPU
    for name in ("fig1_gpu", "fig3_gpu"):
        exp = load_paper_config(PAPER_CONFIGS / f"{name}.yaml")
        gpu = job_config(exp, quick_runs["base"])
        assert gpu.grid.widths == [2 ** k for k in range(6, 14)] and gpu.device == "cuda"
        quick = json.loads((quick_runs["runs"] / name / "run.json").read_text())["config"]
        assert quick["device"] == "cpu" and quick["ray"]["use_gpu"] is False
        assert "needs a GPU run" in exp.not_run
    fig6 = job_config(load_paper_config(PAPER_CONFIGS / "fig6.yaml"), quick_runs["base"])
    assert fig6.depths == list(range(1, 16)) and set(fig6.activations) == {"gelu", "erf"}
    # B9–B13: the paper's dataset and activation per panel, at our onset depth
    panels = {"b9": ("forest_fires", "erf", 6), "b10": ("banknote", "gelu", 7),
              "b11": ("banknote", "erf", 6), "b12": ("sonar", "gelu", 2), "b13": ("sonar", "erf", 1)}
    for name, (data, act, depth) in panels.items():
        cfg = job_config(load_paper_config(PAPER_CONFIGS / f"{name}.yaml"), quick_runs["base"])
        assert (cfg.dataset.name, cfg.kernel.activation, cfg.kernel.depth) == (data, act, depth)
    # the quick eigenfeatures subset is a stratified sample of the real dataset
    sub = np.load(quick_runs["runs"] / "fig4_5" / "quick_subset.npz")
    assert sub["X"].shape == (48, 11) and set(np.unique(sub["y"])) == {-1.0, 1.0}


def _copy_run(quick_runs: dict[str, Path], name: str, dest: Path) -> Path:
    """A copy of one run whose run.json points at the copied store."""
    src = quick_runs["runs"] / name
    shutil.copytree(src, dest / name)
    record = json.loads((dest / name / "run.json").read_text())
    record["output"] = str(dest / name / Path(record["output"]).name)
    (dest / name / "run.json").write_text(json.dumps(record))
    return dest / name / Path(record["output"]).name


def test_assumption8_verdicts_follow_the_stored_eigenvalues(quick_runs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    exp = load_paper_config(PAPER_CONFIGS / "fig6.yaml")
    rule = positivity_rule(exp.config)
    store = _copy_run(quick_runs, "fig6", tmp_path)
    g = zarr.open_group(str(store / "assumption8"), mode="r+")
    depth, kind, act = g["depth"][...], g["kernel"][...].astype(str), g["activation"][...].astype(str)
    tau = np.array([rule.threshold(n, hi) for n, hi in zip(g["n"][...], g["lambda_max"][...])])

    def write(onsets: dict[str, int]) -> dict[str, str]:
        lam = np.where((kind == "ntk") | (depth >= np.array([onsets[a] for a in act])),
                       10 * tau, tau / 10)
        g["lambda_min"][...] = lam
        rows = evaluate(exp, tmp_path).rows
        return {f"{r.subject}: {r.rule.split(':')[0]}": r.verdict for r in rows}

    verdicts = write({"gelu": 11, "erf": 6})
    onset = {c: v for c, v in verdicts.items()
             if c.endswith("jntk_onset") and "(calibrated)" not in c}
    assert len(onset) == 2 and set(onset.values()) == {"agree"}
    assert [v for c, v in verdicts.items() if c.endswith("ntk_always_pd")] == ["agree"] * 2
    verdicts = write({"gelu": 10, "erf": 6})  # positive one depth too early for gelu
    assert [v for c, v in verdicts.items() if "gelu: jntk_onset" in c] == ["disagree"]
    assert [v for c, v in verdicts.items() if "erf: jntk_onset" in c] == ["agree"]


def test_positivity_rule_on_a_hand_made_table() -> None:
    """λ_min per depth for one 2916² JNTK and its 243² NTK (λ_max 1000): the float32-resolution
    threshold is 1e-6 and 1e-6·√(243/2916) = 2.89e-7; the relative one 2916·eps·1000 = 6.5e-10.
    The onsets follow from those numbers by hand."""
    eps = np.finfo(float).eps
    f32 = PositivityRule(rule="float32_resolution", scale=1e-6, reference_n=2916, exponent=0.5)
    assert f32.threshold(2916, 1e3) == pytest.approx(1e-6)
    assert f32.threshold(243, 1.0) == pytest.approx(1e-6 * np.sqrt(243 / 2916))
    assert RELATIVE.threshold(2916, 1e3) == pytest.approx(2916 * eps * 1e3)
    jntk = {1: 1e-12, 2: 1e-9, 3: 5e-7, 4: 2e-6, 5: 1e-5}  # relative onset 2, float32 onset 4
    ntk = {1: 2e-7, 2: 4e-7, 3: 1e-6, 4: 1e-5, 5: 1e-4}  # not resolved at L = 1 under float32
    rows = [{"dataset": "d", "activation": "gelu", "kernel": k, "depth": d, "n": n,
             "lambda_min": v, "lambda_max": 1e3} for k, n, lam in (("jntk", 2916, jntk),
                                                                    ("ntk", 243, ntk))
            for d, v in lam.items()]
    rows.append({**rows[0], "depth": 6, "lambda_min": 2e-6, "lambda_min_residual": 1.5e-6})
    claim = {"rules": [
        {"rule": "jntk_onset", "quote": "q", "where": "w", "onset": {"gelu": 4}},
        {"rule": "ntk_always_pd", "quote": "q", "where": "w", "positivity": "adopted"},
        {"rule": "ntk_always_pd", "quote": "q", "where": "w", "positivity": "relative"}]}
    onset, adopted, relative = assumption8_rows(rows, claim, f32)
    # a Ritz value 2e-6 ± 1.5e-6 at L = 6 is not resolved: the onset moves past the table's end
    assert onset.verdict == "disagree" and "never positive under float32" in onset.ours
    del rows[-1]
    onset, adopted, relative = assumption8_rows(rows, claim, f32)
    assert onset.verdict == "agree"
    assert "onset L=4 under float32_resolution, L=2 under relative" in onset.ours
    assert (adopted.verdict, relative.verdict) == ("disagree", "agree")
    assert "L=[1]" in adopted.why
    (early,) = assumption8_rows(rows, {"rules": [claim["rules"][0]]}, RELATIVE)
    assert early.verdict == "disagree" and "positive from L=2, not 4" in early.why


def test_drift_verdict_flips_when_distance_grows_with_width(quick_runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    exp = load_paper_config(PAPER_CONFIGS / "fig2.yaml")
    store = _copy_run(quick_runs, "fig2", tmp_path)
    root = zarr.open_group(str(store), mode="r+")
    dist = root["distance"][...]
    widths = root["width"][...].astype(float)
    made = np.broadcast_to((widths ** -0.5)[:, None, None, None, None], dist.shape).copy()
    made[..., 1] *= 30  # component 22 thirty times 00: "much larger" (≥ 10×)
    root["distance"][...] = made  # exactly Δ ∝ width^-1/2

    def verdicts(rule: str) -> set[str]:
        return {r.verdict for r in evaluate(exp, tmp_path).rows if r.rule.startswith(rule)}

    assert verdicts("decreasing") == verdicts("rate") == verdicts("ratio") == {"agree"}
    root["distance"][...] = made[::-1]  # Δ grows with width
    assert verdicts("decreasing") == verdicts("rate") == {"disagree"}
    rows = [r for r in evaluate(exp, tmp_path).rows if r.rule.startswith("decreasing")]
    assert all("does not fall" in r.why for r in rows)
    made[..., 1] /= 10  # now 22 is three times 00: larger, not "much larger"
    root["distance"][...] = made
    assert verdicts("ratio") == {"disagree"}


def test_assumption8_rule_on_a_coarse_depth_grid() -> None:
    def rows(pos: dict[int, bool]) -> list[dict[str, object]]:
        return [{"dataset": "d", "activation": "gelu", "kernel": "jntk", "depth": d, "n": 10,
                 "lambda_min": 1.0 if p else 1e-20, "lambda_max": 1.0} for d, p in pos.items()]

    claim = {"rules": [{"rule": "jntk_onset", "quote": "q", "where": "w", "onset": {"gelu": 11}}]}
    agree = assumption8_rows(rows({5: False, 10: False, 12: True}), claim, RELATIVE)
    assert agree[0].verdict == "agree" and "coarse" in agree[0].why
    early = assumption8_rows(rows({5: False, 10: True, 12: True}), claim, RELATIVE)
    assert early[0].verdict == "disagree" and "L=10" in early[0].why
    shallow = assumption8_rows(rows({1: False, 3: True}), claim, RELATIVE)
    assert shallow[0].verdict == "not tested"
    first = {"rules": [{"rule": "jntk_onset", "quote": "q", "where": "w",
                        "onset": {"gelu": "first"}}]}
    assert assumption8_rows(rows({1: True, 3: True}), first, RELATIVE)[0].verdict == "agree"
    assert assumption8_rows(rows({1: False, 3: True}), first, RELATIVE)[0].verdict == "disagree"
    later = {"rules": [{**first["rules"][0], "onset": {"gelu": "after_first"}}]}
    assert assumption8_rows(rows({1: False, 3: True}), later, RELATIVE)[0].verdict == "agree"
    assert assumption8_rows(rows({1: True, 3: True}), later, RELATIVE)[0].verdict == "disagree"
    with pytest.raises(ValueError, match="unknown rule 'jntk_onsett'"):
        assumption8_rows(rows({1: True}), {"rules": [{"rule": "jntk_onsett"}]}, RELATIVE)
    with pytest.raises(ValueError, match="quote"):
        assumption8_rows(rows({1: True}), {"rules": [{"rule": "jntk_onset"}]}, RELATIVE)


def test_bad_paper_configs_are_refused_with_the_key(tmp_path: Path) -> None:
    good = (PAPER_CONFIGS / "fig6.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(good + "colour: blue\n")
    with pytest.raises(ConfigError, match="colour"):
        load_paper_config(bad)
    bad.write_text(good.replace("  depths: [5, 6, 10, 11]", "  depht: [5]"))
    with pytest.raises(ConfigError, match=r"(?s)bad.*quick.*depht: unknown key"):
        load_paper_config(bad)
    with pytest.raises(ValueError, match="unknown experiment"):
        paper_configs(only=["fig99"])


def test_report_merges_assumption8_runs_of_separate_depths(tmp_path: Path) -> None:
    """Depths run separately (two runs folders) form one table; a depth in both comes from the
    first folder, and the verdict follows the merged numbers."""
    exp = load_paper_config(PAPER_CONFIGS / "fig6.yaml")
    small = "datasets=[{dataset: {name: forest_fires}, label: ff, max_points: 12}]"
    first, second = tmp_path / "a", tmp_path / "b"
    for runs, depths in ((first, "[10, 11]"), (second, "[5, 6, 11]")):
        rec = run_experiment(exp, runs, quick=True, overrides=[small, f"depths={depths}"],
                             progress=False)
        assert rec["status"] == "ok", rec.get("error")

    rule = positivity_rule(exp.config)

    def set_lambda_min(runs: Path, factor: float) -> None:  # every gelu JNTK row: factor·threshold
        g = zarr.open_group(str(runs / "fig6" / "fig6.zarr" / "assumption8"), mode="r+")
        sel = (g["kernel"][...].astype(str) == "jntk") & (g["activation"][...].astype(str) == "gelu")
        lam = g["lambda_min"][...]
        tau = np.array([rule.threshold(n, hi) for n, hi in zip(g["n"][...], g["lambda_max"][...])])
        lam[sel] = factor * tau[sel]
        g["lambda_min"][...] = lam

    set_lambda_min(first, 0.1)  # not positive at 10, 11
    set_lambda_min(second, 10.0)  # positive at 5, 6 and (skipped) 11
    rep = evaluate(exp, first, merge=[second])
    assert not rep.problem and len(rep.records) == 2
    gelu = [r for r in rep.rows if r.subject.startswith("ff (") and r.subject.endswith("gelu")
            and r.rule.startswith("jntk_onset")]
    assert len(gelu) == 1 and "depths 5–6, 10–11" in gelu[0].ours
    assert gelu[0].verdict == "disagree" and "never positive" in gelu[0].why  # L=11 of `first`
    assert "first run kept: run 2: L=11 (4 rows)" in rep.size  # ntk, jntk × gelu, erf
    swapped = evaluate(exp, second, merge=[first])  # now L=11 is positive: onset 11
    assert [r.verdict for r in swapped.rows
            if r.subject.endswith("gelu") and r.rule.startswith("jntk_onset")] == ["agree"]
    assert rep.figures and rep.figures[0].exists() and rep.figures[0].parent.name == "report"
    out = write_report([rep], tmp_path / "docs" / "reproduction.md", runs_dir="a + b")
    text = out.read_text()
    assert "(2 runs)" in text and f"`{first}`" in text and f"`{second}`" in text
    assert (tmp_path / "docs" / "figures" / "fig6_assumption8.png").exists()


def test_eigenfeature_verdicts_follow_the_stored_accuracies(quick_runs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """Edit the fig4_5 store: one eigenfeature of λ = 1 classifying every perturbed test input
    (paper attack, step 0.01) in every split makes the 0.01 sentence agree; none, disagree. The
    store holds both attacks and the quick run's two splits."""
    exp = load_paper_config(PAPER_CONFIGS / "fig4_5.yaml")
    store = _copy_run(quick_runs, "fig4_5", tmp_path)
    root = zarr.open_group(str(store), mode="r+")
    attrs = dict(root["eigenfeatures"].attrs)
    assert attrs["attacks"] == ["paper", "normalised"] and attrs["splits"] == 2
    groups = [root["eigenfeatures"]] + [root[f"eigenfeatures/split{k}"] for k in range(1, 2)]

    def verdict(best: float) -> str:
        for g in groups:
            for name in attrs["runs"]:
                acc = g[name]["perturbed_accuracy_paper_0.01"]
                a = np.minimum(acc[...], 0.9)
                top = int(np.argmax(g[name]["eigenvalues"][...]))  # a resolved feature
                a[top] = best if name == "lam_1" else a[top]
                acc[...] = a
                g[name].attrs["predictor_accuracy_paper_0.01"] = 0.5
        rows = evaluate(exp, tmp_path).rows
        return [r.verdict for r in rows if r.rule.startswith("small_step_separable")][0]

    assert verdict(1.0) == "agree"
    assert verdict(0.95) == "disagree"
