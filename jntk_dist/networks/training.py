"""Robust training of a finite network: gradient descent on the Jacobian-regularised loss (eq. 1).

    L(θ) = (1/2N) Σ_i [ (f(x_i) − y_i)² + λ Σ_α (∂f(x_i)/∂x_α)² ]

Full-batch gradient descent with learning rate η (gradient flow is approximated by ``substeps``
small steps of η/substeps per step). At chosen steps (default 0, 2^0, 2^1, …, 2^11) the trainer
records the loss, train/test accuracy and the finite JNTK Θ_{d,θ_t} on the kernel points, and the
max-norm distance per block component (α, β)

    Δ_{αβ,t} = max_{i,j} |Θ_{d,θ_t}(x_i, x_j)_{αβ} − Θ(x_i, x_j)_{αβ}|

to the analytic JNTK Θ (``distance``), and to the network's own kernel at step 0 (``drift``).
Everything is κ⁻²-scaled. The trainer's state (weights, step, history) is a plain dict, so a
preempted run can resume from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import kernels
from .finite import FiniteMLP, finite_jntk

__all__ = [
    "PAPER_COMPONENTS",
    "RobustTrainer",
    "component_label",
    "default_record_steps",
    "max_norm_distance",
    "robust_loss",
]

Tensor = torch.Tensor

PAPER_COMPONENTS: tuple[tuple[int, int], ...] = ((0, 0), (2, 2), (0, 2), (1, 2))
"""The block components (α, β) of the paper's Figs. 1–3 (0 = output, α = ∂f/∂x_α)."""


def default_record_steps(max_power: int = 11) -> list[int]:
    """[0, 2^0, 2^1, …, 2^max_power]: the steps of Fig. 3 plus initialisation."""
    return [0] + [2**k for k in range(max_power + 1)]


def component_label(alpha: int, beta: int) -> str:
    """'02' for (0, 2) as in the paper; '3,11' once an index has two digits."""
    return f"{alpha}{beta}" if alpha < 10 and beta < 10 else f"{alpha},{beta}"


def robust_loss(net: FiniteMLP, x: Tensor, y: Tensor, lam: float) -> Tensor:
    """Eq. (1): (1/2N) Σ_i [(f(x_i) − y_i)² + λ |∇ₓf(x_i)|²] (differentiable in the weights)."""
    F = net.jet(x)
    residual = F[:, 0] - y
    return 0.5 * (residual.square().sum() + lam * F[:, 1:].square().sum()) / x.shape[0]


def max_norm_distance(blocks: Tensor, reference: Tensor, components: Sequence[tuple[int, int]],
                      indices: Sequence[int]) -> np.ndarray:
    """max_{i,j} |blocks_{αβ} − reference_{αβ}| for each (α, β); blocks hold ``indices`` only."""
    pos = {c: k for k, c in enumerate(indices)}
    diff = (blocks - reference).abs()
    return np.array([float(diff[:, :, pos[a], pos[b]].max()) for a, b in components])


def _accuracy(f: Tensor, y: Tensor) -> float:
    return float((torch.sign(f) == torch.sign(y)).to(torch.float64).mean())


