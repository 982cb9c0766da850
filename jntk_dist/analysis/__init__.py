"""The paper's kernel analyses: the step "solver → analysis" of the data path.

* :class:`KernelRegressor` — the predictor of eq. (4) / Theorem 10,
  f_ntk(x) = Θ_λ(x, X)_{0,:} (Θ_λ(X, X) + μI)^{-1} Y,  Y = (y_1, 0…0, y_2, 0…0, …),
  with its exact input gradient. λ = 0 is the standard NTK predictor on the 00 Gram.
  For λ > 0 and μ = 0, Λ cancels: f_ntk = Θ(x,X)_{0,:} Θ(X,X)^{-1} Y does not depend on λ, it
  interpolates y and its gradient vanishes at every training point (the Jacobian targets are 0).
* :func:`assumption8` — λ_min of the NTK (00) and JNTK Gram vs depth (Fig. 6 / B7 / B8), positive
  under a :class:`PositivityRule` (float32 resolution τ₃₂(n), or the relative τ = n·eps·λ_max of
  :func:`jntk_dist.solvers.positivity_tolerance`, which is always reported too).
* :func:`eigenfeatures` — f_i(x) = Θ_λ(x,X)_{0,:} λ_i⁻¹ v_i v_iᵀ Y for every eigenpair (Figs. 4/5),
  :func:`pgd_perturb` — one projected-gradient step on the unit sphere against the standard NTK
  predictor (no Jacobian regularisation), and :func:`feature_accuracies`.
* :func:`finite_time_predictions` — u(t) = Y + e^{−Θt}(u₀ − Y) on train points and the matching
  test predictions, from an eigendecomposition (the paper's linear ODE).

Rooms: :mod:`.regression`, :mod:`.spectra` (Assumption 8), :mod:`.features` (eigenfeatures, PGD,
dynamics), :mod:`.results` (writing them).
"""

from .features import (AccuracyRobustness, accuracy_robustness, bootstrap_less_correlated,
                       eigenfeatures, feature_accuracies, finite_time_predictions, pearson,
                       pgd_perturb)
from .regression import KernelRegressor, accuracy, training_targets
from .results import write_results
from .spectra import (RELATIVE, Assumption8Row, ExtremesSettings, PositivityRule,
                      StructuredExtremes, assumption8, structured_extremes)

__all__ = ["AccuracyRobustness", "Assumption8Row", "ExtremesSettings", "StructuredExtremes", "accuracy_robustness", "bootstrap_less_correlated", "pearson", "KernelRegressor", "PositivityRule", "RELATIVE", "accuracy", "assumption8", "eigenfeatures",
           "feature_accuracies", "finite_time_predictions", "pgd_perturb", "structured_extremes",
           "training_targets", "write_results"]
