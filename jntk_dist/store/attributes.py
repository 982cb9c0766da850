"""A store's attributes: flat values that netCDF and xarray accept, nested ones as JSON strings,
provenance (creation time, package and library versions, git commit) and what each array means.

Format 2 stores keep every attribute a string, number or bool: dicts and lists (``config``,
``identity``, ``layout``, ``field_names``, ``library_versions``) are JSON strings whose names are
listed in the attribute ``json_attributes``, and ``None`` values are left out. Readers get the
decoded dict (:func:`decode_attrs`); format 1 stores (nested attributes) read unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from ..errors import StoreError

__all__ = ["JSON_ATTRIBUTES_KEY", "encode_attrs", "decode_attrs", "provenance", "array_sha256",
           "array_attrs", "COMPONENT_DESCRIPTION"]

JSON_ATTRIBUTES_KEY = "json_attributes"
LIBRARIES = ("numpy", "zarr", "torch", "dask", "xarray", "ray", "numcodecs")
COMPONENT_DESCRIPTION = "0 = the output f, 1..d0 = the input-Jacobian component d f / d x_alpha"


def encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as format 2 writes them: dicts/lists to JSON strings (their keys listed under
    ``json_attributes``), ``None`` left out, numpy scalars to Python ones."""
    out: dict[str, Any] = {}
    encoded: list[str] = []
    for key, value in attrs.items():
        if key == JSON_ATTRIBUTES_KEY or value is None:
            continue
        if isinstance(value, (np.generic,)):
            value = value.item()
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=True, default=str)
            encoded.append(key)
        out[key] = value
    out[JSON_ATTRIBUTES_KEY] = " ".join(sorted(encoded))
    return out


def decode_attrs(raw: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a store as Python values: JSON strings named in ``json_attributes``
    parsed (format 2); format 1 attributes are returned as they are."""
    attrs = dict(raw)
    for key in str(attrs.pop(JSON_ATTRIBUTES_KEY, "") or "").split():
        value = attrs.get(key)
        if isinstance(value, str):
            try:
                attrs[key] = json.loads(value)
            except json.JSONDecodeError as err:
                raise StoreError(f"attribute {key!r} is not valid JSON ({err})") from None
    return attrs


def array_sha256(values: np.ndarray) -> str:
    """SHA-256 of an array's float64 little-endian bytes (the ``X_sha256`` / ``y_sha256`` attrs)."""
    data = np.ascontiguousarray(np.asarray(values, dtype="<f8"))
    return hashlib.sha256(data.tobytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """``git describe --always --dirty`` of the package's checkout, or None (an installed wheel,
    no git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                              "--abbrev=40"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """Creation time (UTC, ISO 8601), package, Python and library versions, git commit if known."""
    from .. import __version__

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "package_version": __version__, "library_versions": versions,
            "git_commit": _git_commit()}


def array_attrs(name: str, kind: str | None = None) -> dict[str, str]:
    """The attributes of a store's array ``name``: long_name and description (xarray shows
    them; CF-style ``coordinates`` tie the Gram's rows and columns to points and components)."""
    kernel = {"jntk": "JNTK Theta", "nngp": "Jacobian NNGP Sigma^(L)"}.get(kind or "", "kernel")
    table = {
        "X": ("inputs", "inputs x_i as the kernels used them (float64)"),
        "y": ("labels", "labels y_i of the dataset"),
        "norms": ("input norms", "|x_i|, the Euclidean norm of each input row"),
        "gram": (f"{kernel} Gram matrix, unscaled",
                 "point-major: row i*(d0+1)+alpha is point i, component alpha ("
                 + COMPONENT_DESCRIPTION + "); the stored values are the unscaled kernel; "
                 "open_gram(store).dask_array() applies the store's lambda "
                 "(Theta_lambda = Lambda Theta Lambda, Lambda = diag(1, sqrt(lambda), ...))"),
        "fields": (f"scalar fields of the {kernel}",
                   "the 8 scalar fields kappa, kappa_a, ... per point pair; the Gram block of "
                   "(x_i, x_j) is expanded from them and X (jntk_dist.kernels.expand_blocks)"),
        "point": ("point index", "index i of the input point"),
        "feature": ("feature index", "index of the input feature"),
        "field": ("field name", "name of the scalar field (jntk_dist.kernels.FIELD_NAMES)"),
        "point_i": ("point index (rows)", "index i of the first point of a pair"),
        "point_j": ("point index (columns)", "index j of the second point of a pair"),
        "gram_row_point": ("point of the Gram row", "point i of Gram row i*(d0+1)+alpha"),
        "gram_row_component": ("component of the Gram row", COMPONENT_DESCRIPTION),
        "gram_col_point": ("point of the Gram column", "point j of Gram column j*(d0+1)+beta"),
        "gram_col_component": ("component of the Gram column", COMPONENT_DESCRIPTION),
        "done": ("tiles written", "1 once tile (i, j), i <= j, and its mirror chunk are written "
                 "(internal bookkeeping of the Gram job)"),
    }
    long_name, description = table[name]
    attrs = {"long_name": long_name, "description": description}
    if name == "gram":
        attrs["coordinates"] = ("gram_row_point gram_row_component gram_col_point "
                                "gram_col_component")
    return attrs
