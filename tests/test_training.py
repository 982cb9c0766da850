"""Robust training (eq. 1): loss, the finite-JNTK linearisation of one GD step, recording, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.networks.finite import FiniteMLP, finite_jntk
from jntk_dist.networks.training import RobustTrainer, max_norm_distance, robust_loss


def data(n: int = 6, d0: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, d0), generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    return x, torch.sign(x[:, 0] + 0.3 * x[:, 1])


def test_loss_is_eq1_with_autograd_input_gradient() -> None:
    x, y = data()
    net = FiniteMLP(3, 12, 2, "gelu", kappa=0.5, seed=1)
    xr = x.clone().requires_grad_(True)
    f = net(xr)
    (grad,) = torch.autograd.grad(f.sum(), xr)
    lam = 0.3
    expected = ((f.detach() - y) ** 2 + lam * (grad**2).sum(1)).sum() / (2 * len(y))
    torch.testing.assert_close(robust_loss(net, x, y, lam).detach(), expected)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_one_gd_step_follows_finite_jntk_linearisation(lam: float) -> None:
    """ΔF_c(x) = −(η κ²/N) Σ_{i,β} Θ_d(x, x_i)_{cβ} r_{iβ} + O(η²), r = (f − y, λ∇ₓf)."""
    x, y = data(n=5, seed=2)
    probe, _ = data(n=3, seed=3)
    kappa, width = 0.7, 32
    theta = finite_jntk(FiniteMLP(3, width, 2, "erf", kappa=kappa, seed=4), probe, x)
    errors = []
    for lr in (0.02, 0.01):
        net = FiniteMLP(3, width, 2, "erf", kappa=kappa, seed=4)
        before = net.jet(probe).detach()
        F = net.jet(x).detach()
        residual = torch.cat(((F[:, 0] - y)[:, None], lam * F[:, 1:]), dim=1)  # (N, 1+d0)
        predicted = -lr * kappa**2 / len(y) * torch.einsum("pica,ia->pc", theta, residual)
        RobustTrainer(net, x, y, lam=lam, lr=lr).gd_step()
        change = net.jet(probe).detach() - before
        errors.append(float((change - predicted).abs().max()))
        assert errors[-1] < 0.05 * float(predicted.abs().max())
    ratio = errors[0] / errors[1]
    assert 3.0 < ratio < 5.0, f"halving lr shrank the linearisation error by {ratio:.2f}, not ~4"


def test_gradient_flow_substeps_equal_small_steps() -> None:
    x, y = data(seed=5)
    a = FiniteMLP(3, 8, 1, "gelu", kappa=0.4, seed=6)
    b = FiniteMLP(3, 8, 1, "gelu", kappa=0.4, seed=6)
    RobustTrainer(a, x, y, lam=0.1, lr=0.5, substeps=4).gd_step()
    tb = RobustTrainer(b, x, y, lam=0.1, lr=0.125)
    for _ in range(4):
        tb.gd_step()
    for wa, wb in zip(a.weights, b.weights):
        torch.testing.assert_close(wa, wb)


def test_records_distances_and_resumes_from_state() -> None:
    x, y = data(n=8, seed=7)
    xt, yt = data(n=4, seed=8)
    steps = [0, 1, 2, 4, 8]
    comps = [(0, 0), (2, 2), (0, 2), (1, 2)]

    def trainer() -> RobustTrainer:
        net = FiniteMLP(3, 64, 2, "gelu", kappa=0.1, seed=9)
        return RobustTrainer(net, x, y, lam=0.01, lr=1.0, x_test=xt, y_test=yt, components=comps)

    full = trainer()
    h = full.run(steps)
    assert h.step == steps
    assert h.drift[0] == [0.0] * 4
    # step-0 distance recomputed independently from the analytic kernel
    fresh = FiniteMLP(3, 64, 2, "gelu", kappa=0.1, seed=9)
    theta = kernels.jntk(x, depth=2, activation="gelu")
    direct = (finite_jntk(fresh, x) - theta).abs()
    np.testing.assert_allclose(h.distance[0], [float(direct[:, :, a, b].max()) for a, b in comps],
                               rtol=1e-12)
    assert h.loss[-1] < h.loss[0]
    assert all(0 <= a <= 1 for a in h.train_accuracy + h.test_accuracy)
    assert max(h.drift[-1]) > 0

    first = trainer()
    first.run(steps[:3])
    state = first.state_dict()
    resumed = trainer()
    resumed.load_state_dict(state)
    assert resumed.step == 2
    h2 = resumed.run(steps)
    np.testing.assert_allclose(h2.distance, h.distance, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(h2.loss, h.loss, rtol=1e-10)


def test_kernel_drift_shrinks_with_width() -> None:
    """The lazy regime: after the same training, a wider net's kernel moved less."""
    x, y = data(n=8, seed=10)
    drift = {}
    for width in (16, 512):
        net = FiniteMLP(3, width, 1, "gelu", kappa=1.0, seed=11)
        h = RobustTrainer(net, x, y, lam=0.1, lr=0.5, components=[(0, 0), (1, 1)]).run([0, 16])
        drift[width] = max(h.drift[-1])
    assert drift[512] < drift[16] / 2.5, drift


def test_bad_arguments_are_named() -> None:
    x, y = data()
    net = FiniteMLP(3, 4, 1, "gelu", seed=0)
    with pytest.raises(ValueError, match="lam"):
        RobustTrainer(net, x, y, lam=-1, lr=1)
    with pytest.raises(ValueError, match="learning rate"):
        RobustTrainer(net, x, y, lam=0.1, lr=0)
    with pytest.raises(ValueError, match="labels"):
        RobustTrainer(net, x, y[:3], lam=0.1, lr=1)
    with pytest.raises(ValueError, match="components"):
        RobustTrainer(net, x, y, lam=0.1, lr=1, components=[(0, 4)])
    with pytest.raises(ValueError, match="d0=3"):
        RobustTrainer(net, x[:, :2], y, lam=0.1, lr=1)


def test_max_norm_distance_picks_components() -> None:
    a = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    b = torch.zeros_like(a)
    b[1, 0, 0, 1] = -3.0
    b[0, 1, 1, 1] = 2.0
    np.testing.assert_allclose(max_norm_distance(a, b, [(0, 2), (2, 2), (0, 0)], [0, 2]),
                               [3.0, 2.0, 0.0])
