"""``jntk eigenfeatures CONFIG.yaml``: eigenfeatures and their robustness (Figs. 4/5, B9–B13).

For each λ (and for standard training, the plain NTK on the 00 Gram):
f_i(x) = Θ_λ(x,X)_{0,:} λ_i⁻¹ v_i v_iᵀ Y for every eigenpair (λ_i, v_i) of Θ_λ(X,X); the test
accuracy of each f_i, and its accuracy after a one-step projected-gradient perturbation of the test
inputs (each attack and step), where the gradient is that of the analytic predictor *without*
Jacobian regularisation (the standard NTK predictor, its x-derivative from the JNTK's α0 blocks),
and the perturbed inputs are projected back to the unit sphere. The attacks (``attacks:``) are the
paper's — a raw gradient step of the standard predictor's squared loss with the step as learning
rate — and a normalised step of fixed length; ``splits: K`` repeats everything on K stratified
train/test splits (split k in ``eigenfeatures/split{k}/``, split 0 in ``eigenfeatures/``). Pair
plots (split 0, the first attack) coloured by λ.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .. import solvers
from ..progress import track
from ..analysis import (KernelRegressor, accuracy, eigenfeatures, feature_accuracies,
                       pgd_perturb, training_targets, write_results)
from ..store import beside, open_file
from ..store.locations import open_group
from .problem import ProblemSpec, compute_context, load_problem, split_indices
from ..errors import ConfigError


class EigenfeaturesJobConfig(ProblemSpec):
    """``jntk eigenfeatures`` config."""

    lams: list[float] = Field(default_factory=lambda: [1.0, 0.1, 0.01, 0.001])
    standard: bool = True  # also the standard NTK (λ = 0, 00 Gram)
    steps: list[float] = Field(default_factory=lambda: [0.01, 0.1])
    # the one-step attacks (jntk_dist.analysis.features.ATTACKS); the first is the primary one
    attacks: list[Literal["paper", "normalised"]] = Field(
        default_factory=lambda: ["paper", "normalised"], min_length=1)
    # repeated stratified train/test splits, seeds seed, seed + 1, …: the spread of every statistic
    splits: int = Field(default=1, ge=1)


ATTACK_TEXT = {
    "paper": "x' = P_sphere(x + step·(f₀(x) − y)·∇f₀(x)) — a gradient step of learning rate step "
             "on the squared loss of f₀, the standard NTK predictor (λ = 0), §5.2 l.217",
    "normalised": "x' = P_sphere(x − step·y·∇f₀(x)/|∇f₀(x)|), f₀ the standard NTK predictor "
                  "(λ = 0): a step of length step"}


def split_group(k: int, name: str) -> str:
    """The store group of setting ``name`` in split ``k`` (split 0 where it always was)."""
    return f"eigenfeatures/{name}" if k == 0 else f"eigenfeatures/split{k}/{name}"


def run_eigenfeatures(cfg: EigenfeaturesJobConfig, progress: bool = True) -> dict[str, Any]:
    """All λ, every split: eigendecompose, evaluate eigenfeatures on clean and perturbed test
    inputs (every attack and step), write."""
    prob = load_problem(cfg)
    if prob.test.size == 0:
        raise ConfigError("eigenfeatures need test points: set test_fraction > 0")
    if any(l <= 0 for l in cfg.lams):
        raise ConfigError(f"lams must be > 0 (standard training is 'standard: true'), got {cfg.lams}")
    if cfg.splits > 1 and cfg.test_dataset is not None:
        raise ConfigError("splits > 1 re-splits dataset into train/test: not with a test_dataset")
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"job": "eigenfeatures", "source": prob.source, "depth": prob.depth,
                               "activation": prob.activation, "steps": cfg.steps,
                               "attacks": list(cfg.attacks), "splits": cfg.splits,
                               "n_train": int(prob.train.size), "n_test": int(prob.test.size),
                               "attack": ATTACK_TEXT[cfg.attacks[0]],
                               "attack_text": {a: ATTACK_TEXT[a] for a in cfg.attacks},
                               "config": cfg.recorded(), "runs": {}, "split_runs": []}
    plot_data: dict[str, Any] = {}
    for k in range(cfg.splits):
        if k:
            train, test = split_indices(prob.y, cfg.test_fraction, cfg.seed + k)
            prob = dataclasses.replace(prob, train=train, test=test)
        runs = _one_split(cfg, prob, k, plot_data if k == 0 else None, progress)
        summary["split_runs"].append(runs)
        if k == 0:
            summary["runs"] = runs
    summary["seconds"] = time.perf_counter() - t0
    write_results(cfg.output, {}, summary, group="eigenfeatures",
                  storage_options=cfg.options_for(cfg.output))
    summary["plot"] = str(_pairplot(plot_data, cfg.steps, cfg.output,
                                    cfg.options_for(cfg.output)))
    return summary


def _one_split(cfg: EigenfeaturesJobConfig, prob: Any, k: int, plot_data: dict[str, Any] | None,
               progress: bool) -> dict[str, Any]:
    """One train/test split: the standard predictor's attacks, then every setting's features."""
    Xtr, ytr = prob.X[prob.train], prob.y[prob.train]
    Xte, yte = prob.X[prob.test], prob.y[prob.test]
    with compute_context(cfg.compute) as sched:
        standard = KernelRegressor(prob.depth, prob.activation, lam=0.0, scheduler=sched)
        standard.fit(Xtr, ytr, gram=prob.train_gram(0.0))
    value, grad = standard.value_and_gradient(Xte)
    perturbed = {(a, s): pgd_perturb(Xte, yte, grad, s, attack=a, value=value)
                 for a in cfg.attacks for s in cfg.steps}
    _write_gradient(cfg, prob, grad, "eigenfeatures" if k == 0 else f"eigenfeatures/split{k}")
    settings = [(lam, f"lam_{lam:g}") for lam in cfg.lams]
    settings += [(0.0, "standard")] if cfg.standard else []
    runs = {}
    for lam, name in track(settings, f"eigenfeatures split {k}", unit="λ", enabled=progress):
        model = KernelRegressor(prob.depth, prob.activation, lam=lam)
        model.X_train_ = Xtr
        gram = prob.train_gram(lam)
        eig = solvers.eigh_dense(model.train_gram(Xtr) if gram is None else gram)
        Y = training_targets(ytr, model.q_)
        feats = eigenfeatures(eig, Y, model.cross_row(Xte))
        acc = feature_accuracies(feats, yte)
        arrays = {"eigenvalues": (eig.values, ["eig"]),
                  "coefficient": ((eig.vectors.T @ Y) / eig.values, ["eig"]),
                  "test_accuracy": (acc, ["eig"]), "f_test": (feats, ["test", "eig"])}
        run = {"lam": lam, "setting_name": setting_label(name), "gram_size": int(eig.n), "lambda_min": eig.lambda_min,
               "lambda_max": eig.lambda_max, "tolerance": eig.tolerance,
               "predictor_test_accuracy": float(accuracy(feats.sum(axis=1), yte))}
        pert_acc = {}
        for (a, s), Xp in perturbed.items():
            fp = eigenfeatures(eig, Y, model.cross_row(Xp))
            pert_acc[(a, s)] = feature_accuracies(fp, yte)
            arrays[f"perturbed_accuracy_{a}_{s:g}"] = (pert_acc[(a, s)], ["eig"])
            run[f"predictor_accuracy_{a}_{s:g}"] = float(accuracy(fp.sum(axis=1), yte))
            run[f"perturbation_norm_{a}_{s:g}"] = float(np.median(np.linalg.norm(Xp - Xte, axis=1)))
        write_results(cfg.output, arrays, run, group=split_group(k, name),
                      storage_options=cfg.options_for(cfg.output))
        runs[name] = run
        if plot_data is not None:
            plot_data[name] = (eig.values, acc, {s: pert_acc[(cfg.attacks[0], s)]
                                                 for s in cfg.steps}, eig.tolerance)
    return runs


def _write_gradient(cfg: EigenfeaturesJobConfig, prob: Any, grad: np.ndarray, group: str) -> None:
    """The split's indices and the attack's gradient (test, feature); ``feature`` indexes the
    input columns, named by the coordinate ``feature_name`` when the dataset names them."""
    arrays = {"test_index": (prob.test, ["test"]), "train_index": (prob.train, ["train"]),
              "pgd_gradient": (grad, ["test", "feature"]),
              "feature": (np.arange(grad.shape[1]), ["feature"])}
    named = len(prob.feature_names) == grad.shape[1]
    if named:  # variable-length strings: zarr 3 specifies them (fixed-width unicode it does not)
        arrays["feature_name"] = (np.array(prob.feature_names, dtype=np.dtypes.StringDType()),
                                  ["feature"])
    options = cfg.options_for(cfg.output)
    location = write_results(cfg.output, arrays, {}, group=group, storage_options=options)
    if named:  # xarray reads a variable's "coordinates" attribute as its coordinates
        open_group(location, "a", options)["pgd_gradient"].attrs["coordinates"] = "feature_name"


def _pairplot(data: dict[str, Any], steps: list[float], output: Path | str,
              storage_options: dict[str, Any] | None = None) -> Path | str:
    """The job's pair plot, as ``<output stem>_eigenfeatures.png`` (through fsspec for a URL)."""
    path = beside(output, "_eigenfeatures.png")
    with open_file(path, "wb", storage_options) as fh:
        pairplot(data, steps, fh)
    return path


