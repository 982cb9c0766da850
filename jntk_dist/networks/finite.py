"""Finite-width networks of the paper and their exact kernels.

The MLP of docs/design.md §1.1 (bias-free, N(0,1) weights, no 1/√d0 on the first layer, 1/√d on the
later ones, κ on the output, φ normalised -- the very :class:`~jntk_dist.kernels.activations.Activation`
objects the analytic kernels use):

    g1 = W1 x,   h_l = φ(g_l),   g_{l+1} = W_{l+1} h_l / √d,   f(x) = κ W_{L+1} h_L / √d.

The network is run as a *jet*: every layer carries the value stream h_l and the d0 tangent
streams ∂h_l/∂x_α, so one pass yields F(x) = (f(x), ∂f/∂x_1, …, ∂f/∂x_d0) -- index 0 the output,
α the input-Jacobian components, exactly as in the analytic blocks.

Finite JNTK (κ⁻²-scaled):  Θ_d(x, x')_{αβ} = <∂_θ F_α(x), ∂_θ F_β(x')> / κ².
Each ∂F_c/∂W_l is a sum of two outer products s_l (∂F_c/∂G_l[s]) ⊗ H_{l-1}[s] over the value
stream s = 0 and the tangent stream s = c (the only streams F_c depends on), so the inner product
of two of them is a contraction of d-vectors -- O(d) per pair and layer instead of the O(d²) of a
materialised parameter Jacobian. The sensitivities ∂F_c/∂G_l come from ``torch.func.vjp`` through
zero probes added to the pre-activations; points are processed in chunks so memory stays bounded
at any width.

Monte-Carlo Jacobian NNGP: E[F(x) F(x')ᵀ] / κ² over independent networks (F has mean zero), streamed
over batches of networks -- only the (n·p)² running sums are kept, so 10⁶ networks fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..kernels import Activation, get_activation
from ..kernels import validate_inputs
from ..progress import progress as progress_bar

__all__ = [
    "FiniteMLP",
    "MonteCarloKernel",
    "jet_forward",
    "finite_jntk",
    "mc_jacobian_nngp",
    "mc_distance",
]

Tensor = torch.Tensor


# ---- the network ------------------------------------------------------------------------


def _layer_scales(width: int, depth: int) -> list[float]:
    """Multipliers of W_1 … W_{L+1}: 1 on the first layer, 1/√d on the others (κ not included)."""
    return [1.0] + [1.0 / math.sqrt(width)] * depth


def _phi_and_derivative(act: Activation, z: Tensor) -> tuple[Tensor, Tensor]:
    """(φ(z), φ'(z)) by forward-mode AD of the activation's own φ (differentiable again)."""
    return torch.func.jvp(act.phi, (z,), (torch.ones_like(z),))


def jet_forward(weights: Sequence[Tensor], x: Tensor, activation: Activation | str,
                kappa: float = 1.0, probes: Sequence[Tensor] | None = None,
                with_tangents: bool = True) -> tuple[Tensor, list[Tensor]]:
    """Run the MLP on x (m, d0) carrying value and input-tangent streams.

    Weights may carry leading batch dimensions (many networks at once); outputs then do too.

    Returns ``F`` of shape (m, 1+d0) -- (f, ∂f/∂x_1, …) -- (m, 1) without tangents -- and the
    stream inputs ``H_{l-1}`` (m, S, d_in) of every layer l = 1 … L+1 (S = 1+d0 streams).
    ``probes[l]`` (m, S, d_out), if given, is added to the pre-activations of hidden layer l
    (zero probes whose vjp gives the sensitivities ∂F/∂G_l).
    """
    act = get_activation(activation)
    depth = len(weights) - 1
    width = weights[0].shape[-2]
    batch = weights[0].shape[:-2]
    scales = _layer_scales(width, depth)
    m, d0 = x.shape
    H = x[:, None, :]
    if with_tangents:
        eye = torch.eye(d0, dtype=x.dtype, device=x.device).expand(m, d0, d0)
        H = torch.cat((H, eye), dim=1)
    H = H.expand(batch + H.shape)
    S = H.shape[-2]
    inputs = []
    for layer in range(depth):
        inputs.append(H)
        W = weights[layer]
        G = scales[layer] * (H.reshape(batch + (m * S, -1)) @ W.transpose(-1, -2))
        G = G.reshape(batch + (m, S, W.shape[-2]))
        if probes is not None:
            G = G + probes[layer]
        h, dphi = _phi_and_derivative(act, G[..., 0, :])
        H = torch.cat((h[..., None, :], dphi[..., None, :] * G[..., 1:, :]), dim=-2)
    inputs.append(H)
    F = (H.reshape(batch + (m * S, -1)) @ weights[-1].transpose(-1, -2)).reshape(batch + (m, S))
    F = (kappa * scales[-1]) * F
    return F, inputs


class FiniteMLP(torch.nn.Module):
    """The paper's bias-free MLP R^{d0} → R at width ``width`` with ``depth`` hidden layers."""

    def __init__(self, d0: int, width: int, depth: int, activation: str | Activation = "gelu",
                 kappa: float = 1.0, *, seed: int | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, value in (("d0", d0), ("width", width), ("depth", depth)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not (math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa (output scale κ) must be a positive number, got {kappa!r}")
        self.activation = get_activation(activation)
        self.activation.require_smooth()
        self.d0, self.width, self.depth, self.kappa = int(d0), int(width), int(depth), float(kappa)
        if generator is None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(0 if seed is None else int(seed))
        shapes = [(width, d0)] + [(width, width)] * (depth - 1) + [(1, width)]
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype).to(device))
            for s in shapes)

    @property
    def scales(self) -> list[float]:
        return _layer_scales(self.width, self.depth)

    def _check(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=self.weights[0].dtype, device=self.weights[0].device)
        validate_inputs(x, "x", d0=self.d0)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """f(x) for the rows of x (n, d0) → (n,)."""
        F, _ = jet_forward(list(self.weights), self._check(x), self.activation, self.kappa,
                           with_tangents=False)
        return F[:, 0]

    def jet(self, x: Tensor) -> Tensor:
        """(f(x), ∇ₓf(x)) for the rows of x → (n, 1+d0); index 0 is the output."""
        F, _ = jet_forward(list(self.weights), self._check(x), self.activation, self.kappa)
        return F

    def extra_repr(self) -> str:
        return (f"d0={self.d0}, width={self.width}, depth={self.depth}, "
                f"activation={self.activation.name!r}, kappa={self.kappa}")


# ---- exact finite JNTK --------------------------------------------------------------------


def _check_indices(indices: Sequence[int] | None, d0: int) -> list[int]:
    if indices is None:
        return list(range(d0 + 1))
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i <= d0]
    if bad or not out or len(set(out)) != len(out):
        raise ValueError(f"indices must be distinct integers in 0..d0={d0} (0 = output, "
                         f"α = ∂f/∂x_α), got {list(indices)}")
    return out


