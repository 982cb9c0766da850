"""The layer recursion of the kernels, on plain values and on jets of the 8 fields.

    Σ^(0) = b = <x, x'>,   Σ^(l) = F(Σ^(l-1)),   Γ^(l-1) = G(Σ^(l-1)),
    Θ^(l) = Σ^(l) + Θ^(l-1) Γ^(l-1)                                   (docs/design.md)

F and G are the activation's Gaussian dual maps (:mod:`.activations`). On jets the same
recursion carries κ with its a/b/c derivatives through the chain rule (:func:`compose`); on
plain values it gives the 00 (NNGP / NTK) kernels of any activation, ReLU included.
The diagonal Σ^(l)(x, x) depends on |x|² alone and is carried separately (:class:`Diagonal`).
"""

from __future__ import annotations

import torch

from .activations import Activation, DualJet
from .record import Diagonal, Jet

Tensor = torch.Tensor


def ntk_update(sigma: Jet | Tensor, theta: Jet | Tensor, gamma: Jet | Tensor) -> Jet | Tensor:
    """Θ^(l) = Σ^(l) + Θ^(l-1) Γ^(l-1): the one home of the NTK step (values or jets)."""
    return sigma + theta * gamma


def compose(H: DualJet, A: Diagonal, B: Jet, C: Diagonal) -> Jet:
    """Chain rule for κ = H(A(a), B(a, b, c), C(c))."""
    return Jet(
        k=H.v,
        k_a=H.A * A.d + H.B * B.k_a,
        k_b=H.B * B.k_b,
        k_c=H.C * C.d + H.B * B.k_c,
        k_ab=(H.AB * A.d + H.BB * B.k_a) * B.k_b + H.B * B.k_ab,
        k_ac=(H.AB * B.k_c + H.AC * C.d) * A.d + (H.BB * B.k_c + H.BC * C.d) * B.k_a
        + H.B * B.k_ac,
        k_bb=H.BB * B.k_b * B.k_b + H.B * B.k_bb,
        k_bc=(H.BB * B.k_c + H.BC * C.d) * B.k_b + H.B * B.k_bc,
    )


def diagonal_step(act: Activation, D: Diagonal, with_derivative: bool) -> Diagonal:
    """Σ^(l)(x,x) = F(Σ^(l-1)(x,x) at A = B = C); its derivative is (F_A + F_B + F_C)·D'."""
    if not with_derivative:
        return Diagonal(act.dual_values(D.v, D.v, D.v)[0], 0.0)
    F, _ = act.dual_jets(D.v, D.v, D.v)
    return Diagonal(F.v, (F.A + F.B + F.C) * D.d)


def inner_products(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a = |x|² (n1, 1), b = <x, x'> (n1, n2), c = |x'|² (1, n2).

    For one point set the norms are read off the diagonal of the same product, so that
    a = b = c holds bitwise on diagonal pairs (the arc-cosine kernels have a √ singularity
    there, where one ulp of mismatch costs √eps).
    """
    b = x1 @ x2.T
    if x2 is x1:
        diag = b.diagonal()
        return diag[:, None], b, diag[None, :]
    return (x1 * x1).sum(dim=1)[:, None], b, (x2 * x2).sum(dim=1)[None, :]


def diagonal_chain(act: Activation, norms_sq: Tensor, depth: int,
                   with_derivative: bool = True) -> list[Diagonal]:
    """Σ^(l)(x, x) (and its d/d|x|²) for l = 0 … depth-1: the inputs of each layer's diagonal."""
    chain = [Diagonal(norms_sq.contiguous() if with_derivative else norms_sq, 1.0)]
    for _ in range(depth - 1):
        chain.append(diagonal_step(act, chain[-1], with_derivative))
    return chain


def layer(act: Activation, kind: str, A: Diagonal, sigma: Jet, C: Diagonal,
          theta: Jet) -> tuple[Jet, Jet]:
    """One hidden layer on jets: Σ^(l) = F(Σ^(l-1)), Θ^(l) = Σ^(l) + Θ^(l-1) Γ^(l-1)."""
    F, G = act.dual_jets(A.v, sigma.k, C.v)
    sigma_next = compose(F, A, sigma, C)
    if kind != "jntk":
        return sigma_next, sigma_next
    return sigma_next, ntk_update(sigma_next, theta, compose(G, A, sigma, C))


def layer_flat(act: Activation, kind: str, *t: Tensor) -> tuple[Tensor, ...]:
    """:func:`layer` on a flat tuple of tensors (A.v, A.d, C.v, C.d, σ parts, θ parts), the
    form torch.compile takes (:mod:`.compile`)."""
    sigma, theta = layer(act, kind, Diagonal(t[0], t[1]), Jet(*t[4:12]),
                         Diagonal(t[2], t[3]), Jet(*t[12:20]))
    return sigma.parts() + theta.parts()


def jet_recursion(b: Tensor, A_chain: list[Diagonal], C_chain: list[Diagonal],
                  act: Activation, kind: str) -> Jet:
    """Σ^(L) or Θ^(L) as a Jet in (a, b, c) for the pairs of b = <x, x'>, eagerly."""
    sigma = Jet(k=b, k_b=1.0)  # Σ^(0) = <x, x'>
    theta = sigma
    for A, C in zip(A_chain, C_chain):
        sigma, theta = layer(act, kind, A, sigma, C, theta)
    return theta


def value_recursion(x1: Tensor, x2: Tensor, depth: int, act: Activation, kind: str) -> Tensor:
    """Σ^(L)_00 or Θ^(L)_00 (n1, n2): the same recursion on values only (any activation)."""
    a, sigma, c = inner_products(x1, x2)
    A_chain = diagonal_chain(act, a, depth, with_derivative=False)
    C_chain = diagonal_chain(act, c, depth, with_derivative=False)
    theta = sigma
    for A, C in zip(A_chain, C_chain):
        F, G = act.dual_values(A.v, sigma, C.v)
        theta, sigma = ntk_update(F, theta, G), F
    return theta if kind == "jntk" else sigma


def chain_slice(chain: list[Diagonal], start: int, stop: int, as_row: bool) -> list[Diagonal]:
    """Entries start:stop of a diagonal chain as fresh contiguous (n, 1) or (1, n) tensors."""
    shape = (1, -1) if as_row else (-1, 1)
    part = []
    for D in chain:
        v = D.v.reshape(-1)[start:stop]
        d = D.d.reshape(-1)[start:stop] if isinstance(D.d, Tensor) else torch.full_like(v, D.d)
        part.append(Diagonal(v.reshape(shape).clone(), d.reshape(shape).clone()))
    return part