def pairplot(data: dict[str, Any], steps: list[float], fh: Any) -> None:
    """Pair plot of (log10 eigenvalue, test accuracy, accuracy after each step) into the binary
    file ``fh``, in the paper's colours: λ = 1 purple to λ = 10⁻³ red (§5.2, l.217), the standard
    NTK black. ``data[name] = (eigenvalues, accuracy, {step: accuracy}, threshold)``; eigenpairs
    with λ_i ≤ threshold (not resolved) are left out: their f_i is noise over λ_i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r"$\log_{10}\lambda_i$", "test accuracy"] + [f"accuracy, step {s:g}" for s in steps]
    k = len(names)
    fig, axes = plt.subplots(k, k, figsize=(2.4 * k + 2.2, 2.4 * k), squeeze=False)
    regs = [n for n in data if n != "standard"]
    for label, (w, acc, pert, tau) in data.items():
        keep = w > tau
        cols = [np.log10(w[keep]), acc[keep]] + [pert[s][keep] for s in steps]
        color = "k" if label == "standard" else plt.cm.rainbow(
            regs.index(label) / max(1, len(regs) - 1))
        for i in range(k):
            for j in range(k):
                ax = axes[i, j]
                if i == j:
                    ax.hist(cols[i], bins=30, histtype="step", color=color,
                            label=setting_label(label))
                else:
                    ax.scatter(cols[j], cols[i], s=3, alpha=0.4, color=color)
                if i == k - 1:
                    ax.set_xlabel(names[j], fontsize=8)
                if j == 0:
                    ax.set_ylabel(names[i], fontsize=8)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center right", fontsize=9,
               title="setting", frameon=False)
    fig.suptitle(r"eigenfeatures $f_i$: eigenvalue $\lambda_i$ vs clean / perturbed test accuracy")
    fig.tight_layout(rect=(0, 0, 2.4 * k / (2.4 * k + 2.2), 1))  # the legend in the margin
    fig.savefig(fh, format="png", dpi=80)
    plt.close(fig)


def setting_label(name: str) -> str:
    """A setting's name as a reader says it: ``lam_0.1`` → "λ = 0.1", ``standard`` → "standard
    NTK (λ = 0)"."""
    return "standard NTK (λ = 0)" if name == "standard" else name.replace("lam_", "λ = ")


