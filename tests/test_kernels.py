"""Analytic kernels against independent routes (docs/design.md §4).

* blocks vs. autodiff (torch.func) of the scalar kernel k(x, x'), itself computed by a separate
  plain recursion over (Σ(x,x), Σ(x,x'), Σ(x',x')) -- no fields, no chain rule;
* hand-written dual derivatives vs. forward-mode autodiff of the closed forms;
* closed forms vs. 2-D Gauss–Hermite quadrature of the same φ (diagonal included);
* ReLU vs. Arora et al.'s arc-cosine recursion written out in numpy;
* symmetry, positive semi-definiteness, Θ_λ = ΛΘΛ, and errors on bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.kernels.compile import block_side
from jntk_dist.kernels.activations import (
    Activation,
    DualJet,
    QuadratureActivation,
    _gelu_F,
    _gelu_G,
    get_activation,
)

torch.set_default_dtype(torch.float64)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


# ---- the independent reference: autodiff of the scalar kernel ------------------------------


def variance_map(act: Activation, A: torch.Tensor) -> torch.Tensor:
    """Σ^(l)(x, x) = E[φ(√A z)²]: the closed form where there is one, else 1-D Gauss–Hermite
    (differentiable in A, unlike the 2-D quadrature at its singular point A = B = C)."""
    if not isinstance(act, QuadratureActivation):
        return act.dual_values(A, A, A)[0]
    z, w = np.polynomial.hermite_e.hermegauss(act.quadrature_points)
    z, w = torch.as_tensor(z), torch.as_tensor(w / w.sum())
    return (w * act.phi(torch.sqrt(A) * z) ** 2).sum()


def scalar_kernel(x: torch.Tensor, xp: torch.Tensor, depth: int, act: Activation, kind: str):
    """k(x, x') by the plain recursion on (A, B, C); differentiable in x and x'."""
    A, B, C = x @ x, x @ xp, xp @ xp
    theta = B
    for _ in range(depth):
        F, G = act.dual_values(A, B, C)
        theta = F + theta * G
        A, B, C = variance_map(act, A), F, variance_map(act, C)
    return theta if kind == "jntk" else B


def autodiff_blocks(x1, x2, depth, act, kind):
    """All (n1, n2) blocks: value, gradients and mixed Hessian of k by torch.func."""
    f = lambda u, v: scalar_kernel(u, v, depth, act, kind)  # noqa: E731

    def pairwise(fn):
        return torch.func.vmap(torch.func.vmap(fn, (None, 0)), (0, None))(x1, x2)

    n1, n2, d = x1.shape[0], x2.shape[0], x1.shape[1]
    blocks = torch.empty(n1, n2, d + 1, d + 1)
    blocks[:, :, 0, 0] = pairwise(f)
    blocks[:, :, 1:, 0] = pairwise(torch.func.grad(f, 0))
    blocks[:, :, 0, 1:] = pairwise(torch.func.grad(f, 1))
    blocks[:, :, 1:, 1:] = pairwise(torch.func.jacfwd(torch.func.grad(f, 0), 1))
    return blocks


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("activation", ["erf", "gelu"])
@pytest.mark.parametrize("kind", ["jntk", "nngp"])
@pytest.mark.parametrize("depth", [1, 2, 5, 12])
def test_blocks_match_autodiff_of_scalar_kernel(activation, kind, depth):
    x1 = unit_rows(3, 4, seed=depth)
    x2 = torch.cat([x1[:1], unit_rows(2, 4, seed=100 + depth)])  # first pair is diagonal
    fn = kernels.jntk if kind == "jntk" else kernels.jacobian_nngp
    blocks = fn(x1, x2, depth=depth, activation=activation)
    ref = autodiff_blocks(x1, x2, depth, get_activation(activation), kind)
    assert max_rel_err(blocks, ref) < 1e-10


@pytest.mark.parametrize("name, depth", [("sin", 1), ("sin", 6), ("softplus", 3), ("tanh", 2)])
def test_quadrature_activation_matches_autodiff_off_diagonal(name, depth):
    """These go through Gauss–Hermite + Price's theorem; the reference differentiates the
    quadrature of E[φφ] through its sqrt parametrisation, valid away from x = x'."""
    act = get_activation(name)
    x1, x2 = unit_rows(2, 3, seed=7), unit_rows(1, 3, seed=8)
    blocks = kernels.jntk(x1, x2, depth=depth, activation=act)
    assert max_rel_err(blocks, autodiff_blocks(x1, x2, depth, act, "jntk")) < 1e-10


def erf_derivatives(z, order):
    g = 2 / math.sqrt(math.pi) * torch.exp(-z * z)
    return [torch.special.erf(z), g, -2 * z * g, (4 * z * z - 2) * g,
            (12 * z - 8 * z**3) * g][: order + 1]


def gelu_derivatives(z, order):
    pdf = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.special.erf(z / math.sqrt(2)))
    return [z * cdf, cdf + z * pdf, (2 - z * z) * pdf, (z**3 - 4 * z) * pdf,
            (-(z**4) + 7 * z * z - 4) * pdf][: order + 1]


