"""Exact infinite-width kernels of Kim & Yang (ICML 2024): Jacobian NNGP Σ^(L), JNTK Θ, Θ_λ.

Every scalar kernel of the bias-free MLP depends on a pair (x, x') only through
a = |x|², b = <x, x'>, c = |x'|²:  k(x, x') = κ(a, b, c).  We carry κ with the derivatives the
chain rule needs -- the 8 *fields* (κ, κ_a, κ_b, κ_c, κ_ab, κ_ac, κ_bb, κ_bc) -- through the
layer recursion

    Σ^(0) = b,      Σ^(l) = F(Σ^(l-1)),      Γ^(l-1) = G(Σ^(l-1)),      Θ^(l) = Σ^(l) + Θ^(l-1) Γ^(l-1),

and expand any (d0+1)×(d0+1) block from them (DESIGN.md §2):

    K_00 = κ,  K_α0 = 2κ_a x_α + κ_b x'_α,  K_0β = κ_b x_β + 2κ_c x'_β,
    K_αβ = κ_b δ_αβ + 2κ_ab x_α x_β + 4κ_ac x_α x'_β + κ_bb x'_α x_β + 2κ_bc x'_α x'_β.

Kernels are reported κ⁻²-scaled (the network's kernels are κ² times these).
Numpy in → numpy out; torch in → torch out (same device). float64 unless asked otherwise.
"""

from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .activations import Activation, DualJet, Erf, Gelu, get_activation

_CLOSED_FORMS = (Erf, Gelu)

__all__ = [
    "FIELD_NAMES",
    "KernelFields",
    "fields",
    "jntk_fields",
    "jacobian_nngp_fields",
    "jntk",
    "jacobian_nngp",
    "nngp",
    "ntk",
    "expand_blocks",
    "expand_gram",
    "lambda_scale",
    "to_gram",
    "gram",
    "validate_inputs",
]

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor
KernelKind = Literal["jntk", "nngp"]

FIELD_NAMES = ("k", "k_a", "k_b", "k_c", "k_ab", "k_ac", "k_bb", "k_bc")
KINDS = ("jntk", "nngp")


# ---- the scalar-field record ------------------------------------------------------------


@dataclass(frozen=True)
class Jet:
    """κ(a, b, c) with the partial derivatives the block formula needs (broadcastable tensors)."""

    k: Tensor | float
    k_a: Tensor | float = 0.0
    k_b: Tensor | float = 0.0
    k_c: Tensor | float = 0.0
    k_ab: Tensor | float = 0.0
    k_ac: Tensor | float = 0.0
    k_bb: Tensor | float = 0.0
    k_bc: Tensor | float = 0.0

    def __add__(self, other: "Jet") -> "Jet":
        return Jet(*(s + o for s, o in zip(self._parts(), other._parts())))

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

    def _parts(self) -> tuple:
        return tuple(getattr(self, n) for n in FIELD_NAMES)


@dataclass(frozen=True)
class Diagonal:
    """Σ^(l)(x, x) as a function of the squared norm alone: value and d/d(norm²)."""

    v: Tensor
    d: Tensor | float


def _compose(H: DualJet, A: Diagonal, B: Jet, C: Diagonal) -> Jet:
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


def _diagonal_step(act: Activation, D: Diagonal, with_derivative: bool) -> Diagonal:
    """Σ^(l)(x,x) = F(Σ^(l-1)(x,x) at A = B = C); its derivative is (F_A + F_B + F_C)·D'."""
    if not with_derivative:
        return Diagonal(act.dual_values(D.v, D.v, D.v)[0], 0.0)
    F, _ = act.dual_jets(D.v, D.v, D.v)
    return Diagonal(F.v, (F.A + F.B + F.C) * D.d)


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

    def stack(self) -> Tensor:
        """All fields as one tensor of shape (8, n1, n2), in FIELD_NAMES order."""
        return torch.stack([getattr(self, n) for n in FIELD_NAMES])

    @classmethod
    def from_stack(cls, stacked: ArrayLike, **meta: Any) -> "KernelFields":
        stacked = torch.as_tensor(stacked)
        return cls(*(stacked[i] for i in range(len(FIELD_NAMES))), **meta)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.k.shape)  # type: ignore[return-value]

    def numpy(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n).detach().cpu().numpy() for n in FIELD_NAMES}


# ---- input handling ---------------------------------------------------------------------