def _kernel_factors(weights: Sequence[Tensor], x: Tensor, act: Activation, kappa: float,
                    indices: list[int]) -> list[tuple[Tensor, Tensor]]:
    """Per layer, (U, V) of shape (m, C, 2, d_out) / (m, C, 2, d_in) with
    ∂F_c(x_i)/∂W_l = Σ_r U[i,c,r] ⊗ V[i,c,r] / κ (the output layer has U = 1, rank 1)."""
    depth = len(weights) - 1
    scales = _layer_scales(weights[0].shape[0], depth)
    m = x.shape[0]
    S = x.shape[1] + 1
    probes = [torch.zeros((m, S, W.shape[0]), dtype=x.dtype, device=x.device)
              for W in weights[:-1]]

    def forward(*p: Tensor) -> tuple[Tensor, list[Tensor]]:
        F, inputs = jet_forward(weights, x, act, 1.0, probes=p)
        return F, [t.detach() for t in inputs]

    F, vjp_fn, inputs = torch.func.vjp(forward, *probes, has_aux=True)
    idx = torch.as_tensor(indices, device=x.device)
    onehot = torch.zeros((len(indices), m, S), dtype=x.dtype, device=x.device)
    onehot[torch.arange(len(indices)), :, idx] = 1.0
    sens = torch.func.vmap(vjp_fn)(onehot)  # per layer (C, m, S, d_out)
    # F_c depends on the value stream 0 and (for c ≥ 1) its own tangent stream c only.
    second = idx
    is_output = (idx == 0).to(x.dtype)[None, :, None]
    factors = []
    for layer in range(depth):
        s = sens[layer].transpose(0, 1)  # (m, C, S, d_out)
        ar = torch.arange(len(indices), device=x.device)
        U = torch.stack((s[:, ar, 0], s[:, ar, second] * (1 - is_output)), dim=2)
        H = inputs[layer]  # (m, S, d_in)
        V = scales[layer] * torch.stack((H[:, None, 0].expand(-1, len(indices), -1),
                                         H[:, second]), dim=2)
        factors.append((U, V))
    H = inputs[-1]
    V_out = scales[-1] * H[:, idx][:, :, None, :]  # (m, C, 1, d)
    factors.append((torch.ones(V_out.shape[:-1] + (1,), dtype=x.dtype, device=x.device), V_out))
    return factors


