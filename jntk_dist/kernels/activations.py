"""Activations φ, normalised so that E_{z~N(0,1)}[φ(z)²] = 1, and their Gaussian duals.

Every activation carries, side by side,

* ``phi`` (and its derivatives) as torch functions -- used by the finite networks, and
* its *dual* expectations for (u, v) ~ N(0, [[A, B], [B, C]]):

      F(A, B, C) = E[φ(u) φ(v)]          (the NNGP map Σ^(l-1) -> Σ^(l))
      G(A, B, C) = E[φ'(u) φ'(v)] = ∂F/∂B (the derivative map, Γ in the paper)

  together with the first and second partial derivatives that the Jacobian kernels need.

Closed forms are used for ``erf`` and ``gelu``; any other smooth activation goes through
Gauss–Hermite quadrature with Price's theorem, so every derivative is again an expectation
evaluated at the point itself -- exact on the diagonal, where the 2×2 covariance is singular.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from ..errors import ConfigError, InputError

__all__ = [
    "Activation",
    "DualJet",
    "Erf",
    "Gelu",
    "QuadratureActivation",
    "Relu",
    "get_activation",
    "available_activations",
]

Tensor = torch.Tensor


class DualJet(NamedTuple):
    """A dual map H(A, B, C) and the partial derivatives the Jacobian kernels need."""

    v: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    AB: Tensor
    AC: Tensor
    BB: Tensor
    BC: Tensor


class NonSmoothActivationError(InputError):
    """Raised when a Jacobian kernel is asked of an activation without Lipschitz φ''."""


class Activation:
    """Base class: a normalised activation and its Gaussian dual expectations.

    Subclasses provide ``raw(z)`` (the unnormalised function); the default dual maps use
    Gauss–Hermite quadrature with ``quadrature_points`` nodes per dimension.
    """

    name: str = "activation"
    smooth: bool = True
    #: dual maps in closed form (the torch.compile'd recursion is used only for these)
    has_closed_form: bool = False
    quadrature_points: int = 96

    def __init__(self) -> None:
        self._scale = math.sqrt(self._raw_second_moment())

    # ---- the function itself -------------------------------------------------------------
    def raw(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def phi(self, z: Tensor) -> Tensor:
        """Normalised activation φ(z) = raw(z) / sqrt(E[raw(z)²])."""
        return self.raw(z) / self._scale

    __call__ = phi

    @property
    def scale(self) -> float:
        """sqrt(E[raw(z)²]) for z ~ N(0, 1): the normaliser."""
        return self._scale

    def derivatives(self, z: Tensor, order: int) -> list[Tensor]:
        """[φ(z), φ'(z), …, φ^(order)(z)] for the normalised φ, by nested autodiff.

        Reverse mode is used where it can be (fastest here); inside torch.func transforms
        (vmap, grad, jacfwd) nested forward mode takes over.
        """
        try:
            with torch.enable_grad():
                leaf = z.detach().requires_grad_(True)
                out = [self.phi(leaf)]
                for _ in range(order):
                    (d,) = torch.autograd.grad(out[-1].sum(), leaf, create_graph=True)
                    out.append(d)
            return [t.detach() for t in out]
        except RuntimeError:  # z is wrapped by a functorch transform
            ones = torch.ones_like(z)
            levels = [self.phi]
            for _ in range(order):
                prev = levels[-1]
                levels.append(lambda t, f=prev: torch.func.jvp(f, (t,), (ones,))[1])
            return [f(z) for f in levels]

    def _raw_second_moment(self) -> float:
        nodes, weights = _hermite_e(201, torch.float64, torch.device("cpu"))
        return float((weights * self.raw(nodes) ** 2).sum())

    # ---- dual maps ------------------------------------------------------------------------
    def dual_values(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        """(F, G) = (E[φ(u)φ(v)], E[φ'(u)φ'(v)]) -- all the plain NNGP/NTK need."""
        (F, G) = _quadrature_expectations(self, A, B, C, [(0, 0), (1, 1)], max_order=1)
        return F, G

    def dual_jets(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[DualJet, DualJet]:
        """F and G with their (A, B, C) derivatives, by Price's theorem and quadrature.

        ∂E[f(u)g(v)]/∂B = E[f'(u)g'(v)],  ∂E[f(u)g(v)]/∂A = ½E[f''(u)g(v)],
        ∂E[f(u)g(v)]/∂C = ½E[f(u)g''(v)].
        """
        self.require_smooth()
        pairs = [(0, 0), (2, 0), (0, 2), (1, 1), (3, 1), (1, 3), (2, 2),
                 (4, 2), (2, 4), (3, 3)]
        e = dict(zip(pairs, _quadrature_expectations(self, A, B, C, pairs, max_order=4)))
        F = DualJet(v=e[0, 0], A=e[2, 0] / 2, B=e[1, 1], C=e[0, 2] / 2,
                    AB=e[3, 1] / 2, AC=e[2, 2] / 4, BB=e[2, 2], BC=e[1, 3] / 2)
        G = DualJet(v=e[1, 1], A=e[3, 1] / 2, B=e[2, 2], C=e[1, 3] / 2,
                    AB=e[4, 2] / 2, AC=e[3, 3] / 4, BB=e[3, 3], BC=e[2, 4] / 2)
        return F, G

    def require_smooth(self) -> None:
        if not self.smooth:
            raise NonSmoothActivationError(
                f"activation {self.name!r} is not smooth enough for Jacobian kernels "
                "(they need φ, φ', φ'' Lipschitz; ReLU has a Dirac φ''). Use the plain "
                "kernels (kernels.nngp / kernels.ntk) or a smooth activation such as "
                f"{', '.join(n for n in available_activations() if n != 'relu')}."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ---- closed forms ------------------------------------------------------------------------


class Erf(Activation):
    """φ(z) = erf(z) / sqrt(2/π · asin(2/3)); dual maps in closed (arcsin) form."""

    name = "erf"
    has_closed_form = True

    def raw(self, z: Tensor) -> Tensor:
        return torch.special.erf(z)

    def _raw_second_moment(self) -> float:
        return 2.0 / math.pi * math.asin(2.0 / 3.0)

    def dual_values(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        c1 = 4.0 / (math.pi * self._scale**2)
        D = (1 + 2 * A) * (1 + 2 * C) - 4 * B * B
        root = torch.sqrt(D)
        return c1 / 2 * torch.atan2(2 * B, root), c1 / root

    def dual_jets(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[DualJet, DualJet]:
        # F = (c1/2) asin(2B / sqrt(pq)), p = 1+2A, q = 1+2C, D = pq - 4B²; G = ∂F/∂B = c1 D^-1/2.
        c1 = 4.0 / (math.pi * self._scale**2)
        p, q = 1 + 2 * A, 1 + 2 * C
        D = p * q - 4 * B * B
        r1 = torch.rsqrt(D)
        r3 = r1 / D
        r5 = r3 / D
        G_v = c1 * r1
        F = DualJet(v=c1 / 2 * torch.atan2(2 * B, D * r1), A=-G_v * B / p, B=G_v,
                    C=-G_v * B / q, AB=-c1 * q * r3, AC=c1 * B * r3, BB=4 * c1 * B * r3,
                    BC=-c1 * p * r3)
        G = DualJet(v=G_v, A=F.AB, B=F.BB, C=F.BC, AB=-12 * c1 * q * B * r5,
                    AC=-2 * c1 * r3 + 3 * c1 * p * q * r5,
                    BB=4 * c1 * r3 + 48 * c1 * B * B * r5, BC=-12 * c1 * p * B * r5)
        return F, G


def _gelu_F(A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """E[gelu(u) gelu(v)] for exact gelu(z) = z Φ(z) (Tsuchida et al. 2020)."""
    prod_plus_1 = (A + 1) * (C + 1)
    delta_sq = prod_plus_1 - B * B
    delta = torch.sqrt(delta_sq)
    angle = torch.atan2(B, delta)
    return B / 4 + ((B * B + A * C * delta_sq) / (prod_plus_1 * delta) + B * angle) / (2 * math.pi)


def _gelu_G(A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """E[gelu'(u) gelu'(v)] = ∂F/∂B in closed form."""
    prod_plus_1 = (A + 1) * (C + 1)
    delta_sq = prod_plus_1 - B * B
    delta = torch.sqrt(delta_sq)
    angle = torch.atan2(B, delta)
    first = (1 / delta_sq + (1 - A * C) / prod_plus_1 + 1) * B / delta / (2 * math.pi)
    return first + 0.25 + angle / (2 * math.pi)


class Gelu(Activation):
    """Exact gelu φ(z) = z Φ(z) / sqrt(E[gelu²]) (≈ sqrt(0.42522)); closed-form duals.

    The derivatives of the closed forms are derived by hand (in the variables a = A+1, c = C+1,
    s = ac − B², smooth everywhere, the diagonal included) and checked against forward-mode
    autodiff of the closed form in the tests.
    """

    name = "gelu"
    has_closed_form = True

    def raw(self, z: Tensor) -> Tensor:
        return z * 0.5 * (1 + torch.special.erf(z / math.sqrt(2.0)))

    def _raw_second_moment(self) -> float:
        one = torch.ones((), dtype=torch.float64)
        return float(_gelu_F(one, one, one))

    def dual_values(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        s2 = self._scale**2
        return _gelu_F(A, B, C) / s2, _gelu_G(A, B, C) / s2

    def dual_jets(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[DualJet, DualJet]:
        # Derivatives of the closed form (checked against autodiff in the tests), written with
        # a = A+1, c = C+1, s = ac - B² (> 0 everywhere, the diagonal included).
        # Price's theorem ties them: F_B = G, F_AB = G_A, F_BB = G_B, F_BC = G_C,
        # F_AC = G_B / 4, G_AC = G_BB / 4.
        # (divisions are few and shared: one reciprocal each of s, √s, a, c)
        inv = 1.0 / self._scale**2
        a, c = A + 1, C + 1
        ac = a * c
        s = ac - B * B
        rs = torch.sqrt(s)
        inv_s, inv_rs = 1 / s, 1 / rs
        inv_a, inv_c = 1 / a, 1 / c
        inv_ac = inv_a * inv_c
        k = inv / (2 * math.pi)
        r3 = k * inv_s * inv_rs    # k s^-3/2
        r5 = r3 * inv_s            # k s^-5/2
        r7 = r5 * inv_s            # k s^-7/2
        angle = torch.atan2(B, rs)
        F_v = inv * B / 4 + k * ((B * B + A * C * s) * inv_ac * inv_rs + B * angle)
        G_v = inv / 4 + k * angle + B * (ac + s * (a + c)) * r3 * inv_ac
        ss = s * s
        half_a2, half_c2 = 0.5 * inv_a * inv_a, 0.5 * inv_c * inv_c
        F_A = (2 * ss + a * ss - a * a * c - a * a * s - ac * s) * r3 * half_a2
        F_C = (2 * ss + c * ss - c * c * a - c * c * s - ac * s) * r3 * half_c2
        G_A = -B * (3 * a * ac + a * a * s + ac * s + a * ss + 2 * ss) * r5 * half_a2
        G_C = -B * (3 * c * ac + c * c * s + ac * s + c * ss + 2 * ss) * r5 * half_c2
        G_B = (3 * ac + (a + c) * s + ss - 2 * s) * r5
        G_AB = -(15 * ac * c + 3 * ac * s + 3 * c * c * s + c * ss - 12 * c * s - 2 * ss) * r7 / 2
        G_BC = -(15 * ac * a + 3 * ac * s + 3 * a * a * s + a * ss - 12 * a * s - 2 * ss) * r7 / 2
        G_BB = B * (15 * ac + 3 * (a + c) * s + ss - 6 * s) * r7
        F = DualJet(v=F_v, A=F_A, B=G_v, C=F_C, AB=G_A, AC=G_B / 4, BB=G_B, BC=G_C)
        G = DualJet(v=G_v, A=G_A, B=G_B, C=G_C, AB=G_AB, AC=G_BB / 4, BB=G_BB, BC=G_BC)
        return F, G


class Relu(Activation):
    """φ(z) = √2 max(z, 0); arc-cosine duals. Plain (00) kernels only: φ'' is a Dirac."""

    name = "relu"
    smooth = False

    def raw(self, z: Tensor) -> Tensor:
        return torch.clamp(z, min=0)

    def _raw_second_moment(self) -> float:
        return 0.5

    def dual_values(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        root = torch.sqrt(torch.clamp(A * C - B * B, min=0))
        theta = torch.atan2(root, B)
        return (root + (math.pi - theta) * B) / math.pi, (math.pi - theta) / math.pi

    def dual_jets(self, A: Tensor, B: Tensor, C: Tensor) -> tuple[DualJet, DualJet]:
        self.require_smooth()
        raise AssertionError("unreachable")


# ---- quadrature activations --------------------------------------------------------------


class QuadratureActivation(Activation):
    """Any smooth activation given as a torch-differentiable elementwise callable.

    Dual maps and all their derivatives come from Gauss–Hermite quadrature (Price's theorem).
    The derivatives φ' … φ^(4) come from nested forward-mode autodiff unless
    ``derivatives_fn(z, order)`` supplies the raw derivatives [raw, raw', …] analytically.
    Quadrature error falls geometrically with ``quadrature_points`` at a rate set by φ's
    complex singularities (entire functions such as sin converge fastest; tanh, with poles
    at ±iπ/2, needs ~256 nodes for 1e-13 at unit variance).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str | None = None,
                 quadrature_points: int = 96, smooth: bool = True,
                 derivatives_fn: Callable[[Tensor, int], list[Tensor]] | None = None) -> None:
        self._fn = fn
        self._derivatives_fn = derivatives_fn
        self.name = name or getattr(fn, "__name__", "custom")
        self.quadrature_points = int(quadrature_points)
        self.smooth = smooth
        super().__init__()
        if not math.isfinite(self._scale) or self._scale <= 0:
            raise ConfigError(f"activation {self.name!r} has E[φ(z)²] = {self._scale**2}: "
                             "cannot normalise it")

    def raw(self, z: Tensor) -> Tensor:
        return self._fn(z)

    def derivatives(self, z: Tensor, order: int) -> list[Tensor]:
        if self._derivatives_fn is None:
            return super().derivatives(z, order)
        return [d / self._scale for d in self._derivatives_fn(z, order)]


def _tanh_derivatives(z: Tensor, order: int) -> list[Tensor]:
    # t' = 1 - t², so t^(k+1) = -Σ_j C(k, j) t^(j) t^(k-j) for k ≥ 1.
    t = torch.tanh(z)
    out = [t, 1 - t * t]
    for k in range(1, order):
        out.append(-sum(math.comb(k, j) * out[j] * out[k - j] for j in range(k + 1)))
    return out[: order + 1]


def _softplus_derivatives(z: Tensor, order: int) -> list[Tensor]:
    # softplus' = σ (the logistic) and σ' = σ - σ²: Leibniz on σ² as for tanh.
    sig = torch.sigmoid(z)
    sigma = [sig, sig - sig * sig]
    for k in range(1, order - 1):
        sigma.append(sigma[k] - sum(math.comb(k, j) * sigma[j] * sigma[k - j]
                                    for j in range(k + 1)))
    return ([torch.nn.functional.softplus(z)] + sigma)[: order + 1]


def _sin_derivatives(z: Tensor, order: int) -> list[Tensor]:
    s, c = torch.sin(z), torch.cos(z)
    return [(s, c, -s, -c)[k % 4] for k in range(order + 1)]


_PRESETS: dict[str, Callable[[], Activation]] = {
    "erf": Erf,
    "gelu": Gelu,
    "relu": Relu,
    "tanh": lambda: QuadratureActivation(torch.tanh, "tanh", quadrature_points=256,
                                         derivatives_fn=_tanh_derivatives),
    "softplus": lambda: QuadratureActivation(torch.nn.functional.softplus, "softplus",
                                             quadrature_points=160,
                                             derivatives_fn=_softplus_derivatives),
    "sin": lambda: QuadratureActivation(torch.sin, "sin", derivatives_fn=_sin_derivatives),
}
_CACHE: dict[str, Activation] = {}


def available_activations() -> list[str]:
    """Names accepted by :func:`get_activation`."""
    return sorted(_PRESETS)


def get_activation(activation: str | Activation | Callable[[Tensor], Tensor]) -> Activation:
    """Resolve a name, an :class:`Activation` or a smooth torch callable to an Activation."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key not in _PRESETS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of "
                             f"{available_activations()} or pass a smooth torch callable")
        if key not in _CACHE:
            _CACHE[key] = _PRESETS[key]()
        return _CACHE[key]
    if callable(activation):
        return QuadratureActivation(activation)
    raise TypeError(f"activation must be a name, an Activation or a callable, "
                    f"got {type(activation).__name__}")


# ---- numerical machinery -----------------------------------------------------------------

_HERMITE_CACHE: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def _hermite_e(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to sum to 1."""
    key = (n, dtype, device)
    if key not in _HERMITE_CACHE:
        x, w = np.polynomial.hermite_e.hermegauss(n)
        w = w / w.sum()
        _HERMITE_CACHE[key] = (torch.as_tensor(x, dtype=dtype, device=device),
                               torch.as_tensor(w, dtype=dtype, device=device))
    return _HERMITE_CACHE[key]


def _quadrature_expectations(act: Activation, A: Tensor, B: Tensor, C: Tensor,
                             pairs: list[tuple[int, int]], max_order: int,
                             max_elements: int = 1 << 22) -> list[Tensor]:
    """E[φ^(p)(u) φ^(q)(v)] for each (p, q), (u, v) ~ N(0, [[A, B], [B, C]]), elementwise.

    u = √A z₁, v = (B/√A) z₁ + sqrt(C − B²/A) z₂ with z₁, z₂ on a tensor Gauss–Hermite grid;
    the representation is valid on the singular diagonal too (the second root is 0 there).
    """
    A, B, C = torch.broadcast_tensors(A, B, C)
    shape = A.shape
    A, B, C = A.reshape(-1), B.reshape(-1), C.reshape(-1)
    n = act.quadrature_points
    z, w = _hermite_e(n, A.dtype, A.device)
    chunk = max(1, max_elements // (n * n * (max_order + 1)))
    results: list[list[Tensor]] = [[] for _ in pairs]
    for start in range(0, A.numel(), chunk):
        a, b, c = A[start:start + chunk], B[start:start + chunk], C[start:start + chunk]
        sa = torch.sqrt(a)
        u = sa[:, None] * z  # (m, n)
        v = (b / sa)[:, None, None] * z[None, :, None] + \
            torch.sqrt(torch.clamp(c - b * b / a, min=0))[:, None, None] * z[None, None, :]
        du = act.derivatives(u, max_order)
        dv = act.derivatives(v, max_order)  # each (m, n, n)
        inner = {q: dv[q] @ w for q in {q for _, q in pairs}}  # (m, n)
        for i, (p, q) in enumerate(pairs):
            results[i].append((du[p] * inner[q]) @ w)
    return [torch.cat(r).reshape(shape) for r in results]
