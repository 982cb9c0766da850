"""The pca coarse factor held in block rows by Ray actors: a blocked right-looking Cholesky and
blocked triangular solves, driven from the driver (docs/structured.md, "Distributed coarse factor").

The coarse matrix C = Tᵀ(A + μI)T (M = N(k+2) square, :mod:`.coarse`) is cut into ``n_blocks``
block rows aligned to points (block row I: the coordinates of points [lo_I, hi_I)); block row I
lives on actor I mod ``n_actors``, which keeps only its lower part, the tiles C_IJ for J ≤ I, as
one float64 torch tensor (hi_I(k+2) columns) on its own GPU when it was given one
(``num_gpus_per_actor``), else in RAM; tiles travel between actors as numpy. Each actor forms its
own block rows by row tiles of at most ``tile`` points (:func:`coarse_tile`:
:meth:`PcaCoarsePreconditioner._coarse_rows`, the same formula and code as the local path) from X,
its PCA parts and recomputed fields (:class:`ShippedRows`, O(N d0) numbers sent once); where the
operator reads its fields from elsewhere (a store, an array-like) the driver forms the tiles and
sends each to its owner at once. The driver never holds C.

Factor, step K = 0 … n_blocks−1: the owner of K factors C_KK = L_KK L_KKᵀ; every actor solves its
panels L_IK = C_IK L_KK⁻ᵀ (I > K); every actor subtracts L_IK L_JKᵀ from its tiles C_IJ (K < J ≤
I). L_KK and the panels go between actors through the object store; the driver only waits for each
step's small acknowledgements (1 + 2·n_actors actor calls a step). Solves: forward, block row I's
owner forms y_I = L_II⁻¹(b_I − Σ_{J<I} L_IJ y_J) from the y_J already made; backward, from the last
block, x_J = L_JJ⁻ᵀ(y_J − Σ_{I>J} U_I[J]) with U_I = L_I,<Iᵀ x_I made by the owner of I (2·n_blocks
actor calls an application).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..kernels import FIELD_NAMES
from ..kernels.devices import choose_device
from ..operators.distributed import row_blocks
from ..operators.field_sources import RecomputedFields
from .coarse import COARSE_BACKENDS, PcaCoarsePreconditioner

__all__ = ["DistributedCoarseFactor", "RayPcaCoarsePreconditioner", "ShippedRows", "coarse_tile",
           "recomputing_source"]

Tensor = torch.Tensor
NOT_PD = "is not positive definite: use a ridge μ > 0"


class _CoarseBlockRows:
    """Holds the lower tiles of some block rows of C (float64, on its GPU when it was given one,
    else in RAM), overwritten by those of L; what it returns goes out as numpy."""

    def __init__(self, bounds: list[tuple[int, int]], mine: list[int],
                 use_gpu: bool = False) -> None:
        self.bounds, self.device = bounds, choose_device(use_gpu=use_gpu)
        self.rows = {I: torch.zeros((bounds[I][1] - bounds[I][0], bounds[I][1]),
                                    dtype=torch.float64, device=self.device) for I in mine}

    def _here(self, a: np.ndarray) -> Tensor:
        # a copy: the arrays Ray hands over are read-only
        return torch.tensor(a, dtype=torch.float64, device=self.device)

    def tile(self, I: int, J: int) -> Tensor:
        lo, hi = self.bounds[J]
        return self.rows[I][:, lo:hi]

    def put_rows(self, I: int, offset: int, rows: np.ndarray) -> int:
        self.rows[I][offset:offset + rows.shape[0]] = self._here(rows[:, :self.bounds[I][1]])
        return rows.shape[0]

    def factor_diag(self, K: int) -> np.ndarray:
        A = self.tile(K, K)
        L, info = torch.linalg.cholesky_ex(A)  # reads the lower triangle
        if int(info) != 0:
            raise ValueError(f"the coarse matrix Tᵀ(A+μI)T {NOT_PD}")
        A.copy_(L)
        return L.cpu().numpy()

    def panel(self, K: int, L_KK: np.ndarray) -> dict[int, np.ndarray]:
        L, out = self._here(L_KK), {}
        for I in self.rows:
            if I > K:
                A = self.tile(I, K)
                A.copy_(torch.linalg.solve_triangular(L, A.mT, upper=False).mT)
                out[I] = A.cpu().numpy()
        return out

    def trailing(self, K: int, *panels: dict[int, np.ndarray]) -> int:
        P = {I: L for part in panels for I, L in part.items()}
        for I in self.rows:
            for J in range(K + 1, I + 1) if I > K else ():
                self.tile(I, J).sub_(self._here(P[I]) @ self._here(P[J]).mT)
        return len(P)

    def forward(self, I: int, b: np.ndarray, *ys: np.ndarray) -> np.ndarray:
        acc = self._here(b)
        for J, y in enumerate(ys):
            acc -= self.tile(I, J) @ self._here(y)
        return torch.linalg.solve_triangular(self.tile(I, I), acc, upper=False).cpu().numpy()

    def backward(self, J: int, y: np.ndarray, *later: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.bounds[J]
        acc = self._here(y)
        for U in later:
            acc -= self._here(U[lo:hi])
        x = torch.linalg.solve_triangular(self.tile(J, J).mT, acc, upper=True)
        return x.cpu().numpy(), (self.rows[J][:, :lo].mT @ x).cpu().numpy()

    def block_row(self, I: int) -> np.ndarray:
        return self.rows[I].cpu().numpy()

    def assemble(self, src: "ShippedRows", tile: int) -> int:
        """Form this actor's block rows of C by row tiles of at most ``tile`` points (on the
        CPU; each tile then moves to where the rows are held)."""
        p = src.k + 2
        for I, rows in self.rows.items():
            lo, hi = self.bounds[I][0] // p, self.bounds[I][1] // p
            for s in range(lo, hi, tile):
                part = coarse_tile(src, slice(s, min(s + tile, hi)))
                rows[(s - lo) * p:(min(s + tile, hi) - lo) * p] = part[:, :rows.shape[1]].to(
                    rows.device)
        return len(self.rows)


def _block_row_actor_class() -> Any:
    import ray

    return ray.remote(_CoarseBlockRows)


class DistributedCoarseFactor:
    """The lower Cholesky factor of an M×M SPD matrix held in block rows by Ray actors
    (module docstring). ``bounds``: the block rows' [lo, hi) coordinate ranges, consecutive from
    0 to M; block row I lives on actor I mod ``n_actors`` (on a GPU of its own with
    ``num_gpus_per_actor`` > 0). Fill it with :meth:`put_rows`, then
    :meth:`factor`; :meth:`solve` applies (L Lᵀ)⁻¹. ``messages`` counts the actor calls made.
    Requires a running Ray; :meth:`shutdown` frees the actors."""

    def __init__(self, bounds: list[tuple[int, int]], n_actors: int = 2,
                 num_cpus_per_actor: float = 1.0, num_gpus_per_actor: float = 0.0) -> None:
        import ray

        if not ray.is_initialized():
            raise ValueError("the distributed coarse factor needs a running Ray: call ray.init() "
                             "first, or use the local pca preconditioner")
        self.bounds = [(int(lo), int(hi)) for lo, hi in bounds]
        ends = [0] + [hi for _, hi in self.bounds[:-1]]
        if not self.bounds or any(lo != e or hi <= lo for (lo, hi), e in zip(self.bounds, ends)):
            raise ValueError("block rows must be consecutive non-empty ranges from 0; "
                             f"got {bounds}")
        if int(n_actors) < 1:
            raise ValueError(f"n_actors must be at least 1; got {n_actors}")
        self.size, self.n_blocks = self.bounds[-1][1], len(self.bounds)
        self.n_actors = max(1, min(int(n_actors), self.n_blocks))
        actor = _block_row_actor_class().options(num_cpus=num_cpus_per_actor,
                                                 num_gpus=num_gpus_per_actor)
        self.actors = [actor.remote(self.bounds, list(range(a, self.n_blocks, self.n_actors)),
                                    num_gpus_per_actor > 0) for a in range(self.n_actors)]
        self.messages = 0

    def owner(self, I: int) -> Any:
        """The actor holding block row I."""
        return self.actors[I % self.n_actors]

    def put_rows(self, I: int, offset: int, rows: np.ndarray) -> Any:
        """Send rows [offset, offset + len(rows)) of block row I (full width or at least up to
        the block's diagonal end) to its owner; returns the acknowledgement's reference."""
        self.messages += 1
        return self.owner(I).put_rows.remote(I, offset, np.ascontiguousarray(rows))

    def factor(self) -> None:
        """The blocked right-looking Cholesky, one step per block column; raises ValueError with
        the problem named if the matrix is not positive definite."""
        import ray

        try:
            for K in range(self.n_blocks):
                L_KK = self.owner(K).factor_diag.remote(K)
                panels = [a.panel.remote(K, L_KK) for a in self.actors]
                acks = [a.trailing.remote(K, *panels) for a in self.actors]
                self.messages += 1 + 2 * len(self.actors)
                ray.get(acks)
        except ray.exceptions.RayTaskError as err:
            if NOT_PD in str(err):
                raise ValueError(f"the coarse matrix Tᵀ(A+μI)T {NOT_PD}") from None
            raise

    def solve(self, b: np.ndarray) -> np.ndarray:
        """(L Lᵀ)⁻¹ b for b (M, m), by the blocked forward and backward solves."""
        import ray

        b = np.asarray(b, dtype=np.float64)
        ys: list[Any] = []
        for I, (lo, hi) in enumerate(self.bounds):
            ys.append(self.owner(I).forward.remote(I, b[lo:hi], *ys))
        xs: list[Any] = [None] * self.n_blocks
        later: list[Any] = []
        for J in reversed(range(self.n_blocks)):
            backward = self.owner(J).backward.options(num_returns=2)
            xs[J], U = backward.remote(J, ys[J], *later)
            later.append(U)
        self.messages += 2 * self.n_blocks
        return np.concatenate(ray.get(xs), axis=0)

    def lower(self) -> np.ndarray:
        """The whole factor L gathered on the driver (M×M; for checks on small problems)."""
        import ray

        L = np.zeros((self.size, self.size))
        parts = ray.get([self.owner(I).block_row.remote(I) for I in range(self.n_blocks)])
        for (lo, hi), part in zip(self.bounds, parts):
            L[lo:hi, :hi] = part
        return np.tril(L)

    def bytes_per_actor(self) -> list[int]:
        """float64 bytes of the tiles each actor holds."""
        held = [0] * self.n_actors
        for I, (lo, hi) in enumerate(self.bounds):
            held[I % self.n_actors] += (hi - lo) * hi * 8
        return held

    def shutdown(self) -> None:
        """Kill the actors (the factor cannot be applied afterwards)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


class _RowWindow:
    """Rows [start, start + t) of a (N, k+2, N, k+2) coarse matrix as a (t, …) buffer:
    :meth:`PcaCoarsePreconditioner._coarse_rows` writes into it by global point rows."""

    def __init__(self, buf: Tensor, start: int) -> None:
        self.buf, self.start = buf, start

    def __setitem__(self, key: tuple[Any, ...], value: Tensor) -> None:
        rows = key[0]
        local = slice(rows.start - self.start, rows.stop - self.start)
        self.buf[(local,) + tuple(key[1:])] = value


def coarse_tile(src: Any, rows: slice) -> Tensor:
    """Rows ``rows`` (points) of C, (t(k+2), N(k+2)), as the local
    :meth:`PcaCoarsePreconditioner._coarse_matrix` makes them: its block formula
    (``src._coarse_rows``), μ on the diagonal, the q-coordinates of points inside span V set to
    the identity. ``src``: the preconditioner, or :class:`ShippedRows` on an actor."""
    n, p, t = src.n, src.k + 2, rows.stop - rows.start
    buf = torch.empty((t, p, n, p), dtype=src.Z.dtype, device=src.Z.device)
    d = torch.cat([src.Z, src.rho[:, None]], 1)
    src._coarse_rows(_RowWindow(buf, rows.start), rows, d)
    C = buf.reshape(t * p, n * p)
    first = rows.start * p
    local = torch.arange(t * p, device=C.device)
    C[local, first + local] += src.mu
    dead = (~src.mask).nonzero().flatten() * p + (src.k + 1)
    if dead.numel():
        mine = dead[(dead >= first) & (dead < first + t * p)]
        C[mine - first, :] = 0.0
        C[:, dead] = 0.0
        C[mine - first, mine] = 1.0
    return C


class ShippedRows:
    """What the rows of C need, without the factors or held fields (X, its PCA parts, the
    weights, μ and a field source that recomputes a row tile's fields): small enough to send to
    every actor, which then forms its own block rows (:func:`coarse_tile`)."""

    _coarse_rows = PcaCoarsePreconditioner._coarse_rows  # the one formula, not a copy

    def __init__(self, P: PcaCoarsePreconditioner, source: RecomputedFields) -> None:
        self.n, self.k, self.mu, self.weights, self.source = P.n, P.k, P.mu, P.weights, source
        self.X, self.Z, self.Qr, self.rho, self.mask = (
            t.cpu() for t in (P.X, P.Z, P.Qr, P.rho, P.mask))

    def _fields_of(self, rows: slice) -> dict[str, Tensor]:
        return dict(zip(FIELD_NAMES, self.source.tile(rows)))


def recomputing_source(op: Any) -> RecomputedFields | None:
    """A CPU field source that recomputes the operator's fields from X (its kind, depth and
    activation), or None when they are read from elsewhere (a store, an array-like, an
    accessor: ``mode`` other than memory or recompute) or the depth is unknown."""
    desc = getattr(op, "description", {})
    if desc.get("depth") is None or desc.get("mode") not in ("memory", "recompute"):
        return None
    fields_dtype = desc.get("fields_dtype")
    return RecomputedFields(op.x1.cpu(), None, depth=int(desc["depth"]),
                            activation=str(desc.get("activation", "gelu")),
                            kind=str(desc.get("kind", "jntk")), compile=desc.get("compile"),
                            fields_dtype=getattr(torch, fields_dtype) if fields_dtype else None)


class RayPcaCoarsePreconditioner(PcaCoarsePreconditioner):
    """The pca preconditioner (:class:`.coarse.PcaCoarsePreconditioner`, same coarse space and
    application) with its coarse factor held in block rows by ``n_actors`` Ray actors
    (:class:`DistributedCoarseFactor`). ``n_blocks``: block rows of C (default 2·n_actors);
    ``assemble``: where C's row tiles are formed — ``"actors"`` (each its own, fields recomputed
    from X), ``"driver"`` (formed there and sent), ``"auto"`` (actors when the operator's fields
    can be recomputed); ``assembled_on`` says which; ``num_gpus_per_actor``: each actor holds its
    tiles on a GPU of its own. Other keywords as the local one. Needs a
    running Ray; call :meth:`shutdown` to free the actors."""

    name = "pca"

    def __init__(self, op: Any, ridge: float = 0.0, *, n_actors: int = 2,
                 n_blocks: int | None = None, num_cpus_per_actor: float = 1.0,
                 num_gpus_per_actor: float = 0.0, assemble: str = "auto",
                 **options: Any) -> None:
        if assemble not in ("auto", "actors", "driver"):
            raise ValueError(f"assemble must be auto, actors or driver; got {assemble!r}")
        self.assemble = assemble
        self.n_actors, self.num_cpus_per_actor = int(n_actors), float(num_cpus_per_actor)
        self.num_gpus_per_actor = float(num_gpus_per_actor)
        self.n_blocks = int(n_blocks or 2 * self.n_actors)
        super().__init__(op, ridge, **options)

    def _factor_coarse(self) -> None:
        import ray

        n, p = self.n, self.k + 2
        points = row_blocks(n, self.n_blocks)
        self.factor = DistributedCoarseFactor([(lo * p, hi * p) for lo, hi in points],
                                              self.n_actors, self.num_cpus_per_actor,
                                              self.num_gpus_per_actor)
        source = recomputing_source(self.op) if self.assemble != "driver" else None
        if self.assemble == "actors" and source is None:
            raise ValueError("assemble='actors' needs an operator that recomputes its fields "
                             "from X (kind, depth, activation); use assemble='driver'")
        self.assembled_on = "actors" if source is not None else "driver"
        if source is not None:
            shipped = ray.put(ShippedRows(self, source))
            self.factor.messages += len(self.factor.actors)
            ray.get([a.assemble.remote(shipped, self.tile) for a in self.factor.actors])
        else:
            for I, (lo, hi) in enumerate(points):
                ray.get([self.factor.put_rows(I, (s - lo) * p,
                                              coarse_tile(self, slice(s, min(s + self.tile, hi)))
                                              [:, :hi * p].cpu().numpy())
                         for s in range(lo, hi, self.tile)])
        self.factor.factor()
        return None

    def _coarse_solve(self, b: Tensor) -> Tensor:
        n, p, m = b.shape
        x = self.factor.solve(b.reshape(n * p, m).cpu().numpy())
        return torch.as_tensor(x, dtype=b.dtype, device=b.device).reshape(n, p, m)

    def shutdown(self) -> None:
        """Free the actors holding the coarse factor."""
        self.factor.shutdown()


COARSE_BACKENDS["ray"] = RayPcaCoarsePreconditioner