DERIVATIVES = {"erf": erf_derivatives, "gelu": gelu_derivatives}


@pytest.mark.parametrize("name", ["erf", "gelu"])
def test_derivative_lists_match_autograd(name):
    z = torch.linspace(-4, 4, 33)
    closed = get_activation(name)
    by_hand = DERIVATIVES[name](z, 4)
    by_ad = type(closed).__mro__[1].derivatives(closed, z, 4)  # Activation's generic route
    for k in range(5):
        torch.testing.assert_close(by_hand[k] / closed.scale, by_ad[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["erf", "gelu"])
@pytest.mark.parametrize("kind", ["jntk", "nngp"])
def test_quadrature_route_matches_closed_form_on_and_off_diagonal(name, kind):
    """The same φ through the generic quadrature path: every block, the diagonal included."""
    closed = get_activation(name)
    quad = QuadratureActivation(closed.raw, name=f"{name}-quadrature",
                                derivatives_fn=DERIVATIVES[name])
    assert quad.scale == pytest.approx(closed.scale, rel=1e-13)
    x = unit_rows(3, 3, seed=3)
    fn = kernels.jntk if kind == "jntk" else kernels.jacobian_nngp
    for depth in (1, 4):
        a = fn(x, depth=depth, activation=closed)
        b = fn(x, depth=depth, activation=quad)
        assert max_rel_err(b, a) < 1e-10
    # plain 00 kernels too
    assert max_rel_err(kernels.ntk(x, depth=3, activation=quad),
                       kernels.ntk(x, depth=3, activation=closed)) < 1e-12


def forward_ad_jet(fn, A, B, C, scale):
    """Value and (A, B, C)-derivatives of an elementwise closed form by nested forward AD."""
    A, B, C = (t.contiguous() for t in torch.broadcast_tensors(A, B, C))
    one, zero = torch.ones_like(A), torch.zeros_like(A)
    unit = {"A": (one, zero, zero), "B": (zero, one, zero), "C": (zero, zero, one)}

    def first(d):
        return lambda a, b, c: torch.func.jvp(fn, (a, b, c), unit[d])[1]

    def second(d1, d2):
        return torch.func.jvp(first(d1), (A, B, C), unit[d2])[1]

    jet = DualJet(v=fn(A, B, C), A=first("A")(A, B, C), B=first("B")(A, B, C),
                  C=first("C")(A, B, C), AB=second("A", "B"), AC=second("A", "C"),
                  BB=second("B", "B"), BC=second("B", "C"))
    return DualJet(*(t * scale for t in jet))


def covariance_grid(n: int = 6):
    g = torch.Generator().manual_seed(11)
    A = torch.rand(n, 1, generator=g) * 2 + 0.2
    C = torch.rand(1, n, generator=g) * 2 + 0.2
    B = (torch.rand(n, n, generator=g) * 2 - 1) * torch.sqrt(A * C)
    return [(A, B, C), (A, A, A)]  # generic, and the singular diagonal A = B = C


def test_gelu_dual_derivatives_match_forward_autodiff():
    act = get_activation("gelu")
    s2 = act.scale**2
    for A, B, C in covariance_grid():
        F, G = act.dual_jets(A, B, C)
        F_ref = forward_ad_jet(_gelu_F, A, B, C, 1 / s2)
        G_ref = forward_ad_jet(_gelu_G, A, B, C, 1 / s2)
        for got, ref in zip(list(F) + list(G), list(F_ref) + list(G_ref)):
            assert max_rel_err(got, ref) < 1e-12


def test_erf_dual_derivatives_match_forward_autodiff():
    act = get_activation("erf")
    c = 2 / (math.pi * act.scale**2)
    F_fn = lambda A, B, C: c * torch.asin(2 * B / torch.sqrt((1 + 2 * A) * (1 + 2 * C)))  # noqa
    G_fn = lambda A, B, C: 2 * c / torch.sqrt((1 + 2 * A) * (1 + 2 * C) - 4 * B * B)  # noqa
    for A, B, C in covariance_grid():
        F, G = act.dual_jets(A, B, C)
        for got, ref in zip(list(F) + list(G),
                            list(forward_ad_jet(F_fn, A, B, C, 1.0))
                            + list(forward_ad_jet(G_fn, A, B, C, 1.0))):
            assert max_rel_err(got, ref) < 1e-12


@pytest.mark.parametrize("name", ["erf", "gelu", "tanh", "softplus", "sin"])
def test_activation_normalised(name):
    act = get_activation(name)
    z, w = np.polynomial.hermite_e.hermegauss(200)
    second_moment = float((w / w.sum() * act.phi(torch.as_tensor(z)).numpy() ** 2).sum())
    assert second_moment == pytest.approx(1.0, abs=1e-12)
    F, _ = act.dual_values(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
    assert float(F) == pytest.approx(1.0, abs=1e-10)


def test_documented_normalisers():
    assert get_activation("erf").scale ** 2 == pytest.approx(2 / math.pi * math.asin(2 / 3))
    assert get_activation("gelu").scale ** 2 == pytest.approx(0.42522, abs=5e-6)


# ---- ReLU against Arora et al. ---------------------------------------------------------------


def arora_relu_ntk(x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Arora et al. (2019) NTK recursion for σ = √2·relu (c_σ = 2), no biases."""
    sigma = x @ x.T
    theta = sigma.copy()
    for _ in range(depth):
        diag = np.sqrt(np.diag(sigma))
        cos = np.clip(sigma / np.outer(diag, diag), -1.0, 1.0)
        angle = np.arccos(cos)
        np.fill_diagonal(angle, 0.0)  # exact on the diagonal (arccos near 1 loses √eps)
        new_sigma = np.outer(diag, diag) * (np.sin(angle) + (np.pi - angle) * cos) / np.pi
        sigma_dot = (np.pi - angle) / np.pi
        theta = new_sigma + theta * sigma_dot
        sigma = new_sigma
    return sigma, theta


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_relu_plain_kernels_match_arora(depth):
    x = unit_rows(6, 5, seed=depth).numpy() * np.linspace(0.5, 2.0, 6)[:, None]
    sigma_ref, theta_ref = arora_relu_ntk(x, depth)
    np.testing.assert_allclose(kernels.nngp(x, depth=depth, activation="relu"), sigma_ref,
                               rtol=1e-12, atol=1e-12)
    theta = kernels.ntk(x, depth=depth, activation="relu")
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-12, atol=1e-12)
    # Σ̇(x, x) = 1 for normalised ReLU, so Θ^(L)(x, x) = (L + 1)|x|² exactly.
    np.testing.assert_allclose(np.diag(theta), (depth + 1) * (x * x).sum(1), rtol=1e-14)


def test_relu_refused_for_jacobian_kernels():
    x = unit_rows(3, 2, seed=0)
    with pytest.raises(ValueError, match="not smooth"):
        kernels.jntk(x, depth=2, activation="relu")
    with pytest.raises(ValueError, match="not smooth"):
        kernels.fields(x, depth=2, activation="relu", kind="nngp")


# ---- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["erf", "gelu"])
def test_00_entry_is_plain_kernel(activation):
    x = unit_rows(5, 3, seed=1)
    blocks = kernels.jntk(x, depth=4, activation=activation)
    torch.testing.assert_close(blocks[:, :, 0, 0], kernels.ntk(x, depth=4, activation=activation),
                               rtol=1e-13, atol=0)
    blocks = kernels.jacobian_nngp(x, depth=4, activation=activation)
    torch.testing.assert_close(blocks[:, :, 0, 0], kernels.nngp(x, depth=4, activation=activation),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("activation", ["erf", "gelu"])
def test_symmetry_and_psd(activation):
    x1, x2 = unit_rows(7, 4, seed=21), unit_rows(5, 4, seed=22)
    k12 = kernels.jntk(x1, x2, depth=3, activation=activation)
    k21 = kernels.jntk(x2, x1, depth=3, activation=activation)
    torch.testing.assert_close(k21, k12.permute(1, 0, 3, 2), rtol=1e-13, atol=1e-15)
    for kind in ("jntk", "nngp"):
        G = kernels.gram(x1, depth=3, activation=activation, kind=kind)
        torch.testing.assert_close(G, G.T, rtol=0, atol=1e-14)
        eig = torch.linalg.eigvalsh(G)
        assert eig.min() > -1e-12 * eig.max()


def test_fields_swap_rule():
    """Fields of (x2, x1) are the transpose with a↔c swapped (κ(c, b, a))."""
    x1, x2 = unit_rows(4, 3, seed=5), unit_rows(3, 3, seed=6)
    f12 = kernels.fields(x1, x2, depth=3, activation="gelu")
    f21 = kernels.fields(x2, x1, depth=3, activation="gelu")
    swap = {"k_a": "k_c", "k_c": "k_a", "k_ab": "k_bc", "k_bc": "k_ab"}
    for name in kernels.FIELD_NAMES:
        torch.testing.assert_close(getattr(f21, name), getattr(f12, swap.get(name, name)).T,
                                   rtol=1e-13, atol=1e-15)


def test_theta_lambda_is_lambda_theta_lambda():
    x = unit_rows(4, 3, seed=9)
    lam = 0.01
    theta = kernels.gram(x, depth=2, activation="erf")
    scaled = kernels.gram(x, depth=2, activation="erf", lam=lam)
    Lam = torch.diag(torch.tensor([1.0] + [math.sqrt(lam)] * 3).repeat(4))
    torch.testing.assert_close(scaled, Lam @ theta @ Lam, rtol=1e-14, atol=1e-16)
    with pytest.raises(ValueError, match="lam"):
        kernels.jntk(x, depth=2, lam=-1.0)


def test_to_gram_is_point_major():
    x = unit_rows(3, 2, seed=2)
    blocks = kernels.jntk(x, depth=1, activation="erf")
    G = kernels.to_gram(blocks)
    p = 3
    for i in range(3):
        for j in range(3):
            for a in range(p):
                for b in range(p):
                    assert G[i * p + a, j * p + b] == blocks[i, j, a, b]


def test_numpy_in_numpy_out_and_dtypes():
    x = unit_rows(3, 2, seed=4).numpy()
    out = kernels.jntk(x, depth=2, activation="gelu")
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (3, 3, 3, 3)
    out32 = kernels.jntk(x.astype(np.float32), depth=2, activation="gelu", dtype=torch.float32)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out, rtol=1e-4, atol=1e-5)
    t = kernels.jntk(torch.from_numpy(x), depth=2, activation="gelu")
    assert isinstance(t, torch.Tensor)
    plain = kernels.ntk(x, depth=2)
    assert isinstance(plain, np.ndarray) and plain.shape == (3, 3)
    f = kernels.fields(x, depth=2)
    assert f.stack().shape == (8, 3, 3) and set(f.numpy()) == set(kernels.FIELD_NAMES)


def test_tile_of_a_gram_equals_gram_slice():
    """Blocks computed for a sub-grid equal the same blocks of the full computation."""
    x = unit_rows(9, 3, seed=12)
    full = kernels.jntk(x, depth=3, activation="gelu")
    tile = kernels.jntk(x[2:5], x[6:9], depth=3, activation="gelu")
    torch.testing.assert_close(tile, full[2:5, 6:9], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1.0, 0.0], [np.nan, 1.0]]), "NaN"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "zero row"),
        (np.array([1.0, 0.0]), "2-D"),
        (np.zeros((0, 3)), "empty"),
    ],
)
def test_bad_inputs_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        kernels.jntk(bad, depth=1)


def test_wrong_d0_and_bad_arguments():
    x = unit_rows(3, 2, seed=0)
    with pytest.raises(ValueError, match="d0=3"):
        kernels.jntk(x, unit_rows(2, 3, seed=1), depth=1)
    with pytest.raises(ValueError, match="depth"):
        kernels.jntk(x, depth=0)
    with pytest.raises(ValueError, match="unknown activation"):
        kernels.jntk(x, depth=1, activation="swishy")
    with pytest.raises(ValueError, match="kind"):
        kernels.fields(x, depth=1, kind="ntk")


def test_user_callable_activation():
    """A bare callable (derivatives by autodiff) equals the preset (derivatives by hand)."""
    x = unit_rows(2, 2, seed=3)
    via_callable = kernels.jntk(x, depth=2, activation=torch.sin)
    via_name = kernels.jntk(x, depth=2, activation="sin")
    torch.testing.assert_close(via_callable, via_name, rtol=1e-13, atol=1e-15)


def test_lambda_in_the_expansion_equals_scaling_stored_blocks_bit_for_bit():
    """Θ_λ expanded directly equals Θ expanded and then scaled by lambda_scale (what a store
    reader does), bit for bit, torch and numpy; and lambda_scale is ΛKΛ with Λ built by hand."""
    x1, x2 = unit_rows(9, 4, seed=46), unit_rows(7, 4, seed=47)
    f = kernels.fields(x1, x2, depth=3, activation="gelu")
    plain = kernels.expand_blocks(f, x1, x2)
    for lam in (0.0, 0.3, 2.0):
        direct = kernels.expand_blocks(f, x1, x2, lam=lam)
        assert torch.equal(direct, kernels.lambda_scale(plain.clone(), lam))
        assert np.array_equal(direct.numpy(), kernels.lambda_scale(plain.numpy().copy(), lam))
        Lam = torch.diag(torch.tensor([1.0] + [lam ** 0.5] * 4, dtype=torch.float64))
        torch.testing.assert_close(direct, Lam @ plain @ Lam, rtol=1e-15, atol=0)


def test_block_record_compression_and_coincident_blocks_equal_the_dense_blocks():
    """The block record's contractions against Λ·(autodiff of the scalar kernel)·Λ, Λ built by
    hand: Block.compress onto arbitrary per-point bases E_i (d0 × q) is the E_i-contracted
    blocks; Block.coincident is the blocks of a point with itself."""
    x1, x2 = unit_rows(5, 4, seed=60), unit_rows(6, 4, seed=61)
    x1[::2] *= 1.7  # off the sphere too
    g = torch.Generator().manual_seed(62)
    E1, E2 = torch.randn(5, 4, 3, generator=g), torch.randn(6, 4, 3, generator=g)
    f = kernels.fields(x1, x2, depth=2, activation="gelu")
    gelu = get_activation("gelu")
    for lam in (None, 0.3):
        Lam = torch.diag(torch.tensor([1.0] + [1.0 if lam is None else math.sqrt(lam)] * 4))
        dense = Lam @ autodiff_blocks(x1, x2, 2, gelu, "jntk") @ Lam
        block = kernels.Block(f.stack(), kernels.LambdaWeights.of(lam))
        Px = torch.einsum("idq,id->iq", E1, x1)[:, None, :]
        Pxp = torch.einsum("idq,jd->ijq", E1, x2)
        Qx = torch.einsum("jdq,id->ijq", E2, x1)
        Qxp = torch.einsum("jdq,jd->jq", E2, x2)[None]
        overlap = torch.einsum("idq,jdr->ijqr", E1, E2)

        def add_overlap(J, iso):
            J += iso[:, :, None, None] * overlap

        c00, c0b, ca0, cab = block.compress(Px, Pxp, Qx, Qxp, add_overlap)
        close = dict(rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c00, dense[:, :, 0, 0], **close)
        torch.testing.assert_close(c0b, torch.einsum("ijb,jbr->ijr", dense[:, :, 0, 1:], E2), **close)
        torch.testing.assert_close(ca0, torch.einsum("iaq,ija->ijq", E1, dense[:, :, 1:, 0]), **close)
        torch.testing.assert_close(
            cab, torch.einsum("iaq,ijab,jbr->ijqr", E1, dense[:, :, 1:, 1:], E2), **close)
        # a point against itself
        same = (Lam @ autodiff_blocks(x1, x1, 2, gelu, "jntk") @ Lam)[range(5), range(5)]
        diag = kernels.fields(x1, depth=2, activation="gelu").stack()[:, range(5), range(5)]
        p = kernels.Block(diag, kernels.LambdaWeights.of(lam)).coincident()
        B = torch.zeros(5, 5, 5)
        B[:, 0, 0] = p["k"]
        B[:, 0, 1:] = p["c_row"][:, None] * x1
        B[:, 1:, 0] = p["c_col"][:, None] * x1
        B[:, 1:, 1:] = (p["iso"][:, None, None] * torch.eye(4)
                        + p["rank1"][:, None, None] * x1[:, :, None] * x1[:, None, :])
        torch.testing.assert_close(B, same, **close)


def test_lambda_weights_and_the_right_hand_side():
    """Λ's weights ("λ None means 1", the one λ check) and the point-major (y, 0…0)."""
    assert kernels.LambdaWeights.of(None) == kernels.LambdaWeights(None, 1.0, 1.0)
    assert kernels.LambdaWeights.of(0.25) == kernels.LambdaWeights(0.25, 0.5, 0.25)
    np.testing.assert_array_equal(kernels.LambdaWeights.of(0.25).point(3), [1.0, 0.5, 0.5])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lam"):
            kernels.LambdaWeights.of(bad)
    y = np.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(kernels.point_major_targets(y, 3),
                                  [1, 0, 0, -2, 0, 0, 3, 0, 0])
    Y = np.stack([y, 2 * y], 1)
    out = kernels.point_major_targets(Y, 2)
    assert out.shape == (6, 2)
    np.testing.assert_array_equal(out[::2], Y)
    np.testing.assert_array_equal(out[1::2], 0.0)


@pytest.mark.slow
def test_fused_compiled_expansion_matches_eager_and_blocks():
    """The torch.compile'd one-pass expansion (full 32-row chunks; the ragged rest eager) writes
    the same Gram as the eager in-place route and as to_gram of the blocks: λ-scaled, two
    point sets, and into the (n1, n2, p, p) block layout."""
    x1, x2 = unit_rows(70, 3, seed=44), unit_rows(45, 3, seed=45)
    x1[::4] *= 1.6
    f = kernels.fields(x1, x2, depth=3, activation="gelu")
    for lam in (None, 0.3):
        eager = kernels.expand_gram(f, x1, x2, lam=lam)
        fused = kernels.expand_gram(f, x1, x2, lam=lam, compile=True)
        torch.testing.assert_close(fused, eager, rtol=1e-15, atol=1e-15)
        blocks = kernels.expand_blocks(f, x1, x2, lam=lam, compile=True)
        torch.testing.assert_close(kernels.to_gram(blocks), eager, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(
        kernels.gram(x1, depth=3, activation="erf", lam=0.5, compile=True),
        kernels.to_gram(kernels.jntk(x1, depth=3, activation="erf", lam=0.5)), rtol=1e-13,
        atol=1e-13)


@pytest.mark.slow
def test_compiled_recursion_matches_eager():
    """torch.compile of the layer step (opt-in speed path) gives the eager fields."""
    x1, x2 = unit_rows(6, 3, seed=31), unit_rows(5, 3, seed=32)
    eager = kernels.fields(x1, x2, depth=3, activation="erf", kind="jntk").stack()
    compiled = kernels.fields(x1, x2, depth=3, activation="erf", kind="jntk", compile=True).stack()
    torch.testing.assert_close(compiled, eager, rtol=1e-13, atol=1e-14)
    other = kernels.fields(x1[:4], x2, depth=5, activation="erf", kind="jntk", compile=True)
    torch.testing.assert_close(other.stack(), kernels.fields(x1[:4], x2, depth=5,
                                                             activation="erf").stack(),
                               rtol=1e-13, atol=1e-14)
    x = unit_rows(300, 3, seed=33)  # one point set over several row blocks: the mirrored route
    torch.testing.assert_close(kernels.fields(x, depth=2, activation="erf", compile=True).stack(),
                               kernels.fields(x, depth=2, activation="erf").stack(),
                               rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("activation", ["erf", "gelu"])
def test_symmetric_block_triangle_matches_two_set_route(activation):
    """One point set computes only the blocks on and right of the diagonal and mirrors the rest
    through the (x', x) swap rule; it must agree with the two-set route (no mirroring), which
    the autodiff tests check, on every pair — several row blocks, mixed norms."""
    x = unit_rows(300, 4, seed=41)
    x[::3] *= 1.8
    rows = block_side(torch.device("cpu"))
    assert rows < 150, "the test must span several row blocks (and a ragged edge block)"
    for kind in ("jntk", "nngp"):
        sym = kernels.fields(x, depth=4, activation=activation, kind=kind).stack()
        two = kernels.fields(x, x.clone(), depth=4, activation=activation, kind=kind).stack()
        scale = two.abs().amax(dim=(1, 2), keepdim=True)
        assert ((sym - two).abs() / scale).max() < 1e-13
        # below the diagonal blocks the entries are exact mirrors of the swapped fields
        lower = sym[:, rows:, :rows]
        mirrored = sym[list(kernels.MIRROR_ORDER), :rows, rows:].transpose(1, 2)
        assert torch.equal(lower, mirrored)


def test_gram_is_expanded_point_major_in_place():
    """kernels.gram writes the blocks straight into the point-major matrix: equal to
    to_gram of the blocks, λ-scaled and float32 included."""
    x = unit_rows(70, 3, seed=43)
    for lam in (None, 0.25):
        G = kernels.gram(x, depth=2, activation="gelu", lam=lam)
        assert G.is_contiguous() and G.shape == (280, 280)
        torch.testing.assert_close(G, kernels.to_gram(kernels.jntk(x, depth=2, activation="gelu",
                                                                   lam=lam)), rtol=0, atol=0)
    G32 = kernels.gram(x.numpy().astype(np.float32), depth=2, activation="erf", kind="nngp",
                       dtype=torch.float32)
    assert isinstance(G32, np.ndarray) and G32.dtype == np.float32
    f = kernels.fields(x, depth=2, activation="gelu")
    buffer = torch.full((280, 280), float("nan"), dtype=torch.float64)
    assert kernels.expand_gram(f, x, out=buffer) is buffer
    torch.testing.assert_close(buffer, kernels.gram(x, depth=2, activation="gelu"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.expand_gram(f, x, out=buffer.T[:, :279])
