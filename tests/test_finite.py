"""Finite-width networks: exact finite JNTK, Monte-Carlo Jacobian NNGP, and their limits.

Independent routes (docs/design.md §4): the finite JNTK is checked against plain autograd loops over
the full parameter gradients of (f, ∇ₓf), against derivatives of its own 00 entry (the block
identity at finite width), and -- as a Monte-Carlo mean over seeds -- against the analytic
``kernels.jntk``; the Monte-Carlo NNGP against ``kernels.jacobian_nngp``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.networks.finite import FiniteMLP, finite_jntk, mc_jacobian_nngp


def unit_rows(n: int, d0: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, d0), generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def direct_jntk(net: FiniteMLP, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """<∂θ F_α(x), ∂θ F_β(x')> / κ² with F = (f, ∇ₓf), by plain autograd loops."""
    params = list(net.weights)

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for point in x:
            point = point.clone().requires_grad_(True)
            f = net(point[None])[0]
            (grad_x,) = torch.autograd.grad(f, point, create_graph=True)
            for out in [f, *grad_x]:
                grads = torch.autograd.grad(out, params, retain_graph=True)
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows).reshape(x.shape[0], x.shape[1] + 1, -1)

    J1, J2 = jacobian(x1), jacobian(x2)
    return torch.einsum("iap,jbp->ijab", J1, J2) / net.kappa**2


