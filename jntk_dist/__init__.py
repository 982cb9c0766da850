"""jntk_dist: exact Jacobian NNGP / JNTK kernels of wide MLPs, computed and analysed at scale.

The package is a house of rooms along the data path, each importing only the rooms below it
(kept by the import-linter contract in pyproject.toml; docs/design.md draws the picture):

    kernels → data | networks | operators → solvers → store → analysis → workflows → report → cli

The kernels' public API is re-exported here (``jntk_dist.jntk`` = ``jntk_dist.kernels.jntk``).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _version
from typing import Any

# the kernels' API, imported on first use (torch is slow to import: ``jntk --help`` needs none)
_KERNEL_NAMES = ("Activation", "get_activation", "FIELD_NAMES", "KernelFields", "expand_blocks",
                 "fields", "jacobian_nngp", "jntk", "nngp", "ntk", "to_gram")


def __getattr__(name: str) -> Any:
    if name == "kernels":
        return import_module(".kernels", __name__)
    if name in _KERNEL_NAMES:
        return getattr(import_module(".kernels", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
