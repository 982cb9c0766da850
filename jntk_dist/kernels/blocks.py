"""From the 8 fields to (d0+1)×(d0+1) blocks and point-major Gram rows; Θ_λ = ΛΘΛ.

The block of a pair (x, x') (docs/design.md, "The structure"), index 0 = output:

    K_00 = κ,  K_α0 = 2κ_a x_α + κ_b x'_α,  K_0β = κ_b x_β + 2κ_c x'_β,
    K_αβ = κ_b δ_αβ + 2κ_ab x_α x_β + 4κ_ac x_α x'_β + κ_bb x'_α x_β + 2κ_bc x'_α x'_β.

Λ = diag(1, √λ, …, √λ); the one home of its factors is :func:`lambda_weights` /
:func:`lambda_factors`. This module holds the mathematics only; the drivers that choose chunk
sizes and the compiled path live in :mod:`.compute`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .inputs import check_lam

__all__ = ["lambda_weights", "lambda_factors", "lambda_scale", "block_row_factors", "to_gram"]

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor

EXPANSION_CHUNK = 1 << 19  # block entries whose right factors are formed at once (4 MiB)
CACHE_ENTRIES = 1 << 19  # output entries written per in-place pass (4 MiB, in L3)


def lambda_weights(lam: float | None) -> tuple[float, float]:
    """(√λ, λ): what Λ·K·Λ multiplies output–Jacobian and Jacobian–Jacobian entries by;
    (1, 1) for ``lam=None`` (the unscaled kernel). The one λ check runs here."""
    if lam is None:
        return 1.0, 1.0
    lam = check_lam(lam)
    return math.sqrt(lam), lam


def lambda_factors(lam: float, p: int, like: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """The entries of ΛKΛ are K times, per block column: (1, √λ, …, √λ) in row 0 and
    (√λ, λ, …, λ) in rows α ≥ 1 (numpy or torch, like ``like``)."""
    root, lam = lambda_weights(lam)
    row0, rest = np.full(p, root), np.full(p, lam)
    row0[0], rest[0] = 1.0, root
    if isinstance(like, torch.Tensor):
        return (torch.as_tensor(row0, dtype=like.dtype, device=like.device),
                torch.as_tensor(rest, dtype=like.dtype, device=like.device))
    return row0.astype(like.dtype, copy=False), rest.astype(like.dtype, copy=False)


def lambda_scale(blocks: ArrayLike, lam: float) -> ArrayLike:
    """Θ_λ = ΛΘΛ in place on (…, d0+1, d0+1) blocks, Λ = diag(1, √λ, …, √λ); returns blocks."""
    row0, rest = lambda_factors(lam, blocks.shape[-1], blocks)
    blocks[..., 0, :] *= row0
    blocks[..., 1:, :] *= rest
    return blocks


def block_row_factors(x1: Tensor, x2: Tensor,
                      field_rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For the blocks of rows x1 (r, d0) against columns x2 (n2, d0), with x̂ = (0, x) and e0
    the output index:

        row 0:        K[0, :] = (κ, κ_b x + 2κ_c x')
        rows α ≥ 1:   K[α, :] = x_α R + x'_α R' + κ_b e_α,
                      R = 2κ_a e0 + 2κ_ab x̂ + 4κ_ac x̂',   R' = κ_b e0 + κ_bb x̂ + 2κ_bc x̂',

    i.e. the block formula grouped by its left factor. Returns row 0, R, R' (each
    (r, n2, d0+1)) and κ_b (r, n2).
    """
    k, k_a, k_b, k_c, k_ab, k_ac, k_bb, k_bc = (t[..., None] for t in field_rows)
    xr, xc = x1[:, None, :], x2[None, :, :]
    row0 = torch.cat([k, k_b * xr + 2 * k_c * xc], dim=-1)
    right = torch.cat([2 * k_a, 2 * k_ab * xr + 4 * k_ac * xc], dim=-1)
    right_p = torch.cat([k_b, k_bb * xr + 2 * k_bc * xc], dim=-1)
    return row0, right, right_p, k_b[..., 0]


def expand_rows(rows_out: Tensor, x1: Tensor, x2: Tensor, scale: tuple[Tensor, Tensor] | None,
                field_rows: tuple[Tensor, ...], on_cpu: bool) -> None:
    """Eager expansion into rows_out (r, d0+1, n2, d0+1) in place: the Jacobian rows are
    written in cache-sized groups so that the add, the diagonal and Λ find them in cache."""
    row0, right, right_p, diag = block_row_factors(x1, x2, field_rows)
    if scale is not None:
        row0 *= scale[0]
    rows_out[:, 0] = row0
    r, d0, n2 = x1.shape[0], x1.shape[1], x2.shape[0]
    step = max(1, CACHE_ENTRIES // max(1, d0 * n2 * (d0 + 1))) if on_cpu else r
    x2_t = x2.T[None, :, :, None]
    for s0 in range(0, r, step):
        s = slice(s0, min(r, s0 + step))
        jac = rows_out[s, 1:]
        torch.mul(x1[s, :, None, None], right[s, None], out=jac)
        jac.addcmul_(x2_t, right_p[s, None])
        rows_out[s, 1:, :, 1:].diagonal(dim1=1, dim2=3).add_(diag[s, :, None])
        if scale is not None:
            jac *= scale[1]


def expansion_fused(rows_out: Tensor, x1: Tensor, x2: Tensor, row0_scale: Tensor,
                    rest_scale: Tensor, *field_rows: Tensor) -> None:
    """:func:`expand_rows` as one expression, for torch.compile (one pass over the output).
    Only the final three-term sum is written twice (in-place ops above, one expression here:
    inductor's functionalisation got the in-place form wrong); the tests hold them equal."""
    row0, right, right_p, diag = block_row_factors(x1, x2, field_rows)
    d0 = x1.shape[1]
    shift = (torch.arange(d0, device=x1.device)[:, None] + 1
             == torch.arange(d0 + 1, device=x1.device)[None, :]).to(x1.dtype)  # e_α, α ≥ 1
    rows_out[:, 0].copy_(row0 * row0_scale)
    rows_out[:, 1:].copy_((x1[:, :, None, None] * right[:, None]
                           + x2.T[None, :, :, None] * right_p[:, None]
                           + shift[None, :, None, :] * diag[:, None, :, None]) * rest_scale)


def to_gram(blocks: ArrayLike) -> ArrayLike:
    """(n1, n2, p, p) blocks → (n1·p, n2·p) matrix, point-major (row i·p + α)."""
    n1, n2, p, q = blocks.shape
    if isinstance(blocks, torch.Tensor):
        return blocks.permute(0, 2, 1, 3).reshape(n1 * p, n2 * q)
    return np.ascontiguousarray(np.transpose(blocks, (0, 2, 1, 3))).reshape(n1 * p, n2 * q)
