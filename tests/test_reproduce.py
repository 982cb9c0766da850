"""Every paper experiment in --quick mode end to end (real Ray, Zarr, jobs), then the report.

The verdicts must come from the stored numbers: editing a store flips them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from jntk_dist.cli import main as jntk_main
from jntk_dist.workflows.config import ConfigError
from jntk_dist.report import GENERATED_MARKER, assumption8_rows, evaluate, write_report
from jntk_dist.workflows.reproduce import (PAPER_CONFIGS, job_config, load_paper_config,
                                           paper_configs, run_experiment)

ROOT = Path(__file__).resolve().parents[1]
HEADER = "# My reproduction notes\n\nHand-written text that the report must keep.\n\n"


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All experiments at quick size through the real CLI, then `jntk report` on them."""
    base = tmp_path_factory.mktemp("paper")
    runs, docs = base / "runs", base / "docs"
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "reproduce.py"), "--quick",
                           "--out", str(runs), "--num-cpus", "2", "--no-progress"],
                          cwd=base, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs.mkdir()
    (docs / "reproduction.md").write_text(HEADER + GENERATED_MARKER + "\nold generated text\n")
    assert jntk_main(["report", "--runs", str(runs), "--out", str(docs / "reproduction.md")]) == 0
    return {"runs": runs, "docs": docs, "base": base}


def test_every_experiment_produces_its_figure_and_rows(quick_runs: dict[str, Path]) -> None:
    exps = paper_configs()
    names = {e.name for e in exps}
    # one config per experiment of the paper
    assert {"fig1", "fig2", "fig3", "fig4_5", "fig6", "b7", "b8"} <= names
    assert any(n.startswith("b9_b13") for n in names)
    text = (quick_runs["docs"] / "reproduction.md").read_text()
    for exp in exps:
        record = json.loads((quick_runs["runs"] / exp.name / "run.json").read_text())
        assert record["status"] == "ok", record.get("error")
        assert record["quick"] is True and record["seconds"] > 0
        assert record["hardware"]["cpus"] >= 1
        rep = evaluate(exp, quick_runs["runs"])
        assert rep.problem == "", rep.problem
        assert rep.rows, exp.name
        assert all(r.verdict in ("agree", "disagree", "n/a") for r in rep.rows)
        assert any(r.verdict != "n/a" for r in rep.rows), exp.name
        assert rep.figures, exp.name
        for fig in rep.figures:
            assert fig.suffix == ".png" and fig.stat().st_size > 1000
        assert f"### {exp.name}" in text
        section = text.split(f"### {exp.name}\n")[1].split("\n### ")[0]
        assert "| paper's claim | ours | verdict |" in section
        assert section.count("**agree**") + section.count("**disagree**") >= 1
        links = [line for line in section.splitlines() if line.startswith("![")]
        assert len(links) == len(rep.figures)
        for line in links:
            png = quick_runs["docs"] / line.split("(")[1].rstrip(")")
            assert png.exists() and 1000 < png.stat().st_size <= 200_000


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
    fig6 = job_config(load_paper_config(PAPER_CONFIGS / "fig6.yaml"), quick_runs["base"])
    assert fig6.depths == list(range(1, 16)) and set(fig6.activations) == {"gelu", "erf"}
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
    store = _copy_run(quick_runs, "fig6", tmp_path)
    g = zarr.open_group(str(store / "assumption8"), mode="r+")
    depth, kind, act = g["depth"][...], g["kernel"][...].astype(str), g["activation"][...].astype(str)
    tol = g["tolerance"][...]
    onset = {"gelu": 11, "erf": 6}

    def write(onsets: dict[str, int]) -> dict[str, str]:
        lam = np.where((kind == "ntk") | (depth >= np.array([onsets[a] for a in act])),
                       10 * tol, tol / 10)
        g["lambda_min"][...] = lam
        rows = evaluate(exp, tmp_path).rows
        return {r.claim: r.verdict for r in rows}

    verdicts = write(onset)
    jntk = {c: v for c, v in verdicts.items() if "JNTK" in c}
    assert len(jntk) == 2 and set(jntk.values()) == {"agree"}
    assert all(v == "agree" for c, v in verdicts.items() if "NTK Gram positive definite at every" in c)
    verdicts = write({"gelu": 10, "erf": 6})  # positive one depth too early for gelu
    assert [v for c, v in verdicts.items() if "gelu: JNTK" in c] == ["disagree"]
    assert [v for c, v in verdicts.items() if "erf: JNTK" in c] == ["agree"]


