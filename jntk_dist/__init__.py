"""jntk_dist: exact Jacobian NNGP / JNTK kernels of wide MLPs, computed and analysed at scale.

Public modules: :mod:`jntk_dist.kernels` (analytic kernels), :mod:`jntk_dist.activations`,
:mod:`jntk_dist.data` (datasets and preprocessing).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import activations, kernels
from .activations import Activation, get_activation
from .kernels import (
    FIELD_NAMES,
    KernelFields,
    expand_blocks,
    fields,
    jacobian_nngp,
    jntk,
    nngp,
    ntk,
    to_gram,
)

try:
    __version__ = _version("jntk-dist")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

__all__ = [
    "Activation",
    "FIELD_NAMES",
    "KernelFields",
    "activations",
    "expand_blocks",
    "fields",
    "get_activation",
    "jacobian_nngp",
    "jntk",
    "kernels",
    "nngp",
    "ntk",
    "to_gram",
    "__version__",
]
