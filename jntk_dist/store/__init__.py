"""Zarr (v3) Gram stores: layout, creation, the per-tile writer, the writer lock, the reader, the
xarray view and the integrity check.

A store is a Zarr group that describes itself (see ``docs/store.md``):

* ``X`` (point, feature), ``y`` (point), ``norms`` (point) -- the inputs, labels and |x_i|, with
  coordinate arrays ``point``, ``feature`` (and ``gram_row_point``, ``gram_row_component``, … of
  every Gram row and column, or ``field``, ``point_i``, ``point_j``);
* ``gram`` (gram_row, gram_col): the full symmetric N(d0+1)-square Gram matrix of the *unscaled*
  kernel (Θ or Σ^(L)), point-major (row i·(d0+1)+α), one chunk per tile -- ``mode="dense"``; or
  ``fields`` (field, point_i, point_j): the 8 scalar fields (8, N, N), chunk (8, P, P) per tile --
  ``mode="fields"``, expanded into Gram entries by the reader on demand;
* ``tiles/done`` (tile_i, tile_j) uint8 (``done`` at the root in format 1), one chunk per
  element: 1 once tile (i, j), i ≤ j, and its mirror chunk are written. Written by the worker
  *after* the data, so it survives SIGKILL;
* every chunk carries a crc32c checksum (format 2);
* attributes, flat (nested ones as JSON strings): the job config and its hash, provenance
  (creation time, package and library versions, git commit), kernel, activation, depth, λ,
  dtype, layout, hashes of X and y, and a summary of the completed tiles (kept by the driver).

The store keeps the unscaled kernel; every read applies the store's λ (Θ_λ = ΛΘΛ through
:func:`jntk_dist.kernels.lambda_scale`) unless given ``lam=None`` (Θ) or another ``lam``.

A store lives at a local path or at an fsspec URL (``s3://bucket/g.zarr``, ``gs://…``,
``file:///…``); every function here takes the location plus optional fsspec ``storage_options``
and opens URLs through :class:`zarr.storage.FsspecStore`. The writer lock is an ``flock``'d file
beside a local store or ``file://`` URL (:class:`StoreLock`) and an exclusively created object
beside another URL store (:class:`ObjectStoreLock`); :func:`store_lock` picks the right one for
the store's canonical location.

Rooms: :mod:`.layout` (format, modes, tiles), :mod:`.tiling`, :mod:`.locations` (paths and
URLs), :mod:`.locks` (one writer per store), :mod:`.attributes` (flat attributes, provenance),
:mod:`.chunks` (chunk names, reads that name a bad chunk), :mod:`.writer` (create, write tiles,
finalise, repair), :mod:`.reader` (:func:`open_gram`), :mod:`.views` (xarray),
:mod:`.verify` (:func:`verify_store`).
"""

from .layout import StoreCorruptError, StoreError, StoreLayout, StoreLockedError
from .locations import beside, is_url, local_beside, location_name, open_file
from .locks import store_lock
from .reader import STORE_LAM, GramStore, open_gram
from .verify import BadChunk, VerifyReport, verify_store
from .writer import TileWriter, create_store, finalize_store, record_progress

# the public face: read, write, lock and verify a store, its errors, and where results go beside
# it; the rest (format constants, attributes, chunk names, lock classes, repair steps) is
# imported from its module
__all__ = ["STORE_LAM", "BadChunk", "GramStore", "StoreCorruptError", "StoreError", "StoreLayout",
           "StoreLockedError", "TileWriter", "VerifyReport", "beside", "create_store",
           "finalize_store", "is_url", "local_beside", "location_name", "open_file", "open_gram",
           "record_progress", "store_lock", "verify_store"]