def _contract(fa: list[tuple[Tensor, Tensor]], fb: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Σ_l <U_a V_aᵀ, U_b V_bᵀ> for all pairs → (m1, m2, C, C)."""
    out = None
    for (Ua, Va), (Ub, Vb) in zip(fa, fb):
        m1, C, r = Ua.shape[:3]
        m2 = Ub.shape[0]
        uu = Ua.reshape(m1 * C * r, -1) @ Ub.reshape(m2 * C * r, -1).T
        vv = Va.reshape(m1 * C * r, -1) @ Vb.reshape(m2 * C * r, -1).T
        term = (uu * vv).reshape(m1, C, r, m2, C, r).sum(dim=(2, 5)).permute(0, 2, 1, 3)
        out = term if out is None else out + term
    return out


def _factor_bytes_per_point(weights: Sequence[Tensor], n_indices: int,
                            d0: int) -> tuple[int, int]:
    """(bytes of the factors kept per point, bytes of the jet pass's transient working set)."""
    item = weights[0].element_size()
    width, depth = weights[0].shape[0], len(weights) - 1
    kept = n_indices * 2 * (d0 + width * (2 * depth - 1) + width) * item
    working = (d0 + 1) * width * depth * (n_indices + 6) * item  # streams × width × layers
    return kept, working


def finite_jntk(net: FiniteMLP, x1: Any, x2: Any | None = None, *,
                indices: Sequence[int] | None = None, chunk_size: int | None = None,
                memory_budget: int = 1 << 30, progress: bool = False) -> Tensor:
    """Exact finite JNTK blocks Θ_d(x1_i, x2_j) / κ² of ``net``, shape (n1, n2, C, C).

    ``indices`` selects the rows/columns of each block (0 = output, α = ∂f/∂x_α; default all
    d0+1, matching :func:`jntk_dist.kernels.jntk`). Points are processed ``chunk_size`` at a time
    (default: as many as ``memory_budget`` bytes allow); numpy in → numpy out.
    """
    is_numpy = not isinstance(x1, torch.Tensor)
    t1 = net._check(x1)
    t2 = t1 if x2 is None else net._check(x2)
    idx = _check_indices(indices, net.d0)
    weights = [w.detach() for w in net.weights]
    kept, working = _factor_bytes_per_point(weights, len(idx), net.d0)
    if chunk_size is None:
        chunk_size = max(1, min(t1.shape[0] + t2.shape[0],
                                memory_budget // (3 * (kept + working))))
    chunks1 = [t1[i:i + chunk_size] for i in range(0, t1.shape[0], chunk_size)]
    symmetric = x2 is None
    chunks2 = chunks1 if symmetric else [t2[i:i + chunk_size]
                                         for i in range(0, t2.shape[0], chunk_size)]
    # the column chunks' factors are kept (not recomputed for every row chunk) when they fit
    cache2 = t2.shape[0] * kept <= memory_budget
    factors2: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def factors(chunk: Tensor) -> list[tuple[Tensor, Tensor]]:
        return _kernel_factors(weights, chunk, net.activation, 1.0, idx)

    out = torch.empty((t1.shape[0], t2.shape[0], len(idx), len(idx)), dtype=t1.dtype,
                      device=t1.device)
    n_pairs = (len(chunks1) * (len(chunks1) + 1) // 2 if symmetric
               else len(chunks1) * len(chunks2))
    with torch.no_grad(), progress_bar(n_pairs, "finite JNTK", unit="pair",
                                       enabled=progress) as bar:
        for i, c1 in enumerate(chunks1):
            f1 = factors2[i] if symmetric and i in factors2 else factors(c1)
            rows = slice(i * chunk_size, i * chunk_size + c1.shape[0])
            # one point set: the chunks right of the diagonal; Θ(x', x) = Θ(x, x')ᵀ gives the rest
            for j in range(i if symmetric else 0, len(chunks2)):
                c2 = chunks2[j]
                if symmetric and i == j:
                    f2 = f1
                elif j in factors2:
                    f2 = factors2[j]
                else:
                    f2 = factors(c2)
                    if cache2:
                        factors2[j] = f2
                cols = slice(j * chunk_size, j * chunk_size + c2.shape[0])
                out[rows, cols] = _contract(f1, f2)
                if symmetric and j != i:
                    out[cols, rows] = out[rows, cols].permute(1, 0, 3, 2)
                bar.update()
            if symmetric:
                factors2.pop(i, None)  # chunk i is not needed again
    return out.cpu().numpy() if is_numpy else out


# ---- Monte-Carlo Jacobian NNGP -------------------------------------------------------------


@dataclass(frozen=True)
class MonteCarloKernel:
    """Monte-Carlo estimate of Σ^(L) blocks: mean and its standard error, (n, n, C, C) each."""

    mean: Tensor
    stderr: Tensor
    n_networks: int


def mc_jacobian_nngp(x: Any, *, depth: int, width: int, activation: str | Activation = "gelu",
                     n_networks: int = 10_000, batch_size: int | None = None, seed: int = 0,
                     indices: Sequence[int] | None = None, dtype: torch.dtype = torch.float64,
                     memory_budget: int = 1 << 28, progress: bool = False) -> MonteCarloKernel:
    """Σ^(L)(x_i, x_j) ≈ mean over independent networks of F(x_i) F(x_j)ᵀ / κ².

    Networks are drawn ``batch_size`` at a time from one seeded generator and only the running
    sums Σ F Fᵀ and Σ (F Fᵀ)² are kept, so memory is O((n·C)² + batch·width·n·d0) whatever
    ``n_networks`` is. κ cancels exactly, so the networks are drawn with κ = 1.
    """
    act = get_activation(activation)
    act.require_smooth()
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=dtype)
    device = t.device
    validate_inputs(t, "x")
    n, d0 = t.shape
    idx = _check_indices(indices, d0)
    if n_networks < 2:
        raise ValueError(f"n_networks must be ≥ 2 to estimate a standard error, got {n_networks}")
    if batch_size is None:
        per_net = (width * (d0 + width * (depth - 1) + 1) + 4 * n * (d0 + 1) * width * depth)
        batch_size = int(max(1, min(n_networks, memory_budget // (per_net * t.element_size()))))
    # the draws are made where the networks run (a CPU generator on CPU, as before)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    shapes = [(width, d0)] + [(width, width)] * (depth - 1) + [(1, width)]
    rows = n * len(idx)
    total = torch.zeros((rows, rows), dtype=dtype, device=device)
    total_sq = torch.zeros((rows, rows), dtype=dtype, device=device)
    done = 0
    with torch.no_grad(), progress_bar(n_networks, "MC NNGP", unit="net",
                                       enabled=progress) as bar:
        while done < n_networks:
            b = min(batch_size, n_networks - done)
            # float32 draws are 3x faster; the arithmetic is done in ``dtype``
            ws = [torch.randn((b,) + s, generator=gen, device=device).to(dtype=dtype)
                  for s in shapes]
            F = jet_forward(ws, t, act, 1.0)[0][..., idx].reshape(b, rows)
            total += F.T @ F
            F2 = F * F
            total_sq += F2.T @ F2
            done += b
            bar.update(b)
    mean = total / n_networks
    var = (total_sq / n_networks - mean * mean) * n_networks / (n_networks - 1)
    stderr = torch.sqrt(var.clamp(min=0) / n_networks)

    def blocks(a: Tensor) -> Tensor:
        return a.reshape(n, len(idx), n, len(idx)).permute(0, 2, 1, 3).contiguous()

    return MonteCarloKernel(mean=blocks(mean), stderr=blocks(stderr), n_networks=n_networks)


def mc_distance(mc: MonteCarloKernel, reference: Tensor, components: Sequence[tuple[int, int]],
                indices: Sequence[int], draws: int = 16) -> tuple[list[float], list[float]]:
    """Δ = max_{i,j} |Σ̂_{αβ} − Σ_{αβ}| per component (α, β), and its Monte-Carlo floor: the value
    Δ would have from Monte-Carlo error alone, E max_{i,j} |se_{ij} Z_{ij}| with independent
    standard normal Z (the mean over ``draws`` draws of a fixed generator, se the estimate's
    standard errors).

    ``mc`` and ``reference`` hold the blocks of ``indices`` only (shape (n, n, C, C))."""
    pos = {c: k for k, c in enumerate(indices)}
    diff = (mc.mean - reference.to(mc.mean)).abs()
    gen = torch.Generator(device=mc.stderr.device).manual_seed(0)
    distance, floor = [], []
    for a, b in components:
        se = mc.stderr[:, :, pos[a], pos[b]]
        z = torch.randn((draws,) + tuple(se.shape), generator=gen, device=se.device,
                        dtype=se.dtype)
        distance.append(float(diff[:, :, pos[a], pos[b]].max()))
        floor.append(float((se * z).abs().amax(dim=(1, 2)).mean()))
    return distance, floor
