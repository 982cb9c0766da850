"""Synthetic inputs: the generalised Fibonacci lattice on S^{d-1} (Figs. 1–2's points)."""

from __future__ import annotations

import numpy as np
from scipy.special import betaincinv
from ..errors import ConfigError

__all__ = ["fibonacci_sphere"]


def _kronecker_steps(m: int) -> np.ndarray:
    """Roberts' generalised golden ratios: 1/g^k (k=1..m), g the positive root of x^(m+1) = x + 1
    (g is the golden ratio for m = 1)."""
    g = 2.0
    for _ in range(200):  # fixed-point iteration, contracting for every m ≥ 1
        g = (1.0 + g) ** (1.0 / (m + 1))
    return g ** -np.arange(1, m + 1, dtype=np.float64)


def fibonacci_sphere(n: int, d: int = 3) -> np.ndarray:
    """n deterministic, near-uniform unit vectors in R^d (points on S^{d-1}), float64 (n, d).

    A low-discrepancy lattice u_i in [0,1)^{d-1} — u_i1 = (i + 1/2)/n, the other coordinates the
    Kronecker sequence frac(i/g^k) with Roberts' generalised golden ratio g — is mapped through the
    inverse CDFs of the hyperspherical angles of the uniform distribution: the k-th polar angle has
    density ∝ sin^{d-1-k}, i.e. (1 + cos θ_k)/2 ~ Beta((d-k)/2, (d-k)/2), and the last angle is
    uniform in [0, 2π). For d = 3 this is exactly the standard spherical Fibonacci lattice
    (z_i = 1 - (2i+1)/n, longitude 2π i/φ). For d = 2 it is n equally spaced points on the circle.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ConfigError(f"n (number of points) must be an integer ≥ 1, got {n!r}")
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ConfigError(f"d (ambient dimension, points on S^(d-1)) must be an integer ≥ 2, got {d!r}")
    n, d = int(n), int(d)
    i = np.arange(n, dtype=np.float64)
    u = np.empty((n, d - 1))
    u[:, 0] = (i + 0.5) / n
    if d > 2:
        u[:, 1:] = np.mod(np.outer(i, _kronecker_steps(d - 2)), 1.0)
    x = np.empty((n, d))
    sin_prod = np.ones(n)
    for k in range(d - 2):  # polar angles θ_1..θ_{d-2}
        a = (d - 1 - k) / 2.0
        cos_t = 1.0 - 2.0 * betaincinv(a, a, u[:, k])
        x[:, k] = sin_prod * cos_t
        sin_prod = sin_prod * np.sqrt(np.clip(1.0 - cos_t * cos_t, 0.0, None))
    azimuth = 2.0 * np.pi * u[:, -1]
    x[:, d - 2] = sin_prod * np.cos(azimuth)
    x[:, d - 1] = sin_prod * np.sin(azimuth)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
