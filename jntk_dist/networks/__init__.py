"""Finite-width networks: the MLP of the paper, its finite JNTK and Monte-Carlo Jacobian NNGP,
and gradient descent on the Jacobian-regularised loss (eq. 1) with kernel-drift measurement.

:mod:`.finite` — :class:`FiniteMLP`, :func:`finite_jntk`, :func:`mc_jacobian_nngp`;
:mod:`.training` — :class:`RobustTrainer`; :mod:`.measure` — one run of a drift grid
(Figs. 1–3), independent of how the grid is scheduled.
"""

from .finite import FiniteMLP, finite_jntk, jet_forward, mc_jacobian_nngp
from .training import RobustTrainer, max_norm_distance, robust_loss

__all__ = ["FiniteMLP", "RobustTrainer", "finite_jntk", "jet_forward", "max_norm_distance",
           "mc_jacobian_nngp", "robust_loss"]
