"""The public kernel computations: fields, blocks, Gram matrices (eager or compiled).

These drivers take pairs in cache- or device-sized blocks, pick the compiled or the eager route
(:mod:`.compile`) and use the symmetry of one point set; the mathematics they run is in
:mod:`.recursion` (the layer recursion) and :mod:`.blocks` (the block expansion and Λ).
Kernels are reported κ⁻²-scaled (the network's kernels are κ² times these).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from .activations import Activation, get_activation
from .blocks import EXPANSION_CHUNK, expand_rows
from .compile import (FUSED_EXPANSION_ROWS, block_side, compile_enabled, compiled_expansion,
                      compiled_layer)
from .inputs import (KernelKind, as_output, check_depth, check_kind, prepare)
from .record import FIELD_NAMES, MIRROR_ORDER, Diagonal, Jet, KernelFields, lambda_factors
from .recursion import (chain_slice, diagonal_chain, inner_products, jet_recursion,
                        value_recursion)

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor


# ---- fields -----------------------------------------------------------------------------


def _pair_recursion(b: Tensor, A_chain: list[Diagonal], C_chain: list[Diagonal],
                    act: Activation, kind: str, compile: bool) -> Jet:
    """Σ^(L) or Θ^(L) as a Jet for the pairs of b = <x, x'> (n1, n2), given the diagonal chains
    of the two point sets ((n1, 1) and (1, n2) tensors)."""
    if not (compile and act.has_closed_form):
        return jet_recursion(b, A_chain, C_chain, act, kind)
    side = block_side(b.device)
    shape = (side, side) if tuple(b.shape) == (side, side) else None
    step = compiled_layer(act, kind, b.dtype, shape, b.device)
    # fresh contiguous tensors: inputs that are views or alias each other make dynamo
    # recompile (the chains come from chain_slice, fresh already)
    sigma = Jet(k=b, k_b=1.0)  # Σ^(0) = <x, x'>
    parts = tuple(torch.as_tensor(p, dtype=b.dtype, device=b.device).expand_as(b).clone(
        memory_format=torch.contiguous_format) for p in sigma.parts() * 2)
    for A, C in zip(A_chain, C_chain):
        parts = step(A.v, A.d, C.v, C.d, *parts)
    return Jet(*parts[8:])


def _field_tensors(x1: Tensor, x2: Tensor, depth: int, act: Activation, kind: str,
                   compile: bool = False) -> list[Tensor]:
    """The 8 fields (FIELD_NAMES order), each (n1, n2), for all pairs of rows of x1, x2.

    Pairs are taken in square blocks. For one point set (``x2 is x1``) only the blocks on and
    right of the diagonal are computed (≈ 62 % of the pairs for 4 × 4 blocks) and the rest is
    mirrored through the (x', x) symmetry.
    """
    act.require_smooth()
    a, b, c = inner_products(x1, x2)
    symmetric = x2 is x1
    A_chain = diagonal_chain(act, a, depth)
    C_chain = A_chain if symmetric else diagonal_chain(act, c, depth)
    n1, n2 = b.shape
    out = [torch.empty_like(b) for _ in FIELD_NAMES]
    side = block_side(b.device)
    col_parts = {c0: chain_slice(C_chain, c0, min(n2, c0 + side), as_row=True)
                 for c0 in range(0, n2, side)}
    for r0 in range(0, n1, side):
        r1 = min(n1, r0 + side)
        A_part = chain_slice(A_chain, r0, r1, as_row=False)
        for c0 in range(r0 if symmetric else 0, n2, side):
            c1 = min(n2, c0 + side)
            jet = _pair_recursion(b[r0:r1, c0:c1], A_part, col_parts[c0], act, kind, compile)
            for o, t in zip(out, jet.parts()):
                o[r0:r1, c0:c1] = t
        if symmetric:
            for o, src in zip(out, MIRROR_ORDER):
                o[r0:r1, :r0] = out[src][:r0, r0:r1].T
    return out


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
    depth, kind = check_depth(depth), check_kind(kind)
    act = get_activation(activation)
    t1, t2, _ = prepare(x1, x2, dtype, device)
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


# ---- blocks and Gram matrices -----------------------------------------------------------


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
    (n1, d0), n2 = t1.shape, t2.shape[0]
    if f.shape != (n1, n2):
        raise ValueError(f"fields of shape {f.shape} do not match inputs ({n1}, {n2})")
    p = d0 + 1
    if out is None:
        out = torch.empty((n1, n2, p, p), dtype=f.k.dtype, device=f.k.device)
    # Λ·K·Λ is applied after the sum with lambda_scale's factors, so Θ_λ here equals a stored
    # Θ scaled by a reader bit for bit
    scale = None if lam is None else lambda_factors(lam, p, t1)
    rows_out = out.permute(0, 2, 1, 3)  # (n1, d0+1, n2, d0+1): the Gram's row order
    fused = compiled_expansion() if compile_enabled(compile) else None
    on_cpu = out.device.type == "cpu"
    chunk = max(1, EXPANSION_CHUNK // max(1, n2 * p * p)) if on_cpu else n1
    if fused is not None:
        chunk = FUSED_EXPANSION_ROWS if on_cpu else n1
        fused_scale = lambda_factors(1.0, p, t1) if scale is None else scale
    with torch.no_grad():
        for r0 in range(0, n1, chunk):
            r1 = min(n1, r0 + chunk)
            field_rows = tuple(getattr(f, name)[r0:r1] for name in FIELD_NAMES)
            if fused is not None and r1 - r0 == chunk:  # one static shape per column count
                fused(rows_out[r0:r1], t1[r0:r1], t2, *fused_scale, *field_rows)
            else:
                expand_rows(rows_out[r0:r1], t1[r0:r1], t2, scale, field_rows, on_cpu)
    return out


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
    t, _, is_numpy = prepare(x, None, dtype, device)
    f = fields(t, depth=depth, activation=activation, kind=check_kind(kind), compile=compile)
    return as_output(expand_gram(f, t, lam=lam, compile=compile), is_numpy)


def gram_strips(x: Tensor, out: np.ndarray, *, depth: int, activation: str | Activation,
                kind: KernelKind = "jntk", lam: float | None = None, points_per_strip: int,
                compile: bool | None = None) -> Iterator[int]:
    """Fill the point-major Gram of one dataset into ``out`` (numpy, e.g. a memmap) strip by
    strip, yielding the number of points done after each: a strip's rows are computed right
    of the diagonal only, the rest is the transpose of the strips above (the Gram is
    symmetric). Memory: one strip."""
    n, p = x.shape[0], x.shape[1] + 1
    for r0 in range(0, n, points_per_strip):
        r1 = min(n, r0 + points_per_strip)
        f = fields(x[r0:r1], x[r0:], depth=depth, activation=activation, kind=kind,
                   compile=compile)
        right = expand_gram(f, x[r0:r1], x[r0:], lam=lam, compile=compile)
        out[r0 * p:r1 * p, r0 * p:] = right.cpu().numpy()
        out[r0 * p:r1 * p, :r0 * p] = out[:r0 * p, r0 * p:r1 * p].T
        yield r1


def _blocks(kind: str, x1: ArrayLike, x2: ArrayLike | None, depth: int,
            activation: str | Activation, lam: float | None, dtype: torch.dtype | None,
            device: torch.device | str | None) -> ArrayLike:
    t1, t2, is_numpy = prepare(x1, x2, dtype, device)
    f = fields(t1, t2, depth=depth, activation=activation, kind=kind)  # type: ignore[arg-type]
    with torch.no_grad():
        return as_output(expand_blocks(f, t1, t2, lam=lam), is_numpy)


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
    depth = check_depth(depth)
    act = get_activation(activation)
    t1, t2, is_numpy = prepare(x1, x2, dtype, device)
    with torch.no_grad():
        return as_output(value_recursion(t1, t2, depth, act, kind), is_numpy)


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


def compile_warm_up(activation: str | Activation, kind: KernelKind = "jntk",
                    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                    gram_columns: tuple[int, int] | None = None) -> None:
    """Compile (or load from torch's on-disk cache) the layer steps now, e.g. while a worker
    starts, so that the first tile does not pay for it (closed-form activations only).
    ``gram_columns=(n2, d0)`` also compiles the fused expansion of Gram rows against n2 points."""
    act, device = get_activation(activation), torch.device(device)
    if act.has_closed_form:
        side = block_side(device)
        for shape in ((side, side), None):
            compiled_layer(act, check_kind(kind), dtype, shape, device)
    if gram_columns is not None:
        n2, d0 = gram_columns
        rows = FUSED_EXPANSION_ROWS if device.type == "cpu" else n2  # a square tile on GPUs
        ones = torch.ones((rows, n2), dtype=dtype, device=device)
        f = KernelFields(*(ones.clone() for _ in FIELD_NAMES))
        x1 = torch.ones((rows, d0), dtype=dtype, device=device)
        x2 = torch.ones((n2, d0), dtype=dtype, device=device)
        expand_gram(f, x1, x2, compile=True)