def _to_tensor(x: ArrayLike, name: str, dtype: torch.dtype | None,
               device: torch.device | str | None) -> tuple[Tensor, bool]:
    is_numpy = not isinstance(x, torch.Tensor)
    t = torch.as_tensor(np.asarray(x) if is_numpy else x)
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() and t.dtype != torch.float16 else torch.float64
    return t.to(dtype=dtype, device=device), is_numpy


def validate_inputs(x: Tensor, name: str = "x", d0: int | None = None) -> None:
    """Reject what the kernels are not defined for, naming the offending rows."""
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, d0), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if d0 is not None and x.shape[1] != d0:
        raise ValueError(f"{name} has d0={x.shape[1]} features but d0={d0} was expected")
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:10].tolist()
        raise ValueError(f"{name} has {int(bad.sum())} row(s) with NaN/inf values, e.g. rows {rows}")
    zero = (x == 0).all(dim=1)
    if zero.any():
        rows = torch.nonzero(zero).flatten()[:10].tolist()
        raise ValueError(f"{name} has {int(zero.sum())} zero row(s), e.g. rows {rows}: the "
                         "kernels need nonzero inputs (the paper scales rows to unit norm)")


def _prepare(x1: ArrayLike, x2: ArrayLike | None, dtype: torch.dtype | None,
             device: torch.device | str | None) -> tuple[Tensor, Tensor, bool]:
    t1, is_numpy = _to_tensor(x1, "x1", dtype, device)
    validate_inputs(t1, "x1")
    if x2 is None:
        return t1, t1, is_numpy
    t2, _ = _to_tensor(x2, "x2", t1.dtype, t1.device)
    validate_inputs(t2, "x2", d0=t1.shape[1])
    return t1, t2, is_numpy


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth (number of hidden layers L) must be an integer ≥ 1, got {depth!r}")
    return int(depth)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _out(t: Tensor, is_numpy: bool) -> ArrayLike:
    return t.detach().cpu().numpy() if is_numpy else t


# ---- the recursion ----------------------------------------------------------------------


