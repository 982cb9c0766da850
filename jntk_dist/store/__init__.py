"""Zarr (v3) Gram stores: layout, creation, the per-tile writer, the writer lock and the reader.

A store is a Zarr group that describes itself (see ``docs/store.md``):

* ``X`` (point, feature), ``y`` (point), ``norms`` (point) -- the inputs, labels and |x_i|;
* ``gram`` (gram_row, gram_col): the full symmetric N(d0+1)-square Gram matrix of the *unscaled*
  kernel (Θ or Σ^(L)), point-major (row i·(d0+1)+α), one chunk per tile -- ``mode="dense"``; or
  ``fields`` (field, point_i, point_j): the 8 scalar fields (8, N, N), chunk (8, P, P) per tile --
  ``mode="fields"``, expanded into Gram entries by the reader on demand;
* ``done`` (tile_i, tile_j) uint8, one chunk per element: 1 once tile (i, j), i ≤ j, and its
  mirror chunk are written. Written by the worker *after* the data, so it survives SIGKILL;
* attributes: the job config and its hash, package version, kernel, activation, depth, λ, dtype,
  layout, and a summary of the completed tiles (kept by the driver).

λ is never baked in: readers apply Θ_λ = ΛΘΛ through :func:`jntk_dist.kernels.lambda_scale`.

A store lives at a local path or at an fsspec URL (``s3://bucket/g.zarr``, ``gs://…``,
``file:///…``); every function here takes the location plus optional fsspec ``storage_options``
and opens URLs through :class:`zarr.storage.FsspecStore`. The writer lock is an ``flock``'d file
beside a local store (:class:`StoreLock`) and an exclusively created object beside a URL store
(:class:`ObjectStoreLock`); :func:`store_lock` picks the right one.

Rooms: :mod:`.layout` (format, modes, tiles), :mod:`.tiling`, :mod:`.locations` (paths and
URLs), :mod:`.locks` (one writer per store), :mod:`.writer` (create, write tiles),
:mod:`.reader` (:func:`open_gram`).
"""

from .layout import (FORMAT, FORMAT_VERSION, LAYOUT_DESCRIPTION, MODES, StoreError,
                     StoreLayout, StoreLockedError, zarr_compressors)
from .locations import (beside, child_location, is_url, local_beside, location_name, open_file,
                        open_group, remove_location, store_exists, url_filesystem, zarr_target)
from .locks import ObjectStoreLock, StoreLock, lock_path, store_lock
from .reader import GramStore, open_gram
from .writer import TileWriter, create_store, done_bitmap_hex, is_store

__all__ = ["FORMAT", "FORMAT_VERSION", "LAYOUT_DESCRIPTION", "MODES", "GramStore",
           "ObjectStoreLock", "StoreError", "StoreLayout", "StoreLock", "StoreLockedError",
           "TileWriter", "beside", "child_location", "create_store", "done_bitmap_hex", "is_store",
           "is_url", "local_beside", "location_name", "lock_path", "open_file", "open_gram",
           "open_group", "remove_location", "store_exists", "store_lock", "url_filesystem",
           "zarr_compressors", "zarr_target"]
