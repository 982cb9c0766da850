"""Finite-width networks: the MLP of the paper, its finite JNTK and Monte-Carlo Jacobian NNGP,
and gradient descent on the Jacobian-regularised loss (eq. 1) with kernel-drift measurement.

:mod:`.finite` — :class:`FiniteMLP`, :func:`finite_jntk`, :func:`mc_jacobian_nngp` and
:func:`mc_distance` (Δ of Fig. 1 and its Monte-Carlo floor); :mod:`.training` —
:class:`RobustTrainer` (Figs. 2, 3). Only torch and numpy are needed here (tqdm for progress bars).
"""

from .finite import FiniteMLP, MonteCarloKernel, finite_jntk, jet_forward, mc_distance, mc_jacobian_nngp
from .training import RobustTrainer, max_norm_distance, robust_loss

__all__ = ["FiniteMLP", "MonteCarloKernel", "RobustTrainer", "finite_jntk", "jet_forward",
           "max_norm_distance", "mc_distance", "mc_jacobian_nngp", "robust_loss"]