def _inner_products(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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


def _diagonal_chain(act: Activation, norms_sq: Tensor, depth: int) -> list[Diagonal]:
    """Σ^(l)(x, x) and its d/d|x|² for l = 0 … depth-1: the inputs of each layer's diagonal."""
    chain = [Diagonal(norms_sq.contiguous(), 1.0)]
    for _ in range(depth - 1):
        chain.append(_diagonal_step(act, chain[-1], True))
    return chain


def _layer(act: Activation, kind: str, A: Diagonal, sigma: Jet, C: Diagonal,
           theta: Jet) -> tuple[Jet, Jet]:
    """One hidden layer: Σ^(l) = F(Σ^(l-1)), Θ^(l) = Σ^(l) + Θ^(l-1) Γ^(l-1)."""
    F, G = act.dual_jets(A.v, sigma.k, C.v)
    sigma_next = _compose(F, A, sigma, C)
    theta = sigma_next + theta * _compose(G, A, sigma, C) if kind == "jntk" else sigma_next
    return sigma_next, theta


def _layer_flat(act: Activation, kind: str, *t: Tensor) -> tuple[Tensor, ...]:
    """:func:`_layer` on a flat tuple of tensors (A.v, A.d, C.v, C.d, σ parts, θ parts)."""
    sigma, theta = _layer(act, kind, Diagonal(t[0], t[1]), Jet(*t[4:12]),
                          Diagonal(t[2], t[3]), Jet(*t[12:20]))
    return sigma._parts() + theta._parts()


_COMPILED: dict[tuple, Any] = {}  # torch.compile wrappers, one per graph


def compile_enabled(compile: bool | None) -> bool:
    """``compile`` if given, else the environment variable ``JNTK_COMPILE=1``."""
    if compile is not None:
        return bool(compile)
    return os.environ.get("JNTK_COMPILE", "0").lower() in ("1", "true", "yes")


def compile_warm_up(activation: str | Activation, kind: KernelKind = "jntk",
                    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                    gram_columns: tuple[int, int] | None = None) -> None:
    """Compile (or load from torch's on-disk cache) the layer steps now, e.g. while a worker
    starts, so that the first tile does not pay for it (closed-form activations only).
    ``gram_columns=(n2, d0)`` also compiles the fused expansion of Gram rows against n2 points."""
    act, device = get_activation(activation), torch.device(device)
    if isinstance(act, _CLOSED_FORMS):
        side = _block_side(device)
        for shape in ((side, side), None):
            _compiled_layer(act, _check_kind(kind), dtype, shape, device)
    if gram_columns is not None:
        n2, d0 = gram_columns
        rows = _FUSED_EXPANSION_ROWS if device.type == "cpu" else n2  # a square tile on GPUs
        ones = torch.ones((rows, n2), dtype=dtype, device=device)
        f = KernelFields(*(ones.clone() for _ in FIELD_NAMES))
        x1 = torch.ones((rows, d0), dtype=dtype, device=device)
        x2 = torch.ones((n2, d0), dtype=dtype, device=device)
        expand_gram(f, x1, x2, compile=True)


def _compiled_layer(act: Activation, kind: str, dtype: torch.dtype = torch.float64,
                    shape: tuple[int, int] | None = None,
                    device: torch.device = torch.device("cpu")) -> Any:
    """torch.compile'd layer step (inductor fuses the ~130 elementwise ops of a layer into one
    loop). Closed-form activations only. With ``shape`` the graph is specialised to blocks of
    that shape (static sizes let inductor vectorise: ~1.7× faster per pair on CPU); without, it
    takes any shape (used for the ragged edge blocks)."""
    key = ("layer", act.name, kind, shape)
    if key not in _COMPILED:
        step = torch.compile(_own_code(_layer_closure(act, kind)), dynamic=shape is None)
        # Without a shape, compile first on distinct sizes: a first call on a square tile would
        # make dynamo assume n1 == n2 ("duck sizing") and recompile for every later shape.
        n1, n2 = shape or (3, 5)
        rows = torch.ones(n1, 1, dtype=dtype, device=device)
        cols = torch.ones(1, n2, dtype=dtype, device=device)
        pair = torch.full((n1, n2), 0.5, dtype=dtype, device=device)
        with torch.no_grad():  # as in fields(): grad mode is part of dynamo's guards
            step(rows, rows.clone(), cols, cols.clone(), *(pair.clone() for _ in range(16)))
        _COMPILED[key] = step
    return _COMPILED[key]


def _layer_closure(act: Activation, kind: str) -> Any:
    def layer(*t: Tensor) -> tuple[Tensor, ...]:
        return _layer_flat(act, kind, *t)
    return layer


def _own_code(fn: Any) -> Any:
    """``fn`` with a private copy of its code object. Dynamo keeps its compiled graphs and
    their recompile limit per code object (a functools.partial would share torch's wrapper's),
    so each compiled graph gets its own."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def _pair_recursion(b: Tensor, A_chain: list[Diagonal], C_chain: list[Diagonal],
                    act: Activation, kind: str, compile: bool) -> Jet:
    """Σ^(L) or Θ^(L) as a Jet in (a, b, c) for the pairs of b = <x, x'> (n1, n2), given the
    diagonal chains of the two point sets ((n1, 1) and (1, n2) tensors)."""
    sigma = Jet(k=b, k_b=1.0)  # Σ^(0) = <x, x'>
    theta = sigma
    if compile and isinstance(act, _CLOSED_FORMS):
        side = _block_side(b.device)
        shape = (side, side) if tuple(b.shape) == (side, side) else None
        step = _compiled_layer(act, kind, b.dtype, shape, b.device)
        # fresh contiguous tensors: inputs that are views or alias each other make dynamo
        # recompile (the chains come from _chain_slices, fresh already)
        parts = tuple(torch.as_tensor(p, dtype=b.dtype, device=b.device).expand_as(b).clone(
            memory_format=torch.contiguous_format) for p in sigma._parts() * 2)
        for A, C in zip(A_chain, C_chain):
            parts = step(A.v, A.d, C.v, C.d, *parts)
        return Jet(*parts[8:])
    for A, C in zip(A_chain, C_chain):
        sigma, theta = _layer(act, kind, A, sigma, C, theta)
    return theta


# (x', x) fields are the transposed (x, x') fields with a <-> c swapped: k_a<->k_c, k_ab<->k_bc
_SWAPPED_FIELD = (0, 3, 2, 1, 7, 5, 6, 4)
# On CPU the ~130 temporaries of a layer stay in cache when a block holds ~16-32 k pairs (2×
# faster than whole 512² tiles); on a GPU big blocks are best. Square blocks of one side keep
# the compiled layer step on one static shape for all but the ragged edge blocks.
_CPU_BLOCK_SIDE = 128
_GPU_BLOCK_SIDE = 2048


def _block_side(device: torch.device) -> int:
    return _CPU_BLOCK_SIDE if device.type == "cpu" else _GPU_BLOCK_SIDE


def _field_tensors(x1: Tensor, x2: Tensor, depth: int, act: Activation, kind: str,
                   compile: bool = False) -> list[Tensor]:
    """The 8 fields (FIELD_NAMES order), each (n1, n2), for all pairs of rows of x1, x2.

    Pairs are taken in square blocks. For one point set (``x2 is x1``) only the blocks on and
    right of the diagonal are computed (≈ 62 % of the pairs for 4 × 4 blocks) and the rest is
    mirrored through the (x', x) symmetry.
    """
    act.require_smooth()
    a, b, c = _inner_products(x1, x2)
    symmetric = x2 is x1
    A_chain = _diagonal_chain(act, a, depth)
    C_chain = A_chain if symmetric else _diagonal_chain(act, c, depth)
    n1, n2 = b.shape
    out = [torch.empty_like(b) for _ in FIELD_NAMES]
    side = _block_side(b.device)
    col_parts = {c0: _chain_slice(C_chain, c0, min(n2, c0 + side), as_row=True)
                 for c0 in range(0, n2, side)}
    for r0 in range(0, n1, side):
        r1 = min(n1, r0 + side)
        A_part = _chain_slice(A_chain, r0, r1, as_row=False)
        for c0 in range(r0 if symmetric else 0, n2, side):
            c1 = min(n2, c0 + side)
            jet = _pair_recursion(b[r0:r1, c0:c1], A_part, col_parts[c0], act, kind, compile)
            for o, t in zip(out, jet._parts()):
                o[r0:r1, c0:c1] = t
        if symmetric:
            for o, src in zip(out, _SWAPPED_FIELD):
                o[r0:r1, :r0] = out[src][:r0, r0:r1].T
    return out


def _chain_slice(chain: list[Diagonal], start: int, stop: int, as_row: bool) -> list[Diagonal]:
    """Entries start:stop of a diagonal chain as fresh contiguous (n, 1) or (1, n) tensors."""
    shape = (1, -1) if as_row else (-1, 1)
    part = []
    for D in chain:
        v = D.v.reshape(-1)[start:stop]
        d = D.d.reshape(-1)[start:stop] if isinstance(D.d, Tensor) else torch.full_like(v, D.d)
        part.append(Diagonal(v.reshape(shape).clone(), d.reshape(shape).clone()))
    return part


def fields(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
           activation: str | Activation = "gelu", kind: KernelKind = "jntk",
           dtype: torch.dtype | None = None, device: torch.device | str | None = None,
           compile: bool | None = None) -> KernelFields:
    """The 8 scalar fields of Θ (``kind="jntk"``) or Σ^(L) (``kind="nngp"``), each (n1, n2).

    Torch tensors are returned (numpy inputs are converted); use ``.numpy()`` for arrays.
    ``compile=True`` (or ``JNTK_COMPILE=1``) runs the layer recursion through torch.compile for
    erf/gelu: about 8× faster per call once compiled, at a one-off compile of tens of seconds
    (cached on disk by torch); results agree with the eager path to rounding.
    """
    depth, kind = _check_depth(depth), _check_kind(kind)
    act = get_activation(activation)
    t1, t2, _ = _prepare(x1, x2, dtype, device)
    with torch.no_grad():
        parts = _field_tensors(t1, t2, depth, act, kind, compile_enabled(compile))
    return KernelFields(*parts, kind=kind, depth=depth, activation=act.name)


def jntk_fields(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
                activation: str | Activation = "gelu", **kw: Any) -> KernelFields:
    """Fields of the JNTK Θ (see :func:`fields`)."""
    return fields(x1, x2, depth=depth, activation=activation, kind="jntk", **kw)


def jacobian_nngp_fields(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
                         activation: str | Activation = "gelu", **kw: Any) -> KernelFields:
    """Fields of the Jacobian NNGP Σ^(L) (see :func:`fields`)."""
    return fields(x1, x2, depth=depth, activation=activation, kind="nngp", **kw)


# ---- blocks -----------------------------------------------------------------------------


def expand_blocks(f: KernelFields, x1: ArrayLike, x2: ArrayLike | None = None,
                  lam: float | None = None, out: Tensor | None = None,
                  compile: bool | None = None) -> Tensor:
    """(n1, n2, d0+1, d0+1) blocks from the fields (point-major index 0 = output).

    With ``lam`` the blocks are Θ_λ = ΛKΛ, Λ = diag(1, √λ, …, √λ). ``out`` may be any view of
    that shape (e.g. the point-major Gram, see :func:`expand_gram`). ``compile=True`` (or
    ``JNTK_COMPILE=1``) expands through one fused torch.compile'd loop per chunk of rows.
    """
    t1 = torch.as_tensor(x1, dtype=f.k.dtype, device=f.k.device)
    t2 = t1 if x2 is None else torch.as_tensor(x2, dtype=f.k.dtype, device=f.k.device)
    n1, d0 = t1.shape
    n2 = t2.shape[0]
    if f.shape != (n1, n2):
        raise ValueError(f"fields of shape {f.shape} do not match inputs ({n1}, {n2})")
    p = d0 + 1
    if out is None:
        out = torch.empty((n1, n2, p, p), dtype=f.k.dtype, device=f.k.device)
    # Λ·K·Λ is applied after the sum with lambda_scale's factors, so Θ_λ here equals a stored
    # Θ scaled by a reader bit for bit
    scale = None if lam is None else _lambda_scales(_check_lam(lam), p, t1)
    rows_out = out.permute(0, 2, 1, 3)  # (n1, d0+1, n2, d0+1): the Gram's row order
    fused = _compiled_expansion() if compile_enabled(compile) else None
    on_cpu = out.device.type == "cpu"
    chunk = max(1, _EXPANSION_CHUNK // max(1, n2 * p * p)) if on_cpu else n1
    if fused is not None:
        chunk = _FUSED_EXPANSION_ROWS if on_cpu else n1
        fused_scale = _lambda_scales(1.0, p, t1) if scale is None else scale
    with torch.no_grad():
        for r0 in range(0, n1, chunk):
            r1 = min(n1, r0 + chunk)
            field_rows = tuple(getattr(f, name)[r0:r1] for name in FIELD_NAMES)
            if fused is not None and r1 - r0 == chunk:  # one static shape per column count
                fused(rows_out[r0:r1], t1[r0:r1], t2, *fused_scale, *field_rows)
            else:
                _expand_rows(rows_out[r0:r1], t1[r0:r1], t2, scale, field_rows, on_cpu)
    return out


_EXPANSION_CHUNK = 1 << 19  # block entries whose right factors are formed at once (4 MiB)
_CACHE_ENTRIES = 1 << 19  # output entries written per in-place pass (4 MiB, in L3)
_FUSED_EXPANSION_ROWS = 32


def _lambda_scales(lam: float, p: int, like: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """The entries of ΛKΛ are K times, per block column: (1, √λ, …, √λ) in row 0 and
    (√λ, λ, …, λ) in rows α ≥ 1 (numpy or torch, like ``like``)."""
    root = math.sqrt(lam)
    row0, rest = np.full(p, root), np.full(p, lam)
    row0[0], rest[0] = 1.0, root
    if isinstance(like, torch.Tensor):
        return (torch.as_tensor(row0, dtype=like.dtype, device=like.device),
                torch.as_tensor(rest, dtype=like.dtype, device=like.device))
    return row0.astype(like.dtype, copy=False), rest.astype(like.dtype, copy=False)


def _block_row_factors(x1: Tensor, x2: Tensor,
                       field_rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For the blocks of rows x1 (r, d0) against columns x2 (n2, d0), with x̂ = (0, x) and e0
    the output index:

        row 0:        K[0, :] = (κ, κ_b x + 2κ_c x')
        rows α ≥ 1:   K[α, :] = x_α R + x'_α R' + κ_b e_α,
                      R = 2κ_a e0 + 2κ_ab x̂ + 4κ_ac x̂',   R' = κ_b e0 + κ_bb x̂ + 2κ_bc x̂',

    i.e. DESIGN.md §2's block formula grouped by its left factor. Returns row 0, R, R' (each
    (r, n2, d0+1)) and κ_b (r, n2).
    """
    k, k_a, k_b, k_c, k_ab, k_ac, k_bb, k_bc = (t[..., None] for t in field_rows)
    xr, xc = x1[:, None, :], x2[None, :, :]
    row0 = torch.cat([k, k_b * xr + 2 * k_c * xc], dim=-1)
    right = torch.cat([2 * k_a, 2 * k_ab * xr + 4 * k_ac * xc], dim=-1)
    right_p = torch.cat([k_b, k_bb * xr + 2 * k_bc * xc], dim=-1)
    return row0, right, right_p, k_b[..., 0]


def _expand_rows(rows_out: Tensor, x1: Tensor, x2: Tensor, scale: tuple[Tensor, Tensor] | None,
                 field_rows: tuple[Tensor, ...], on_cpu: bool) -> None:
    """Eager expansion into rows_out (r, d0+1, n2, d0+1) in place: the Jacobian rows are
    written in cache-sized groups so that the add, the diagonal and Λ find them in cache."""
    row0, right, right_p, diag = _block_row_factors(x1, x2, field_rows)
    if scale is not None:
        row0 *= scale[0]
    rows_out[:, 0] = row0
    r, d0, n2 = x1.shape[0], x1.shape[1], x2.shape[0]
    step = max(1, _CACHE_ENTRIES // max(1, d0 * n2 * (d0 + 1))) if on_cpu else r
    x2_t = x2.T[None, :, :, None]
    for s0 in range(0, r, step):
        s = slice(s0, min(r, s0 + step))
        jac = rows_out[s, 1:]
        torch.mul(x1[s, :, None, None], right[s, None], out=jac)
        jac.addcmul_(x2_t, right_p[s, None])
        rows_out[s, 1:, :, 1:].diagonal(dim1=1, dim2=3).add_(diag[s, :, None])
        if scale is not None:
            jac *= scale[1]


def _expansion_fused(rows_out: Tensor, x1: Tensor, x2: Tensor, row0_scale: Tensor,
                     rest_scale: Tensor, *field_rows: Tensor) -> None:
    """:func:`_expand_rows` as one expression, for torch.compile (one pass over the output)."""
    row0, right, right_p, diag = _block_row_factors(x1, x2, field_rows)
    d0 = x1.shape[1]
    shift = (torch.arange(d0, device=x1.device)[:, None] + 1
             == torch.arange(d0 + 1, device=x1.device)[None, :]).to(x1.dtype)  # e_α, α ≥ 1
    rows_out[:, 0].copy_(row0 * row0_scale)
    rows_out[:, 1:].copy_((x1[:, :, None, None] * right[:, None]
                           + x2.T[None, :, :, None] * right_p[:, None]
                           + shift[None, :, None, :] * diag[:, None, :, None]) * rest_scale)


def _compiled_expansion() -> Any:
    """The fused expansion, torch.compile'd with static shapes (dynamic shapes run ~3× slower);
    a new column count or d0 compiles once more (a few seconds)."""
    if "expansion" not in _COMPILED:
        _COMPILED["expansion"] = torch.compile(_expansion_fused, dynamic=False)
    return _COMPILED["expansion"]


def expand_gram(f: KernelFields, x1: ArrayLike, x2: ArrayLike | None = None,
                lam: float | None = None, out: Tensor | None = None,
                compile: bool | None = None) -> Tensor:
    """The point-major (n1(d0+1), n2(d0+1)) matrix of the fields' blocks, expanded in place
    (no (n1, n2, d0+1, d0+1) intermediate); torch in, torch out.

    ``out`` (contiguous, that shape) is reused if given: a fresh matrix of a few hundred MB
    costs as much in first-touch page faults as the whole expansion. ``compile``: as in
    :func:`expand_blocks`.
    """
    t1 = torch.as_tensor(x1, dtype=f.k.dtype, device=f.k.device)
    n1, n2, p = f.shape[0], f.shape[1], t1.shape[1] + 1
    if out is None:
        # the fused loop's first writes to fresh pages fault ~2× slower than a zero fill's
        fused_on_cpu = compile_enabled(compile) and t1.device.type == "cpu"
        out = (torch.zeros if fused_on_cpu else torch.empty)((n1 * p, n2 * p), dtype=t1.dtype,
                                                             device=t1.device)
    elif tuple(out.shape) != (n1 * p, n2 * p) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({n1 * p}, {n2 * p}) tensor, got "
                         f"{tuple(out.shape)}")
    expand_blocks(f, t1, x2, lam=lam, out=out.view(n1, p, n2, p).permute(0, 2, 1, 3),
                  compile=compile)
    return out


def gram(x: ArrayLike, *, depth: int, activation: str | Activation = "gelu",
         kind: KernelKind = "jntk", lam: float | None = None, dtype: torch.dtype | None = None,
         device: torch.device | str | None = None, compile: bool | None = None) -> ArrayLike:
    """The N(d0+1)-square Gram matrix of one dataset, point-major (dense; small N only)."""
    t, _, is_numpy = _prepare(x, None, dtype, device)
    f = fields(t, depth=depth, activation=activation, kind=_check_kind(kind), compile=compile)
    return _out(expand_gram(f, t, lam=lam, compile=compile), is_numpy)


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not (0.0 <= lam) or not math.isfinite(lam):
        raise ValueError(f"lam (Jacobian-regularisation weight λ) must be ≥ 0, got {lam}")
    return lam


def lambda_scale(blocks: ArrayLike, lam: float) -> ArrayLike:
    """Θ_λ = ΛΘΛ in place on (…, d0+1, d0+1) blocks, Λ = diag(1, √λ, …, √λ); returns blocks."""
    row0, rest = _lambda_scales(_check_lam(lam), blocks.shape[-1], blocks)
    blocks[..., 0, :] *= row0
    blocks[..., 1:, :] *= rest
    return blocks


def _blocks(kind: str, x1: ArrayLike, x2: ArrayLike | None, depth: int,
            activation: str | Activation, lam: float | None, dtype: torch.dtype | None,
            device: torch.device | str | None) -> ArrayLike:
    t1, t2, is_numpy = _prepare(x1, x2, dtype, device)
    f = fields(t1, t2, depth=depth, activation=activation, kind=kind)  # type: ignore[arg-type]
    with torch.no_grad():
        return _out(expand_blocks(f, t1, t2, lam=lam), is_numpy)


def jntk(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
         activation: str | Activation = "gelu", lam: float | None = None,
         dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> ArrayLike:
    """JNTK blocks Θ(x1_i, x2_j), shape (n1, n2, d0+1, d0+1); Θ_λ when ``lam`` is given."""
    return _blocks("jntk", x1, x2, depth, activation, lam, dtype, device)


def jacobian_nngp(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
                  activation: str | Activation = "gelu", lam: float | None = None,
                  dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> ArrayLike:
    """Jacobian NNGP blocks Σ^(L)(x1_i, x2_j), shape (n1, n2, d0+1, d0+1)."""
    return _blocks("nngp", x1, x2, depth, activation, lam, dtype, device)


def _plain(kind: str, x1: ArrayLike, x2: ArrayLike | None, depth: int,
           activation: str | Activation, dtype: torch.dtype | None,
           device: torch.device | str | None) -> ArrayLike:
    depth = _check_depth(depth)
    act = get_activation(activation)
    t1, t2, is_numpy = _prepare(x1, x2, dtype, device)
    with torch.no_grad():
        A, sigma, C = _inner_products(t1, t2)
        theta = sigma
        for _ in range(depth):
            F, G = act.dual_values(A, sigma, C)
            theta = F + theta * G
            sigma = F
            A, C = act.dual_values(A, A, A)[0], act.dual_values(C, C, C)[0]
    return _out(theta if kind == "jntk" else sigma, is_numpy)


def nngp(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
         activation: str | Activation = "gelu", dtype: torch.dtype | None = None,
         device: torch.device | str | None = None) -> ArrayLike:
    """Plain NNGP Σ^(L)_00, shape (n1, n2): no Jacobian part, any activation (ReLU too)."""
    return _plain("nngp", x1, x2, depth, activation, dtype, device)


def ntk(x1: ArrayLike, x2: ArrayLike | None = None, *, depth: int,
        activation: str | Activation = "gelu", dtype: torch.dtype | None = None,
        device: torch.device | str | None = None) -> ArrayLike:
    """Plain NTK Θ_00, shape (n1, n2): no Jacobian part, any activation (ReLU too)."""
    return _plain("jntk", x1, x2, depth, activation, dtype, device)


def to_gram(blocks: ArrayLike) -> ArrayLike:
    """(n1, n2, p, p) blocks → (n1·p, n2·p) matrix, point-major (row i·p + α)."""
    n1, n2, p, q = blocks.shape
    if isinstance(blocks, torch.Tensor):
        return blocks.permute(0, 2, 1, 3).reshape(n1 * p, n2 * q)
    return np.ascontiguousarray(np.transpose(blocks, (0, 2, 1, 3))).reshape(n1 * p, n2 * q)