def test_drift_verdict_flips_when_distance_grows_with_width(quick_runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    exp = load_paper_config(PAPER_CONFIGS / "fig2.yaml")
    store = _copy_run(quick_runs, "fig2", tmp_path)
    root = zarr.open_group(str(store), mode="r+")
    dist = root["distance"][...]
    widths = root["width"][...].astype(float)
    made = np.broadcast_to((widths ** -0.5)[:, None, None, None, None], dist.shape).copy()
    root["distance"][...] = made  # exactly Δ ∝ width^-1/2
    rows = evaluate(exp, tmp_path).rows
    assert {r.verdict for r in rows if "decreases" in r.claim} == {"agree"}
    assert {r.verdict for r in rows if "rate" in r.claim} == {"agree"}
    root["distance"][...] = made[::-1]  # Δ grows with width
    rows = evaluate(exp, tmp_path).rows
    assert {r.verdict for r in rows if "decreases" in r.claim} == {"disagree"}
    assert {r.verdict for r in rows if "rate" in r.claim} == {"disagree"}
    assert all("does not fall" in r.why for r in rows if "decreases" in r.claim)


def test_assumption8_rule_on_a_coarse_depth_grid() -> None:
    def rows(pos: dict[int, bool]) -> list[dict[str, object]]:
        return [{"dataset": "d", "activation": "gelu", "kernel": "jntk", "depth": d,
                 "lambda_min": 1.0 if p else 1e-20, "tolerance": 1e-12} for d, p in pos.items()]

    claim = {"jntk_pd_from_depth": {"gelu": 11}}
    agree = assumption8_rows(rows({5: False, 10: False, 12: True}), claim, quick=False)
    assert agree[0].verdict == "agree" and "coarse" in agree[0].why
    early = assumption8_rows(rows({5: False, 10: True, 12: True}), claim, quick=False)
    assert early[0].verdict == "disagree" and "L=10" in early[0].why
    shallow = assumption8_rows(rows({1: False, 3: True}), claim, quick=False)
    assert shallow[0].verdict == "n/a"


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

    def set_lambda_min(runs: Path, factor: float) -> None:  # every gelu JNTK row: factor·τ
        g = zarr.open_group(str(runs / "fig6" / "fig6.zarr" / "assumption8"), mode="r+")
        sel = (g["kernel"][...].astype(str) == "jntk") & (g["activation"][...].astype(str) == "gelu")
        lam = g["lambda_min"][...]
        lam[sel] = factor * g["tolerance"][...][sel]
        g["lambda_min"][...] = lam

    set_lambda_min(first, 0.1)  # not positive at 10, 11
    set_lambda_min(second, 10.0)  # positive at 5, 6 and (skipped) 11
    rep = evaluate(exp, first, merge=[second])
    assert not rep.problem and len(rep.records) == 2
    gelu = [r for r in rep.rows if "gelu: JNTK" in r.claim]
    assert len(gelu) == 1 and "depths [5, 6, 10, 11]" in gelu[0].ours
    assert gelu[0].verdict == "disagree" and "never positive" in gelu[0].why  # L=11 of `first`
    assert "first run kept: run 2: L=11 (4 rows)" in rep.size  # ntk, jntk × gelu, erf
    swapped = evaluate(exp, second, merge=[first])  # now L=11 is positive: onset 11
    assert [r.verdict for r in swapped.rows if "gelu: JNTK" in r.claim] == ["agree"]
    assert rep.figures and rep.figures[0].exists() and rep.figures[0].parent.name == "merged"
    out = write_report([rep], tmp_path / "docs" / "reproduction.md", runs_dir="a + b")
    text = out.read_text()
    assert "(2 runs)" in text and f"`{first}`" in text and f"`{second}`" in text
    assert (tmp_path / "docs" / "figures" / "fig6_assumption8.png").exists()