@dataclass
class History:
    """What the trainer recorded, one entry per recorded step."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    distance: list[list[float]] = field(default_factory=list)
    drift: list[list[float]] = field(default_factory=list)


class RobustTrainer:
    """Full-batch GD on eq. (1) for a :class:`FiniteMLP`, recording the finite-JNTK drift.

    ``kernel_x`` (default: the training inputs) are the points on which Θ_{d,θ_t} is compared
    with the analytic Θ; only the block indices that ``components`` name are computed.
    """

    def __init__(self, net: FiniteMLP, x: Any, y: Any, *, lam: float, lr: float,
                 x_test: Any | None = None, y_test: Any | None = None,
                 components: Sequence[tuple[int, int]] = PAPER_COMPONENTS,
                 kernel_x: Any | None = None, substeps: int = 1,
                 reference: Tensor | None = None) -> None:
        if not (0.0 <= lam) or not np.isfinite(lam):
            raise ValueError(f"lam (λ in eq. 1) must be a finite number ≥ 0, got {lam!r}")
        if not (lr > 0) or not np.isfinite(lr):
            raise ValueError(f"lr (learning rate) must be a positive number, got {lr!r}")
        if int(substeps) != substeps or substeps < 1:
            raise ValueError(f"substeps must be an integer ≥ 1, got {substeps!r}")
        self.net, self.lam, self.lr, self.substeps = net, float(lam), float(lr), int(substeps)
        self.x, self.y = self._data(x, y, "train")
        self.x_test, self.y_test = (None, None) if x_test is None else self._data(x_test, y_test,
                                                                                   "test")
        self.kernel_x = self.x if kernel_x is None else net._check(kernel_x)
        self.components = [(int(a), int(b)) for a, b in components]
        bad = [c for c in self.components if not all(0 <= i <= net.d0 for i in c)]
        if bad or not self.components:
            raise ValueError(f"components must be pairs (α, β) with 0 ≤ α, β ≤ d0={net.d0}, "
                             f"got {list(components)}")
        self.indices = sorted({i for c in self.components for i in c})
        if reference is None:
            full = kernels.jntk(self.kernel_x, depth=net.depth, activation=net.activation)
            reference = full[:, :, self.indices][:, :, :, self.indices]
        self.reference = reference
        self.initial_kernel: Tensor | None = None
        self.step = 0
        self.history = History()

    def _data(self, x: Any, y: Any, name: str) -> tuple[Tensor, Tensor]:
        x = self.net._check(x)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y,
                            dtype=x.dtype, device=x.device).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} labels: {y.shape[0]} labels for {x.shape[0]} inputs")
        if not torch.isfinite(y).all():
            raise ValueError(f"{name} labels contain NaN/inf")
        return x, y

    # ---- dynamics ---------------------------------------------------------------------------
    def loss(self) -> float:
        with torch.no_grad():
            return float(robust_loss(self.net, self.x, self.y, self.lam))

    def gd_step(self) -> None:
        """One step of full-batch GD (``substeps`` steps of lr/substeps: gradient flow)."""
        params = list(self.net.weights)
        eta = self.lr / self.substeps
        for _ in range(self.substeps):
            grads = torch.autograd.grad(robust_loss(self.net, self.x, self.y, self.lam), params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(eta * g)
        self.step += 1

    # ---- measurement ------------------------------------------------------------------------
    def kernel(self) -> Tensor:
        """Θ_{d,θ_t} / κ² on the kernel points, restricted to the recorded indices."""
        return finite_jntk(self.net, self.kernel_x, indices=self.indices)

    def measure(self) -> dict[str, Any]:
        """Record loss, accuracies and kernel distances at the current step."""
        blocks = self.kernel()
        if self.initial_kernel is None:
            if self.step != 0:
                raise RuntimeError("the step-0 kernel was not recorded before training started")
            self.initial_kernel = blocks
        ref = self.reference.to(blocks) if isinstance(self.reference, Tensor) else \
            torch.as_tensor(self.reference, dtype=blocks.dtype)
        with torch.no_grad():
            train_acc = _accuracy(self.net(self.x), self.y)
            test_acc = (float("nan") if self.x_test is None
                        else _accuracy(self.net(self.x_test), self.y_test))
        h = self.history
        h.step.append(self.step)
        h.loss.append(self.loss())
        h.train_accuracy.append(train_acc)
        h.test_accuracy.append(test_acc)
        h.distance.append(max_norm_distance(blocks, ref, self.components, self.indices).tolist())
        h.drift.append(max_norm_distance(blocks, self.initial_kernel, self.components,
                                         self.indices).tolist())
        return {k: v[-1] for k, v in h.__dict__.items()}

    def run(self, record_steps: Sequence[int] | None = None,
            on_record: Callable[["RobustTrainer", dict[str, Any]], None] | None = None) -> History:
        """Train up to max(record_steps), recording at each of them (resumes from ``self.step``)."""
        steps = sorted(set(default_record_steps() if record_steps is None else record_steps))
        if not steps or steps[0] < 0:
            raise ValueError(f"record_steps must be integers ≥ 0, got {record_steps!r}")
        if self.initial_kernel is None and self.step == 0 and steps[0] != 0:
            self.initial_kernel = self.kernel()
        done = set(self.history.step)
        for target in steps:
            if target in done:
                continue
            while self.step < target:
                self.gd_step()
            record = self.measure()
            if on_record is not None:
                on_record(self, record)
        return self.history

    # ---- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"weights": [w.detach().clone() for w in self.net.weights], "step": self.step,
                "history": dict(self.history.__dict__), "initial_kernel": self.initial_kernel}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, w in zip(self.net.weights, state["weights"]):
                if p.shape != w.shape:
                    raise ValueError(f"checkpoint weight of shape {tuple(w.shape)} does not fit "
                                     f"this network's {tuple(p.shape)}")
                p.copy_(w)
        self.step = int(state["step"])
        self.history = History(**{k: list(v) for k, v in state["history"].items()})
        self.initial_kernel = state["initial_kernel"]
