"""The PCA coarse-space preconditioner ("pca") for (Θ_λ(X, X) + μI) α = y on real images.

Why: on image data the function values are almost determined by the gradients (the value block's
Schur complement is 2–140× smaller than the value block in every direction), and that coupling
lives in the top principal directions of X. Preconditioners that treat values and gradients
apart (kron, two_level) cannot see it; this one eliminates it exactly on a small per-point coarse
space and smooths the rest with the Kronecker factor (docs/structured.md, "Real images").

Coarse space, per point i (k + 2 coordinates): T_i = span{e₀} ⊕ span{v₁ … v_k} ⊕ span{q_i}, with
V = [v₁ … v_k] the top-k right singular vectors of X, z_i = Vᵀx_i, r_i = x_i − V z_i,
ρ_i = |r_i|, q_i = r_i/ρ_i (dropped where ρ_i ≈ 0), so x_i ∈ T_i; k = 0 is two_level's space.
C = Tᵀ(A + μI)T (N(k+2) square) is built from the 8 fields, with E_i = [V, q_i],
a_i = E_iᵀx_i = (z_i, ρ_i), b_ij = E_iᵀx_j = (z_j, γ_ij), c_ji = E_jᵀx_i = (z_i, γ_ji),
d_j = E_jᵀx_j = (z_j, ρ_j), γ_ij = ⟨q_i, x_j⟩, ω_ij = ⟨q_i, q_j⟩:

    C_00 = κ,   C_0β = √λ(κ_b c_ji + 2κ_c d_j),   C_α0 = √λ(2κ_a a_i + κ_b b_ij),
    C_αβ = λ[κ_b blockdiag(I_k, ω_ij) + 2κ_ab a_i c_jiᵀ + 4κ_ac a_i d_jᵀ + κ_bb b_ij c_jiᵀ
             + 2κ_bc b_ij d_jᵀ]   (+ μ on the diagonal).

Application (A-DEF2 form, one coarse solve): z_R = P_R (λK_b + μI)⁻¹ P_R r_J on the complement
of T (exact where x ∈ span V: there A = λK_b ⊗ I), z_V = C⁻¹(Tᵀr − Tᵀ A z_R), z = T z_V + z_R.
PCG starts from x₀ = T C⁻¹ Tᵀ b (:meth:`PcaCoarsePreconditioner.coarse_start`), so Tᵀ r_k = 0
and the iterates equal the symmetric balancing ones. Set-up: the 8 N² fields (held, or
recomputed by row tiles when they do not fit: every term of C's rows and of Tᵀ A [0; W] sums over
j within a row i), the Kronecker factor (float32 storage is safe: 974 against 960 iterations on
synthetic images, N = 256, μ = 1e-3) and the dense coarse factor, O((N(k+2))³), factored in place
and kept in float64 — a float32 coarse factor stalled PCG there (not converged in 1500): the
A-DEF2 form needs an exact coarse solve.
"""

from __future__ import annotations

import math

import torch

from ..kernels import FIELD_NAMES, Block
from ..operators.base import StructuredParts
from .factors import factor_in_place
from .memory import Budget, MemoryPlan, NotEnoughMemoryError, auto_tile_mb, budget
from .registry import Preconditioner, register

__all__ = ["PcaCoarsePreconditioner", "pca_basis", "choose_pca_rank", "coarse_budget",
           "tile_reserve", "pca_plan", "COARSE_BACKENDS"]

Tensor = torch.Tensor


