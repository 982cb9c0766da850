"""The records the kernels carry: the 8 scalar fields of a pair, as a jet and as a result.

Every scalar kernel of the bias-free MLP depends on a pair (x, x') only through
a = |x|², b = <x, x'>, c = |x'|²:  k(x, x') = κ(a, b, c). The *fields* are κ with the partial
derivatives the block formula needs (docs/design.md, "The structure"):

    FIELD_NAMES = (κ, κ_a, κ_b, κ_c, κ_ab, κ_ac, κ_bb, κ_bc)

This module is the one home of their order (:data:`FIELD_NAMES`, :data:`FIELD_INDEX`) and of
the mirror identity: the fields of (x', x) are the transposed fields of (x, x') with a and c
swapped (κ_a ↔ κ_c, κ_ab ↔ κ_bc), :data:`MIRROR_ORDER` / :func:`mirror_stack`.

It is also the one home of the block these fields make (§1.5), in the spirit of neural-tangents'
``Kernel`` record carried through ``stax``: :data:`BLOCK_TERMS` says which field, with which
integer multiplier, stands on which term of Θ(x, x'); :class:`LambdaWeights` is Λ (the weights
1, √λ, λ of Θ_λ = ΛΘΛ, "λ None means 1", the one λ check); :class:`Block` carries the fields of
many pairs with Λ and contracts them for every consumer (the dense expansion, the structured
product, the diagonal, the compression to a coarse space); :func:`point_major_targets` is the
right-hand side (y, 0…0) of eq. (4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from .inputs import check_lam

__all__ = ["FIELD_NAMES", "FIELD_INDEX", "MIRROR_ORDER", "Jet", "Diagonal", "KernelFields",
           "mirror_stack", "BLOCK_TERMS", "LambdaWeights", "Block", "ProductOperand",
           "product_operand", "point_major_targets", "lambda_weights", "lambda_factors",
           "lambda_scale"]

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor

FIELD_NAMES = ("k", "k_a", "k_b", "k_c", "k_ab", "k_ac", "k_bb", "k_bc")
FIELD_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}
_A_C_SWAP = {"k_a": "k_c", "k_c": "k_a", "k_ab": "k_bc", "k_bc": "k_ab"}
#: stacked fields of (x', x) = stacked fields of (x, x')[MIRROR_ORDER], transposed
MIRROR_ORDER = tuple(FIELD_INDEX[_A_C_SWAP.get(n, n)] for n in FIELD_NAMES)


def mirror_stack(stacked: ArrayLike) -> ArrayLike:
    """The (8, n2, n1) fields of (x2, x1) from the (8, n1, n2) fields of (x1, x2) (numpy or
    torch; a view where the input allows)."""
    return stacked[list(MIRROR_ORDER)].swapaxes(-1, -2)


@dataclass(frozen=True)
class Jet:
    """κ(a, b, c) with the partial derivatives the block formula needs (broadcastable tensors).

    ``+`` and ``*`` follow the sum and product rules, so the layer recursion reads the same on
    jets as on plain values (Θ ← Σ + Θ·Γ)."""

    k: Tensor | float
    k_a: Tensor | float = 0.0
    k_b: Tensor | float = 0.0
    k_c: Tensor | float = 0.0
    k_ab: Tensor | float = 0.0
    k_ac: Tensor | float = 0.0
    k_bb: Tensor | float = 0.0
    k_bc: Tensor | float = 0.0

    def __add__(self, other: "Jet") -> "Jet":
        return Jet(*(s + o for s, o in zip(self.parts(), other.parts())))

    def __mul__(self, other: "Jet") -> "Jet":
        f, g = self, other
        return Jet(
            k=f.k * g.k,
            k_a=f.k_a * g.k + f.k * g.k_a,
            k_b=f.k_b * g.k + f.k * g.k_b,
            k_c=f.k_c * g.k + f.k * g.k_c,
            k_ab=f.k_ab * g.k + f.k_a * g.k_b + f.k_b * g.k_a + f.k * g.k_ab,
            k_ac=f.k_ac * g.k + f.k_a * g.k_c + f.k_c * g.k_a + f.k * g.k_ac,
            k_bb=f.k_bb * g.k + 2 * f.k_b * g.k_b + f.k * g.k_bb,
            k_bc=f.k_bc * g.k + f.k_b * g.k_c + f.k_c * g.k_b + f.k * g.k_bc,
        )

    def parts(self) -> tuple:
        """The 8 parts in FIELD_NAMES order."""
        return tuple(getattr(self, n) for n in FIELD_NAMES)


@dataclass(frozen=True)
class Diagonal:
    """Σ^(l)(x, x) as a function of the squared norm alone: value and d/d(norm²)."""

    v: Tensor
    d: Tensor | float


@dataclass(frozen=True)
class KernelFields:
    """The 8 scalar fields of Σ^(L) or Θ for all pairs of two point sets, each (n1, n2)."""

    k: Tensor
    k_a: Tensor
    k_b: Tensor
    k_c: Tensor
    k_ab: Tensor
    k_ac: Tensor
    k_bb: Tensor
    k_bc: Tensor
    kind: str = "jntk"
    depth: int = 1
    activation: str = "gelu"

    #: the index of each field in :meth:`stack` (FIELD_NAMES order)
    index = FIELD_INDEX

    def stack(self) -> Tensor:
        """All fields as one tensor of shape (8, n1, n2), in FIELD_NAMES order."""
        return torch.stack([getattr(self, n) for n in FIELD_NAMES])

    @classmethod
    def from_stack(cls, stacked: ArrayLike, **meta: Any) -> "KernelFields":
        """Fields from an (8, n1, n2) array in FIELD_NAMES order (``meta``: kind, depth, …)."""
        stacked = torch.as_tensor(stacked)
        return cls(*(stacked[i] for i in range(len(FIELD_NAMES))), **meta)

    def mirror(self) -> "KernelFields":
        """The fields of the swapped pairs (x2, x1): transposed, a ↔ c."""
        parts = [getattr(self, FIELD_NAMES[i]).T for i in MIRROR_ORDER]
        return KernelFields(*parts, kind=self.kind, depth=self.depth, activation=self.activation)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.k.shape)  # type: ignore[return-value]

    def numpy(self) -> dict[str, np.ndarray]:
        """The fields as a dict of numpy arrays, by name."""
        return {n: getattr(self, n).detach().cpu().numpy() for n in FIELD_NAMES}


# ---- the block record (docs/design.md §1.5) ----------------------------------------------

#: The block Θ(x, x') of a pair, x the row point and x' the column point, term by term: each
#: role's field and its multiplier (index 0 = output, α, β the input coordinates):
#:
#:     K_00 = value
#:     K_0β = row_x·x_β + row_xp·x'_β                                   (× √λ in Θ_λ)
#:     K_α0 = col_x·x_α + col_xp·x'_α                                   (× √λ)
#:     K_αβ = iso·δ_αβ + xx·x_α x_β + xxp·x_α x'_β + xpx·x'_α x_β + xpxp·x'_α x'_β   (× λ)
#:
#: The multipliers are powers of two, so a contraction may apply one before or after it with the
#: same bits, barring overflow (:meth:`Block.term` / :meth:`Block.scaled`).
BLOCK_TERMS: dict[str, tuple[str, float]] = {
    "value": ("k", 1.0),
    "row_x": ("k_b", 1.0), "row_xp": ("k_c", 2.0),
    "col_x": ("k_a", 2.0), "col_xp": ("k_b", 1.0),
    "iso": ("k_b", 1.0),
    "xx": ("k_ab", 2.0), "xxp": ("k_ac", 4.0), "xpx": ("k_bb", 1.0), "xpxp": ("k_bc", 2.0),
}
#: where a role's field sits: [False] in a stack (its index), [True] in a dict (its name)
_ROLE_KEY = ({role: FIELD_INDEX[name] for role, (name, _) in BLOCK_TERMS.items()},
             {role: name for role, (name, _) in BLOCK_TERMS.items()})
_MULTIPLIER = {role: mult for role, (_, mult) in BLOCK_TERMS.items()}
# the structured product adds col_xp·x' u and iso·w in one product with κ_b (W + u∘X2)
_ISO_IS_COL_XP = BLOCK_TERMS["iso"] == BLOCK_TERMS["col_xp"]


@dataclass(frozen=True)
class LambdaWeights:
    """Λ = diag(1, √λ, …, √λ) of Θ_λ = ΛΘΛ as the weights of the block's three parts: 1 on the
    value–value entry, ``root`` = √λ on value–Jacobian entries, ``jac`` = λ on Jacobian–Jacobian
    entries. ``lam`` None is the unscaled kernel (weights 1). Build it with :meth:`of`."""

    lam: float | None = None
    root: float = 1.0
    jac: float = 1.0

    @classmethod
    def of(cls, lam: float | None) -> "LambdaWeights":
        """Λ of ``lam`` (None: the unscaled kernel); the one λ check runs here."""
        if lam is None:
            return cls()
        lam = check_lam(lam)
        return cls(lam, math.sqrt(lam), lam)

    def point(self, p: int) -> np.ndarray:
        """The diagonal of Λ for one point, (1, √λ, …, √λ) of length p."""
        out = np.full(p, self.root)
        out[0] = 1.0
        return out

    def factors(self, p: int, like: Any) -> tuple[Any, Any]:
        """The entries of ΛKΛ are K times, per block column: (1, √λ, …, √λ) in row 0 and
        (√λ, λ, …, λ) in rows α ≥ 1 (numpy or torch, like ``like``)."""
        row0, rest = self.point(p), np.full(p, self.jac)
        rest[0] = self.root
        if isinstance(like, torch.Tensor):
            return (torch.as_tensor(row0, dtype=like.dtype, device=like.device),
                    torch.as_tensor(rest, dtype=like.dtype, device=like.device))
        return row0.astype(like.dtype, copy=False), rest.astype(like.dtype, copy=False)

    def scale(self, blocks: Any) -> Any:
        """Θ_λ = ΛΘΛ in place on (…, d0+1, d0+1) blocks; returns blocks."""
        row0, rest = self.factors(blocks.shape[-1], blocks)
        blocks[..., 0, :] *= row0
        blocks[..., 1:, :] *= rest
        return blocks

    def on_jacobian(self, t: Tensor) -> Tensor:
        """√λ·t (t itself when √λ = 1): Λ on the Jacobian part of an operand or a product."""
        return t * self.root if self.root != 1.0 else t


def lambda_weights(lam: float | None) -> tuple[float, float]:
    """(√λ, λ) of :class:`LambdaWeights` (1, 1 for ``lam=None``); runs the one λ check."""
    w = LambdaWeights.of(lam)
    return w.root, w.jac


def lambda_factors(lam: float | None, p: int, like: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """:meth:`LambdaWeights.factors` of ``lam``."""
    return LambdaWeights.of(lam).factors(p, like)


def lambda_scale(blocks: ArrayLike, lam: float | None) -> ArrayLike:
    """Θ_λ = ΛΘΛ in place on (…, d0+1, d0+1) blocks (:meth:`LambdaWeights.scale`)."""
    return LambdaWeights.of(lam).scale(blocks)


def point_major_targets(y: Any, p: int) -> np.ndarray:
    """The right-hand side of eq. (4), (y_1, 0…0, y_2, 0…0, …): y_i in slot i·p (the output),
    zeros in the p − 1 Jacobian slots. ``y`` (n,) or (n, c) gives (n·p,) or (n·p, c), float64."""
    y = np.asarray(y, dtype=np.float64)
    out = np.zeros((y.shape[0], p) + y.shape[1:], dtype=np.float64)
    out[:, 0] = y
    return out.reshape((y.shape[0] * p,) + y.shape[1:])


class ProductOperand(NamedTuple):
    """A point-major operand V of the structured product, split once per product (Λ applied):
    u (n2, m) its output rows, W (n2, d0, m) its √λ-weighted Jacobian rows, s_j = ⟨x'_j, w_j⟩,
    Zb = W + u∘X2 and sX = s∘X2 (both (n2, d0·m)), shared by every row tile."""

    u: Tensor
    W: Tensor
    s: Tensor
    Zb: Tensor
    sX: Tensor


def product_operand(x2: Tensor, V: Tensor, weights: LambdaWeights) -> ProductOperand:
    """V (n2(d0+1), m) split for :meth:`Block.product_rows`, with Λ on its Jacobian rows."""
    n2, d0 = x2.shape
    m = V.shape[1]
    Vb = V.reshape(n2, d0 + 1, m)
    u = Vb[:, 0, :].contiguous()
    W = weights.on_jacobian(Vb[:, 1:, :]).contiguous()
    s = torch.einsum("jd,jdm->jm", x2, W)
    Zb = (W + u[:, None, :] * x2[:, :, None]).reshape(n2, d0 * m)
    sX = (s[:, None, :] * x2[:, :, None]).reshape(n2, d0 * m)
    return ProductOperand(u, W, s, Zb, sX)


class Block:
    """Θ_λ(x, x') of many pairs at once: their 8 fields read through :data:`BLOCK_TERMS`, with
    Λ (:class:`LambdaWeights`). ``fields``: an (8, …) stack or a sequence of 8 (FIELD_NAMES
    order), or a dict by field name. The contractions every consumer uses live here."""

    __slots__ = ("fields", "weights", "_keys")

    def __init__(self, fields: Any, weights: LambdaWeights = LambdaWeights()) -> None:
        self.fields, self.weights = fields, weights
        self._keys = _ROLE_KEY[isinstance(fields, dict)]

    def raw(self, role: str) -> Tensor:
        """The field of ``role``, without its multiplier."""
        return self.fields[self._keys[role]]

    def scaled(self, role: str, t: Tensor) -> Tensor:
        """``role``'s multiplier times t (a contraction of :meth:`raw`); t itself for 1."""
        mult = _MULTIPLIER[role]
        return mult * t if mult != 1.0 else t

    def term(self, role: str) -> Tensor:
        """The coefficient of ``role``: multiplier · field."""
        return self.scaled(role, self.raw(role))

    def row_factors(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The blocks of rows x1 (r, d0) against columns x2 (n2, d0) grouped by their left
        factor, with x̂ = (0, x) and e0 the output index (unweighted):

            row 0:        K[0, :] = (value, row_x x + row_xp x')
            rows α ≥ 1:   K[α, :] = x_α R + x'_α R' + iso e_α,
                          R = col_x e0 + xx x̂ + xxp x̂',   R' = col_xp e0 + xpx x̂ + xpxp x̂'.

        Returns row 0, R, R' (each (r, n2, d0+1)) and iso (r, n2)."""
        def t(role: str) -> Tensor:
            return self.term(role)[..., None]

        xr, xc = x1[:, None, :], x2[None, :, :]
        row0 = torch.cat([t("value"), t("row_x") * xr + t("row_xp") * xc], dim=-1)
        right = torch.cat([t("col_x"), t("xx") * xr + t("xxp") * xc], dim=-1)
        right_p = torch.cat([t("col_xp"), t("xpx") * xr + t("xpxp") * xc], dim=-1)
        return row0, right, right_p, self.term("iso")

    def coincident(self) -> dict[str, Tensor]:
        """The blocks of points against themselves (x = x'), Λ applied:
        B_i = [[k, c_row xᵀ], [c_col x, iso I + rank1 x xᵀ]]; a dict of those five (length n)."""
        w, t = self.weights, self.term
        return {
            "k": t("value"),
            "c_col": w.root * (t("col_x") + t("col_xp")),
            "c_row": w.root * (t("row_x") + t("row_xp")),
            "iso": w.jac * t("iso"),
            "rank1": w.jac * (t("xx") + t("xxp") + t("xpx") + t("xpxp")),
        }

    def compress(self, Px: Tensor, Pxp: Tensor, Qx: Tensor, Qxp: Tensor,
                 add_overlap: Callable[[Tensor, Tensor], None]
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The blocks (fields (r, n)) with their Jacobian index contracted against a basis E_i
        of each row point (left) and E_j of each column point (right), Λ applied:
        Px = E_iᵀx, Pxp = E_iᵀx', Qx = E_jᵀx, Qxp = E_jᵀx', each broadcastable to (r, n, p);
        ``add_overlap(J, iso)`` adds iso·E_iᵀE_j to J (r, n, p, p) in place.
        Returns C_00 (r, n), C_0β (r, n, p), C_α0 (r, n, p) and C_αβ (r, n, p, p)."""
        w = self.weights

        def t(role: str, *new: None) -> Tensor:
            return self.term(role)[(slice(None), slice(None)) + new]

        c0b = w.root * (t("row_x", None) * Qx + t("row_xp", None) * Qxp)
        ca0 = w.root * (t("col_x", None) * Px + t("col_xp", None) * Pxp)
        L, Lp, R, Rp = Px[..., :, None], Pxp[..., :, None], Qx[..., None, :], Qxp[..., None, :]
        J = (t("xx", None, None) * L * R + t("xxp", None, None) * L * Rp
             + t("xpx", None, None) * Lp * R + t("xpxp", None, None) * Lp * Rp)
        add_overlap(J, self.term("iso"))
        return self.term("value"), c0b, ca0, w.jac * J

    def product_rows(self, x_rows: Tensor, x2: Tensor, V: ProductOperand
                     ) -> tuple[Tensor, Tensor]:
        """Rows of K V (unweighted blocks of fields (8, r, n2)) for a :func:`product_operand`.
        With G = X1 Wᵀ (G_ij = ⟨x_i, w_j⟩) and s_j = ⟨x'_j, w_j⟩:

            (Kv)_i0 = (value u)_i + Σ_j row_x,ij G_ij + (row_xp s)_i
            (Kv)_iα = x_iα [(col_x u)_i + Σ_j xx,ij G_ij + (xxp s)_i]
                      + (iso (W + u∘X2))_iα + (xpxp (s∘X2))_iα + ((xpx ∘ G) X2)_iα

        (iso = col_xp). Four N×N×d0 matrix products: O(N² d0) per column, not the O(N² d0²)
        of the dense Gram. Returns the output (r, m) and Jacobian (r, d0, m) parts, before Λ's
        √λ on the Jacobian rows."""
        if not _ISO_IS_COL_XP:
            raise NotImplementedError("the structured product needs iso = col_xp")
        u, W, s, Zb, sX = V
        r, d0 = x_rows.shape
        n2, m = u.shape
        raw, scaled = self.raw, self.scaled
        G = (x_rows @ W.permute(1, 0, 2).reshape(d0, n2 * m)).reshape(r, n2, m)
        t_row = torch.einsum("ij,ijm->im", raw("row_x"), G)
        t_xx = torch.einsum("ij,ijm->im", raw("xx"), G)
        G.mul_(self.term("xpx")[:, :, None])  # G is now xpx ∘ G
        jac = torch.matmul(G.permute(2, 0, 1), x2).permute(1, 2, 0)  # (r, d0, m)
        jac = jac + (self.term("iso") @ Zb + scaled("xpxp", raw("xpxp") @ sX)).reshape(r, d0, m)
        out0 = self.term("value") @ u + scaled("row_x", t_row) + scaled("row_xp", raw("row_xp") @ s)
        coef = (scaled("col_x", raw("col_x") @ u) + scaled("xx", t_xx)
                + scaled("xxp", raw("xxp") @ s))
        jac.addcmul_(x_rows[:, :, None], coef[:, None, :])
        return out0, jac