def summary_text(s: dict[str, Any], cfg: EigenfeaturesJobConfig) -> str:
    """What ``jntk eigenfeatures`` prints: one line per λ (the first split)."""
    lines = [f"eigenfeatures: {s['source']}, depth {s['depth']} {s['activation']}, "
             f"{s['n_train']} train / {s['n_test']} test, {s['splits']} split(s), "
             f"{s['seconds']:.1f}s"]
    for name, r in s["runs"].items():
        steps = ", ".join(f"{a} step {st:g}: {r[f'predictor_accuracy_{a}_{st:g}']:.3f}"
                          for a in s["attacks"] for st in s["steps"])
        lines.append(f"  {name:>10}: Gram {r['gram_size']}, λ_min={r['lambda_min']:.2e} "
                     f"(τ={r['tolerance']:.1e}); f_ntk test accuracy "
                     f"{r['predictor_test_accuracy']:.3f}; {steps}")
    lines.append(f"results {cfg.output}/eigenfeatures, plot {s['plot']}")
    return "\n".join(lines)


CONFIG = EigenfeaturesJobConfig


def execute(cfg: EigenfeaturesJobConfig, *, overwrite: bool = False,
            progress: bool = True) -> str:
    """Run the job (the registry's entry point); returns what the CLI prints."""
    return summary_text(run_eigenfeatures(cfg, progress=progress), cfg)
