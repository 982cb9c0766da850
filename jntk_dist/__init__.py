"""jntk_dist: exact Jacobian NNGP / JNTK kernels of wide MLPs, computed and analysed at scale.

The package is a house of rooms along the data path, each importing only the rooms below it
(kept by the import-linter contract in pyproject.toml; docs/design.md draws the picture):

    kernels → data | networks | operators → solvers → store → analysis → workflows → report → cli

The kernels' public API is re-exported here (``jntk_dist.jntk`` = ``jntk_dist.kernels.jntk``).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import kernels
from .kernels import (
    Activation,
    get_activation,
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
