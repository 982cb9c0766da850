"""Exact infinite-width kernels of Kim & Yang (ICML 2024): Jacobian NNGP Σ^(L), JNTK Θ, Θ_λ.

Every scalar kernel of the bias-free MLP depends on a pair (x, x') only through
a = |x|², b = <x, x'>, c = |x'|²:  k(x, x') = κ(a, b, c).  The 8 *fields*
(κ, κ_a, κ_b, κ_c, κ_ab, κ_ac, κ_bb, κ_bc) are carried through the layer recursion
(:mod:`.recursion`) and expanded into any (d0+1)×(d0+1) block (:mod:`.blocks`); see
docs/design.md. Rooms of this package, each importing only those before it:

* :mod:`.activations` — φ, its normaliser and its Gaussian dual maps (closed forms, quadrature);
* :mod:`.inputs` — input checks (the one λ check);
* :mod:`.record` — the field records and their order, and the block record: the block of §1.5
  term by term, Λ, its contractions, the right-hand side (y, 0…0);
* :mod:`.recursion`, :mod:`.blocks` — the layer recursion and the dense expansion;
* :mod:`.compile` — torch.compile of the two (acceleration only);
* :mod:`.compute` — the public computations below.

Numpy in → numpy out; torch in → torch out (same device). float64 unless asked otherwise.
Kernels are reported κ⁻²-scaled (the network's kernels are κ² times these).
"""

from .activations import Activation, available_activations, get_activation
from .blocks import to_gram
from .compile import compile_enabled
from .compute import (compile_warm_up, expand_blocks, expand_gram, fields, gram, gram_strips,
                      jacobian_nngp, jacobian_nngp_fields, jntk, jntk_fields, nngp, ntk)
from .inputs import KINDS, check_lam, validate_inputs
from .record import (BLOCK_TERMS, FIELD_INDEX, FIELD_NAMES, MIRROR_ORDER, Block, KernelFields,
                     LambdaWeights, ProductOperand, lambda_factors, lambda_scale, lambda_weights,
                     mirror_stack, point_major_targets, product_operand)

__all__ = [
    "Activation",
    "BLOCK_TERMS",
    "Block",
    "FIELD_INDEX",
    "FIELD_NAMES",
    "KINDS",
    "KernelFields",
    "LambdaWeights",
    "MIRROR_ORDER",
    "available_activations",
    "check_lam",
    "compile_enabled",
    "compile_warm_up",
    "expand_blocks",
    "expand_gram",
    "fields",
    "get_activation",
    "gram",
    "gram_strips",
    "jacobian_nngp",
    "jacobian_nngp_fields",
    "jntk",
    "jntk_fields",
    "lambda_factors",
    "lambda_scale",
    "lambda_weights",
    "mirror_stack",
    "nngp",
    "ntk",
    "point_major_targets",
    "product_operand",
    "ProductOperand",
    "to_gram",
    "validate_inputs",
]
