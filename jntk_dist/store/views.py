"""The xarray view of a Gram store: a self-describing Dataset whose Gram rows and columns are
addressable as (point, component), with λ applied as every reader applies it."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .attributes import array_attrs, encode_attrs
from .layout import StoreLayout

__all__ = ["to_xarray"]


class ReadableStore(Protocol):
    """What the view reads of a store (:class:`.reader.GramStore` has it)."""

    layout: StoreLayout
    attrs: dict[str, Any]

    @property
    def X(self) -> np.ndarray: ...

    @property
    def y(self) -> np.ndarray: ...

    @property
    def norms(self) -> np.ndarray: ...

    def resolve_lam(self, lam: Any) -> float | None: ...

    def dask_array(self, lam: Any, allow_incomplete: bool) -> Any: ...

# bookkeeping a reader of the view has no use for (the done marks' summary, creation state)
INTERNAL_ATTRS = ("completed_tiles", "creation_complete")


def to_xarray(store: ReadableStore, lam: Any = "store", multiindex: bool = False,
              allow_incomplete: bool = False) -> Any:
    """An ``xarray.Dataset`` of the store: ``gram`` (Θ_λ, lazy, one Dask chunk per tile; λ as
    :meth:`GramStore.read` takes it: the store's by default, ``None`` for the unscaled Θ),
    ``X``, ``y``, ``norms``; coordinates ``point``, ``feature`` and, along ``gram_row`` /
    ``gram_col``, ``gram_row_point`` / ``gram_row_component`` (and ``gram_col_…``).
    ``multiindex=True`` makes ``gram_row`` and ``gram_col`` (point, component) MultiIndexes
    (``ds.gram.sel(gram_row_point=3)``); the default keeps plain coordinates, which netCDF
    takes (``ds.to_netcdf(…)``). Attributes are flat (nested ones as JSON strings)."""
    import xarray as xr

    value = store.resolve_lam(lam)
    lay = store.layout
    N, d0, p = lay.n_points, lay.d0, lay.block
    rows = np.arange(N * p)
    kind = store.attrs.get("kernel")
    gram_attrs = {**array_attrs("gram", kind), "scaling": _scaling(value)}
    gram_attrs["long_name"] = gram_attrs["long_name"].replace(
        "unscaled", "Theta_lambda" if value is not None else "unscaled")
    gram_attrs.pop("coordinates")
    coords: dict[str, Any] = {"point": ("point", np.arange(N), array_attrs("point")),
                              "feature": ("feature", np.arange(d0), array_attrs("feature"))}
    for axis in ("row", "col"):
        coords[f"gram_{axis}_point"] = (f"gram_{axis}", rows // p,
                                        array_attrs(f"gram_{axis}_point"))
        coords[f"gram_{axis}_component"] = (f"gram_{axis}", rows % p,
                                            array_attrs(f"gram_{axis}_component"))
    data = {"gram": (("gram_row", "gram_col"),
                     store.dask_array(lam=value, allow_incomplete=allow_incomplete), gram_attrs),
            "X": (("point", "feature"), store.X, array_attrs("X")),
            "y": (("point",), store.y, array_attrs("y")),
            "norms": (("point",), store.norms, array_attrs("norms"))}
    attrs = {k: v for k, v in encode_attrs(store.attrs).items() if k not in INTERNAL_ATTRS}
    attrs["scaling"] = _scaling(value)
    if value is not None:
        attrs["lam_applied"] = value
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    if multiindex:
        ds = ds.set_index(gram_row=["gram_row_point", "gram_row_component"],
                          gram_col=["gram_col_point", "gram_col_component"])
    return ds


def _scaling(lam: float | None) -> str:
    if lam is None:
        return "unscaled kernel Theta (no Lambda applied)"
    return (f"Theta_lambda = Lambda Theta Lambda, Lambda = diag(1, sqrt(lam), ..., sqrt(lam)), "
            f"lam = {lam:g}")
