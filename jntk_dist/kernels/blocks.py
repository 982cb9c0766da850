"""The dense expansion: from the 8 fields to (d0+1)×(d0+1) blocks and point-major Gram rows.

The block itself (which field stands on which term) and Λ are the block record's
(:mod:`.record`: :data:`~.record.BLOCK_TERMS`, :class:`~.record.Block`,
:class:`~.record.LambdaWeights`); this module writes its row factors out densely, in place. The
drivers that choose chunk sizes and the compiled path live in :mod:`.compute`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .record import Block

__all__ = ["block_row_factors", "to_gram"]

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor

EXPANSION_CHUNK = 1 << 19  # block entries whose right factors are formed at once (4 MiB)
CACHE_ENTRIES = 1 << 19  # output entries written per in-place pass (4 MiB, in L3)


def block_row_factors(x1: Tensor, x2: Tensor,
                      field_rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The blocks of rows x1 (r, d0) against columns x2 (n2, d0), fields ``field_rows`` (8 of
    (r, n2)), grouped by their left factor: :meth:`.record.Block.row_factors`."""
    return Block(field_rows).row_factors(x1, x2)


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