def pca_basis(X: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k right singular vectors V (d0×k) of X and all singular values (descending)."""
    w, U = torch.linalg.eigh(X.T @ X)
    return U.flip(1)[:, :k].contiguous(), w.flip(0).clamp_min(0).sqrt()


def choose_pca_rank(X: Tensor, energy: float = 0.85, k_max: int = 16) -> int:
    """The smallest k whose top-k (uncentred) principal directions hold ``energy`` of ‖X‖²."""
    _, s = pca_basis(X, 0)
    share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    return int(min(k_max, int((share < energy).sum()) + 1))


ROW_TEMPORARIES = 5  # (rows, N, k+1, k+1) float64 tensors alive at once in _coarse_rows


def coarse_budget(device: torch.device, n: int, reserve_bytes: float = 0.0,
                  held: float = 9.0, budget_bytes: float | None = None,
                  entry_bytes: int = 8) -> int:
    """The largest coarse dimension N(k+2) whose set-up fits: the float64 coarse matrix (factored
    in place, (N(k+2))²·8 bytes) in the usable memory (:func:`.memory.usable_bytes`: 60 % of the
    free GPU memory or available RAM, or ``budget_bytes``), beside ``held`` float64 N×N matrices
    (9 with the fields held: the 8 fields and the Kronecker factor; 0.5 when they are streamed
    and the Kronecker factor is float32) and ``reserve_bytes`` (the row tiles of a product and
    of the coarse matrix's set-up, :func:`coarse_tile`); ``entry_bytes``: 4 for the float32
    coarse factor of ``pca_refined`` (:mod:`.refined`)."""
    left = budget(device, budget_bytes).bytes - reserve_bytes - held * n * n * 8
    return int(math.sqrt(left / entry_bytes)) if left > 0 else 0


def coarse_tile(n: int, k: int, reserve_bytes: float, tile: int = 128) -> int:
    """Rows of the coarse matrix formed at once: at most ``tile``, fewer where their
    temporaries ((rows, N, k+1, k+1) float64, :data:`ROW_TEMPORARIES` of them) would pass the
    row-tile reserve."""
    per_row = ROW_TEMPORARIES * n * (k + 1) ** 2 * 8
    return max(1, min(tile, int((reserve_bytes or 512.0 * 2**20) // per_row)))


def pca_plan(n: int, k: int, hold_fields: bool, kron_float32: bool,
             reserve_bytes: float, usable: Budget, device: str,
             entry_bytes: int = 8) -> MemoryPlan:
    """The set-up's peak of the pca preconditioner: the coarse matrix (``entry_bytes`` 8, or 4
    for ``pca_refined``'s float32 factor), the fields if held, the Kronecker factor and the row
    tiles (products' and the coarse rows' temporaries)."""
    held = (8.0 if hold_fields else 0.0) + (0.5 if kron_float32 else 1.0)
    need = (n * (k + 2)) ** 2 * entry_bytes + held * n * n * 8 + reserve_bytes
    fields = "held" if hold_fields else "streamed"
    name = "pca" if entry_bytes == 8 else "pca_refined (float32 coarse factor)"
    return MemoryPlan(f"{name} (k = {k}, fields {fields})", need, 0.0, usable, device)


def tile_reserve(op: object) -> float:
    """Bytes to keep free for a product's row tiles beside a preconditioner: the operator's
    tile budget, at most 4 GiB (:func:`PcaCoarsePreconditioner` shrinks larger ones after)."""
    return min(float(getattr(op, "memory_mb", 0.0)), 4096.0) * 2**20


def _fit_tiles_to_what_is_left(op: object) -> None:
    """On a GPU, shrink the operator's row-tile budget to the one tile rule on the memory the
    set-up left (``memory_mb: auto`` was sized from what was free before it)."""
    x = getattr(op, "x1", None)
    if x is not None and x.device.type == "cuda" and hasattr(op, "memory_mb"):
        op.memory_mb = min(op.memory_mb, auto_tile_mb(x.device))


@register
class PcaCoarsePreconditioner(Preconditioner):
    """Approximates (Θ_λ + μI)⁻¹ by an exact solve on a per-point PCA coarse space and the
    Kronecker factor on its complement (module docstring). ``k``: principal directions in the
    coarse space (None: :func:`choose_pca_rank`, lowered to fit :func:`coarse_budget`; the
    coarse dimension N(k+2) must fit even at k = 0); ``hold_fields``: keep the 8 N×N fields
    (None: when they fit; else they are recomputed by row tiles in the set-up and in every
    application, which then costs about one more product); ``factor_dtype``: storage of the
    Kronecker factor (None: float64 with the fields held, float32 when they are streamed; a
    smoother, it tolerates float32); the coarse factor stays in the operator's precision (the
    A-DEF2 form needs an exact coarse solve: a float32 one stalled PCG; ``pca_refined``,
    :mod:`.refined`, stores it in float32 and refines each coarse solve in float64). ``budget_bytes``: the
    memory the set-up may use (None: :func:`.memory.usable_bytes` of the device)."""

    name = "pca"
    description = ("exact on a per-point PCA coarse space {e0, top-k directions of X, rest of "
                   "x_i}, Kronecker on its complement (images; low-rank X)")
    provides_start = True
    coarse_dtype: torch.dtype | None = None  # the coarse factor's storage (None: the operator's)
    coarse_entry_bytes = 8  # its bytes per entry in the memory plan

    def __init__(self, op: StructuredParts, ridge: float = 0.0, k: int | None = None,
                 energy: float = 0.85, tile: int = 128, hold_fields: bool | None = None,
                 factor_dtype: torch.dtype | None = None,
                 budget_bytes: float | None = None) -> None:
        if not op.is_square:
            raise ValueError("the PCA coarse preconditioner needs the square X–X operator")
        X = self.X = op.x1
        self.op, self.n, self.d0, self.tile = op, X.shape[0], X.shape[1], tile
        self.mu, self.weights = float(ridge), op.weights
        self.lam, self.rl = self.weights.jac, self.weights.root
        self.budget_bytes = budget_bytes
        self.k = self._fit_rank(op, choose_pca_rank(X, energy) if k is None else k, k is None,
                                hold_fields, factor_dtype)
        self.tile = coarse_tile(self.n, self.k, tile_reserve(op), tile)
        self.V, _ = pca_basis(X, self.k)
        self.Z = X @ self.V
        self.R = X - self.Z @ self.V.T  # each x_i outside span V
        rho = torch.linalg.vector_norm(self.R, dim=1)
        self.mask = rho > 1e-7 * torch.linalg.vector_norm(X, dim=1)
        self.rho = torch.where(self.mask, rho, torch.zeros_like(rho))
        self.Qr = torch.where(self.mask[:, None], self.R / rho.clamp_min(1e-300)[:, None],
                              torch.zeros_like(self.R))
        self.F = op.field_matrices(list(FIELD_NAMES)) if self.hold_fields else None
        kb = self._field_matrix("k_b").mul_(self.lam)  # the Kronecker factor first: its
        kb.diagonal().add_(self.mu)  # float64 build is freed before C is made
        self.Lb = factor_in_place(kb, "λK_b + μI").to(self.factor_dtype)
        del kb
        self.Lc = self._factor_coarse()
        _fit_tiles_to_what_is_left(op)

    def _factor_coarse(self) -> Tensor:
        """The coarse factor :meth:`_coarse_solve` uses (here C's Cholesky factor, in place;
        :mod:`.distributed_coarse` holds it in block rows on Ray actors instead)."""
        return factor_in_place(self._coarse_matrix(), "the coarse matrix Tᵀ(A+μI)T")

    @classmethod
    def build(cls, parts: StructuredParts, mu: float, coarse_backend: str = "local",
              **options: object) -> Preconditioner:
        """``coarse_backend``: a name in :data:`COARSE_BACKENDS` — ``"local"`` (this class, or
        the subclass it is called on) or ``"ray"`` (the coarse factor in block rows on Ray
        actors, registered by :mod:`.distributed_coarse`)."""
        if coarse_backend not in COARSE_BACKENDS:
            raise ValueError(f"coarse_backend must be one of {', '.join(COARSE_BACKENDS)}; "
                             f"got {coarse_backend!r}")
        if coarse_backend == "local":
            return cls(parts, mu, **options)  # type: ignore[arg-type]
        if cls is not PcaCoarsePreconditioner:
            raise ValueError(f"coarse_backend {coarse_backend!r} is for the pca preconditioner, "
                             f"not {cls.name}")
        return COARSE_BACKENDS[coarse_backend](parts, mu, **options)  # type: ignore[arg-type]

    def _fit_rank(self, op: StructuredParts, k: int, lower: bool, hold: bool | None,
                  factor_dtype: torch.dtype | None) -> int:
        """k capped at d0 and, when ``lower``, lowered until N(k+2) fits the memory; decides
        ``hold_fields`` and the Kronecker factor's dtype; refuses a coarse space that does not
        fit."""
        device, n, reserve = op.x1.device, self.n, tile_reserve(op)
        usable = budget(device, self.budget_bytes)
        if hold is None:
            hold = 2 * n <= coarse_budget(device, n, reserve, held=9.0, budget_bytes=usable.bytes,
                                          entry_bytes=self.coarse_entry_bytes)
        self.hold_fields = bool(hold)
        self.factor_dtype = factor_dtype or (torch.float64 if hold else torch.float32)
        kron = 1.0 if self.factor_dtype == torch.float64 else 0.5
        largest = coarse_budget(device, n, reserve, held=(8.0 if hold else 0.0) + kron,
                                budget_bytes=usable.bytes, entry_bytes=self.coarse_entry_bytes)
        k = int(min(k, self.d0))
        if lower:
            k = max(0, min(k, largest // n - 2))
        if n * (k + 2) > largest:
            plan = pca_plan(n, k, self.hold_fields, kron == 0.5, reserve, usable, device.type,
                            self.coarse_entry_bytes)
            raise NotEnoughMemoryError(f"the coarse space of the pca preconditioner, N(k+2) = "
                                       f"{n * (k + 2)}, does not fit: {plan.text()}; use "
                                       "preconditioner: nystrom, rpcholesky or kron at this N")
        return k

    # ---- fields by row tiles (held, or recomputed) ---------------------------------------------
    def _row_tiles(self, per_row_bytes: float) -> list[slice]:
        budget = tile_reserve(self.op) or 512.0 * 2**20
        step = max(1, min(self.n, int(budget // max(per_row_bytes, 1.0))))
        return [slice(s, min(s + step, self.n)) for s in range(0, self.n, step)]

    def _fields_of(self, rows: slice) -> dict[str, Tensor]:
        """The 8 fields of rows × all points: slices of the held ones, or recomputed."""
        if self.F is not None:
            return {name: self.F[name][rows] for name in FIELD_NAMES}
        F = self.op.field_rows(rows)
        return {name: F[i] for i, name in enumerate(FIELD_NAMES)}

    def _field_matrix(self, name: str) -> Tensor:
        """A fresh N×N copy of one field."""
        if self.F is not None:
            return self.F[name].clone()
        out = torch.empty((self.n, self.n), dtype=self.X.dtype, device=self.X.device)
        for rows in self._row_tiles(10 * self.n * 8):
            out[rows] = self._fields_of(rows)[name]
        return out

    # ---- set-up ------------------------------------------------------------------------------
    def _coarse_matrix(self) -> Tensor:
        n, k, p = self.n, self.k, self.k + 2
        Z = self.Z
        C = torch.empty((n, p, n, p), dtype=self.coarse_dtype or Z.dtype, device=Z.device)
        d = torch.cat([Z, self.rho[:, None]], 1)  # d_j = E_jᵀx_j
        for s in range(0, n, self.tile):
            rows = slice(s, min(s + self.tile, n))
            self._coarse_rows(C, rows, d)
        C = C.reshape(n * p, n * p)
        C.diagonal().add_(self.mu)  # symmetric by the formula; the Cholesky reads one triangle
        dead = (~self.mask).nonzero().flatten() * p + (k + 1)  # x_i ∈ span V: no q-coordinate
        if dead.numel():
            C[dead, :] = 0.0
            C[:, dead] = 0.0
            C[dead, dead] = 1.0
        return C

    def _coarse_rows(self, C: Tensor, rows: slice, d: Tensor) -> None:
        """Rows ``rows`` (points) of C from the fields, by the block formula above."""
        n, k, Z = self.n, self.k, self.Z
        t = rows.stop - rows.start
        a = d[rows]
        gam_rows, gam_cols = self.Qr[rows] @ self.X.T, self.X[rows] @ self.Qr.T  # γ_ij, γ_ji
        b = torch.cat([Z[None, :, :].expand(t, n, k), gam_rows[:, :, None]], 2)
        c = torch.cat([Z[rows][:, None, :].expand(t, n, k), gam_cols[:, :, None]], 2)
        idx = torch.arange(k, device=Z.device)

        def add_overlap(J: Tensor, iso: Tensor) -> None:  # iso·E_iᵀE_j = iso·blockdiag(I_k, ω_ij)
            J[:, :, idx, idx] += iso[:, :, None]
            J[:, :, k, k] += iso * (self.Qr[rows] @ self.Qr.T)

        block = Block(self._fields_of(rows), self.weights)
        c00, c0b, ca0, cab = block.compress(a[:, None, :], b, c, d[None], add_overlap)
        C[rows, 0, :, 0], C[rows, 0, :, 1:] = c00, c0b
        C[rows, 1:, :, 0], C[rows, 1:, :, 1:] = ca0.permute(0, 2, 1), cab.permute(0, 2, 1, 3)

    # ---- the pieces of an application ----------------------------------------------------------
    def _restrict(self, rJ: Tensor, r0: Tensor) -> Tensor:
        """Tᵀ r as (N, k+2, m)."""
        rv = torch.einsum("ndm,dk->nkm", rJ, self.V)
        rq = torch.einsum("ndm,nd->nm", rJ, self.Qr)
        return torch.cat([r0[:, None, :], rv, rq[:, None, :]], 1)

    def _perp(self, W: Tensor) -> Tensor:
        """P_R on Jacobian rows: span{V, q_i} removed from each w_i (N, d0, m)."""
        W = W - torch.einsum("dk,nkm->ndm", self.V, torch.einsum("ndm,dk->nkm", W, self.V))
        return W - self.Qr[:, :, None] * torch.einsum("ndm,nd->nm", W, self.Qr)[:, None, :]

    def _coarse_solve(self, b: Tensor) -> Tensor:
        """C⁻¹ b by two triangular solves with the in-place factor (as fast as a product with
        C⁻¹ and no second (N(k+2))² matrix; ``cholesky_solve`` was 20× slower on the CPU)."""
        n, p, m = b.shape
        z = torch.linalg.solve_triangular(self.Lc, b.reshape(n * p, m), upper=False)
        return torch.linalg.solve_triangular(self.Lc.mT, z, upper=True).reshape(n, p, m)

    def _kron_solve(self, W: Tensor) -> Tensor:
        n, d0, m = W.shape
        out = torch.cholesky_solve(W.reshape(n, d0 * m).to(self.Lb.dtype), self.Lb)
        return out.to(W.dtype).reshape(n, d0, m)

    def _coarse_of_A_perp(self, W: Tensor) -> Tensor:
        """Tᵀ A [0; W] for Jacobian rows W ⊥ span{V, q_i} (N, d0, m) → (N, k+2, m), by row tiles
        i (every term sums over j): G_ij = ⟨x_i, W'_j⟩ = ⟨r_i, W'_j⟩, QW_ij = ⟨q_i, W'_j⟩."""
        rl, k, n, m = self.rl, self.k, self.n, W.shape[2]
        out = torch.empty((n, k + 2, m), dtype=W.dtype, device=W.device)
        Wt = [(rl * W[:, :, col]).T for col in range(m)]
        for rows in self._row_tiles((12 + 2 * m) * n * 8):
            block = Block(self._fields_of(rows))  # W' ⊥ x_j: the row_xp, xxp, xpxp terms vanish
            gam = self.Qr[rows] @ self.X.T
            for col in range(m):
                G, QW = self.R[rows] @ Wt[col], self.Qr[rows] @ Wt[col]
                BG = block.term("xpx") * G
                coef = block.scaled("xx", (block.raw("xx") * G).sum(1))
                out[rows, 0, col] = (block.term("row_x") * G).sum(1)
                out[rows, 1:k + 1, col] = rl * (self.Z[rows] * coef[:, None] + BG @ self.Z)
                iso_q = (block.term("iso") * QW).sum(1)
                out[rows, k + 1, col] = rl * (self.rho[rows] * coef + iso_q + (BG * gam).sum(1))
        return out

    def _prolong(self, y: Tensor, zR: Tensor) -> Tensor:
        k = self.k
        Wj = (torch.einsum("dk,nkm->ndm", self.V, y[:, 1:k + 1, :])
              + self.Qr[:, :, None] * y[:, k + 1, None, :] + zR)
        return torch.cat([y[:, 0:1, :], Wj], 1)

    # ---- application -------------------------------------------------------------------------
    def start(self, b: Tensor) -> Tensor:
        """PCG's x₀: the coarse solution (:meth:`coarse_start`)."""
        return self.coarse_start(b)

    def coarse_start(self, b: Tensor) -> Tensor:
        """x₀ = T C⁻¹ Tᵀ b, the coarse solution (its residual has Tᵀ r₀ = 0): PCG with this
        preconditioner starts here."""
        Bb = b.to(self.V.dtype).reshape(self.n, self.d0 + 1, -1)
        y = self._coarse_solve(self._restrict(Bb[:, 1:, :], Bb[:, 0, :]))
        return self._prolong(y, torch.zeros_like(Bb[:, 1:, :])).reshape(b.shape).to(b.dtype)

    def apply(self, R: Tensor) -> Tensor:
        Rb = R.to(self.V.dtype).reshape(self.n, self.d0 + 1, R.shape[1])
        r0, rJ = Rb[:, 0, :], Rb[:, 1:, :]
        zR = self._perp(self._kron_solve(self._perp(rJ)))
        zV = self._coarse_solve(self._restrict(rJ, r0) - self._coarse_of_A_perp(zR))
        return self._prolong(zV, zR).reshape(R.shape).to(R.dtype)


COARSE_BACKENDS: dict[str, type[PcaCoarsePreconditioner]] = {"local": PcaCoarsePreconditioner}
"""Where the pca coarse factor lives, by ``coarse_backend`` name
(:meth:`PcaCoarsePreconditioner.build`)."""