@pytest.mark.parametrize("depth,activation", [(1, "erf"), (2, "gelu"), (3, "tanh")])
def test_finite_jntk_equals_direct_definition(depth: int, activation: str) -> None:
    x1, x2 = unit_rows(3, 3, seed=1), unit_rows(2, 3, seed=2)
    net = FiniteMLP(3, 6, depth, activation, kappa=0.3, seed=depth)
    expected = direct_jntk(net, x1, x2)
    got = finite_jntk(net, x1, x2)
    assert got.shape == (3, 2, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # chunked, symmetric and a subset of indices give the same numbers
    sym = finite_jntk(net, x1, chunk_size=2)
    torch.testing.assert_close(sym, direct_jntk(net, x1, x1), rtol=1e-10, atol=1e-12)
    uncached = finite_jntk(net, x1, x2, chunk_size=1, memory_budget=1)  # factors recomputed
    torch.testing.assert_close(uncached, expected, rtol=1e-10, atol=1e-12)
    sub = finite_jntk(net, x1, x2, indices=[0, 2], chunk_size=1)
    torch.testing.assert_close(sub, expected[:, :, [0, 2]][:, :, :, [0, 2]], rtol=1e-10,
                               atol=1e-12)


def test_jet_is_value_and_input_gradient() -> None:
    x = unit_rows(4, 3, seed=3)
    net = FiniteMLP(3, 16, 2, "gelu", kappa=0.1, seed=0)
    F = net.jet(x)
    xr = x.clone().requires_grad_(True)
    f = net(xr)
    (grad,) = torch.autograd.grad(f.sum(), xr)
    torch.testing.assert_close(F[:, 0], f.detach())
    torch.testing.assert_close(F[:, 1:], grad)


def test_derivative_identity_at_finite_width() -> None:
    """K_α0 = ∂K_00/∂x_α, K_0β = ∂K_00/∂x'_β, K_αβ = ∂²K_00/∂x_α∂x'_β for the finite kernel."""
    net = FiniteMLP(3, 8, 2, "erf", kappa=1.0, seed=5)
    params = {f"w{i}": w.detach() for i, w in enumerate(net.weights)}

    def f(p: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, ({"weights." + k[1:]: v for k, v in p.items()},),
                                          (x[None],))[0]

    def k00(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gx, gy = torch.func.grad(f)(params, x), torch.func.grad(f)(params, y)
        return sum((gx[k] * gy[k]).sum() for k in gx)

    x, y = unit_rows(2, 3, seed=7)
    blocks = finite_jntk(net, x[None], y[None])[0, 0]
    torch.testing.assert_close(blocks[0, 0], k00(x, y))
    torch.testing.assert_close(blocks[1:, 0], torch.func.grad(k00, argnums=0)(x, y))
    torch.testing.assert_close(blocks[0, 1:], torch.func.grad(k00, argnums=1)(x, y))
    cross = torch.func.jacfwd(torch.func.grad(k00, argnums=0), argnums=1)(x, y)
    torch.testing.assert_close(blocks[1:, 1:], cross)


def _z_scores(samples: torch.Tensor, target: np.ndarray) -> np.ndarray:
    mean = samples.mean(0).numpy()
    se = samples.std(0, unbiased=True).numpy() / np.sqrt(samples.shape[0])
    return np.abs(mean - target) / (se + 1e-6)


@pytest.mark.parametrize("activation", ["gelu", "erf"])
@pytest.mark.parametrize("depth", [1, 2])
def test_finite_jntk_mean_over_seeds_matches_analytic(depth: int, activation: str) -> None:
    x = unit_rows(3, 3, seed=11)
    seeds = 8
    samples = torch.stack([finite_jntk(FiniteMLP(3, 2048, depth, activation, kappa=0.1, seed=s), x)
                           for s in range(seeds)])
    theta = kernels.jntk(x.numpy(), depth=depth, activation=activation)
    z = _z_scores(samples, theta)
    assert z.max() < 4.5, f"finite JNTK mean is {z.max():.1f} standard errors from Θ"
    # the comparison has power: Θ of another depth is rejected by a wide margin
    wrong = kernels.jntk(x.numpy(), depth=depth + 1, activation=activation)
    assert _z_scores(samples, wrong).max() > 20


@pytest.mark.parametrize("activation,depth,width", [("erf", 1, 256), ("gelu", 2, 64)])
def test_monte_carlo_jacobian_nngp_matches_analytic(activation: str, depth: int,
                                                    width: int) -> None:
    x = unit_rows(3, 3, seed=13)
    mc = mc_jacobian_nngp(x, depth=depth, width=width, activation=activation,
                          n_networks=10_000, seed=depth)
    sigma = torch.as_tensor(kernels.jacobian_nngp(x.numpy(), depth=depth, activation=activation))
    z = (mc.mean - sigma).abs() / (mc.stderr + 1e-6)
    assert z.max() < 4.5, f"MC NNGP is {z.max():.1f} standard errors from Σ^(L)"
    wrong = torch.as_tensor(kernels.jacobian_nngp(x.numpy(), depth=depth + 1,
                                                  activation=activation))
    assert ((mc.mean - wrong).abs() / (mc.stderr + 1e-6)).max() > 10


def test_monte_carlo_stream_selects_indices() -> None:
    x = unit_rows(2, 3, seed=17)
    full = mc_jacobian_nngp(x, depth=1, width=8, activation="erf", n_networks=50, batch_size=7)
    sub = mc_jacobian_nngp(x, depth=1, width=8, activation="erf", n_networks=50, batch_size=7,
                           indices=[0, 3])
    torch.testing.assert_close(sub.mean, full.mean[:, :, [0, 3]][:, :, :, [0, 3]])
    assert full.n_networks == 50 and bool((full.stderr > 0).all())


def test_bad_input_is_named() -> None:
    net = FiniteMLP(3, 4, 1, "gelu", seed=0)
    with pytest.raises(ValueError, match="d0=3"):
        finite_jntk(net, unit_rows(2, 4))
    bad = unit_rows(3, 3)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        finite_jntk(net, bad)
    with pytest.raises(ValueError, match="indices"):
        finite_jntk(net, unit_rows(2, 3), indices=[0, 4])
    with pytest.raises(ValueError, match="not smooth"):
        FiniteMLP(3, 4, 1, "relu")
    with pytest.raises(ValueError, match="width"):
        FiniteMLP(3, 0, 1, "gelu")
