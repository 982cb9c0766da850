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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import torch
import zarr

from . import __version__, kernels
from .kernels import FIELD_NAMES, KernelFields
from .tiling import n_tiles, tile_range

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODES",
    "LAYOUT_DESCRIPTION",
    "StoreError",
    "StoreLockedError",
    "StoreLayout",
    "StoreLock",
    "ObjectStoreLock",
    "store_lock",
    "is_url",
    "zarr_target",
    "open_group",
    "child_location",
    "beside",
    "local_beside",
    "open_file",
    "remove_location",
    "store_exists",
    "create_store",
    "zarr_compressors",
    "is_store",
    "TileWriter",
    "GramStore",
    "open_gram",
    "mirror_fields",
]

log = logging.getLogger(__name__)

FORMAT = "jntk-gram"
FORMAT_VERSION = 1
MODES = ("dense", "fields")
LAYOUT_DESCRIPTION = (
    "point-major: Gram row i*(d0+1)+alpha is point i, component alpha (0 = output, 1..d0 = "
    "input-Jacobian); full symmetric matrix, the tile (J, I) below the diagonal is the exact "
    "transpose of the computed tile (I, J); unscaled kernel (apply lambda when reading)")
LOCK_SUFFIX = ".lock"
OBJECT_LOCK_STALE_S = 600.0  # an object-store lock without a heartbeat for this long is stale
OBJECT_LOCK_HEARTBEAT_S = 60.0
X_CACHE_BYTES = 256 * 2**20
# fields of (x2, x1) = transpose of fields of (x1, x2) with k_a<->k_c and k_ab<->k_bc swapped.
_MIRROR_NAMES = {"k_a": "k_c", "k_c": "k_a", "k_ab": "k_bc", "k_bc": "k_ab"}
MIRROR_ORDER = tuple(FIELD_NAMES.index(_MIRROR_NAMES.get(n, n)) for n in FIELD_NAMES)


class StoreError(ValueError):
    """A store that cannot be used as asked (written by another config, not a Gram store, …)."""


class StoreLockedError(StoreError):
    """Another live job holds the store's writer lock."""


# ---- layout -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a store: mode, N points of d0 features, P points per tile, value dtype."""

    mode: str
    n_points: int
    d0: int
    tile_points: int
    dtype: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StoreError(f"store mode must be one of {MODES}, got {self.mode!r}")
        if self.tile_points < 1:
            raise StoreError(f"tile_points must be ≥ 1, got {self.tile_points}")

    @property
    def block(self) -> int:
        """Entries per point along one Gram axis: d0 + 1."""
        return self.d0 + 1

    @property
    def n_tiles(self) -> int:
        return n_tiles(self.n_points, self.tile_points)

    @property
    def gram_shape(self) -> tuple[int, int]:
        side = self.n_points * self.block
        return side, side

    @property
    def data_name(self) -> str:
        return "gram" if self.mode == "dense" else "fields"

    def points(self, index: int) -> tuple[int, int]:
        """Point range [start, stop) of tile row ``index``."""
        return tile_range(index, self.n_points, self.tile_points)

    def tile_entries(self, i: int, j: int) -> int:
        """Dense Gram entries of tile (i, j) (not counting its mirror)."""
        (a, b), (c, d) = self.points(i), self.points(j)
        return (b - a) * (d - c) * self.block ** 2

    @property
    def total_tiles(self) -> int:
        """Tiles on or above the diagonal."""
        return self.n_tiles * (self.n_tiles + 1) // 2

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "StoreLayout":
        return cls(**attrs["layout"])


def zarr_compressors(spec: dict[str, Any] | None) -> Any:
    """Zarr v3 compressor list from ``{"codec": "zstd"|"blosc-zstd"|"blosc-lz4"|"none", "level": int}``."""
    spec = spec or {"codec": "zstd", "level": 1}
    codec, level = spec.get("codec", "zstd"), int(spec.get("level", 1))
    if codec == "none":
        return None
    if codec == "zstd":
        return zarr.codecs.ZstdCodec(level=level)
    if codec.startswith("blosc-"):
        return zarr.codecs.BloscCodec(cname=codec.split("-", 1)[1], clevel=level, shuffle="shuffle")
    raise StoreError(f"unknown compression codec {codec!r}; use zstd, blosc-zstd, blosc-lz4 or none")


# ---- locations: local paths and fsspec URLs ----------------------------------------------

# URL scheme -> the pip extra of this package that installs its fsspec backend
FSSPEC_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_url(location: str | Path) -> bool:
    """True for an fsspec URL (``scheme://…``), False for a local path."""
    return isinstance(location, str) and "://" in location


def _filesystem_class(url: str) -> type:
    """The fsspec file-system class of ``url``'s scheme; a clear error when it is not installed."""
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        extra = FSSPEC_EXTRAS.get(protocol)
        hint = (f'pip install "jntk-dist[{extra}]"' if extra
                else "install the fsspec backend for it")
        raise ImportError(f"{protocol}:// stores need an fsspec backend that is not installed "
                          f"({err}); {hint}") from None
    except ValueError:
        raise StoreError(f"unknown URL scheme {protocol!r} in {url!r}: not an fsspec protocol "
                         "(use a local path, file://, s3://, gs://, …)") from None


def _options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec options for ``url``: the given ones (+ parent folders made on demand for file://)."""
    options = dict(storage_options or {})
    if url.split("://", 1)[0].lower() in ("file", "local"):
        options.setdefault("auto_mkdir", True)
    return options


def url_filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec file system, path inside it) of a store URL."""
    import fsspec.core

    _filesystem_class(url)
    return fsspec.core.url_to_fs(url, **_options(url, storage_options))


def zarr_target(location: str | Path, storage_options: dict[str, Any] | None = None,
                read_only: bool = False) -> Any:
    """What ``zarr.open_group`` gets: the path string of a local store, an ``FsspecStore`` of a URL."""
    if not is_url(location):
        if storage_options:
            raise StoreError(f"storage_options apply to URL stores, not to the local path "
                             f"{location}")
        return str(location)
    url = str(location)
    _filesystem_class(url)
    return zarr.storage.FsspecStore.from_url(url, storage_options=_options(url, storage_options),
                                             read_only=read_only)


def open_group(location: str | Path, mode: str = "r",
               storage_options: dict[str, Any] | None = None, **kwargs: Any) -> zarr.Group:
    """Open the Zarr group at a local path or an fsspec URL (``mode`` as for ``zarr.open_group``).

    The one place every job opens its stores: a URL goes through ``FsspecStore`` with the
    ``storage_options``; consolidated metadata is never used (stores change while jobs run).
    """
    return zarr.open_group(zarr_target(location, storage_options, read_only=mode == "r"),
                           mode=mode, use_consolidated=False, **kwargs)


def child_location(location: str | Path, name: str) -> Path | str:
    """``location/name``: a member of a folder (or of a store), as a path or a URL."""
    if is_url(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location) / name


def beside(location: str | Path, suffix: str) -> Path | str:
    """``<stem><suffix>`` next to a store (``runs/x.zarr`` → ``runs/x_plot.png``; URLs alike):
    where jobs put their plots, tables and CSVs."""
    if is_url(location):
        url = str(location).rstrip("/")
        head, _, name = url.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
        return f"{head}/{stem}{suffix}"
    path = Path(location)
    return path.with_name(path.with_suffix("").name + suffix)


def local_beside(location: str | Path, suffix: str) -> Path:
    """A local path for driver-side scratch files of a store (checkpoints): :func:`beside` a local
    store; for a URL store ``<scratch>/<stem>-<hash of the URL><suffix>``, the scratch folder
    being ``$JNTK_SCRATCH`` or ``<temp dir>/jntk-scratch`` of this machine (not named like the
    package: a script run from the temp dir would import that folder as a namespace package)."""
    if not is_url(location):
        return Path(beside(location, suffix))
    import hashlib
    import tempfile

    scratch = Path(os.environ.get("JNTK_SCRATCH") or Path(tempfile.gettempdir()) / "jntk-scratch")
    name = str(beside(location, "")).rpartition("/")[2]
    digest = hashlib.sha256(str(location).rstrip("/").encode()).hexdigest()[:10]
    return scratch / f"{name}-{digest}{suffix}"


@contextlib.contextmanager
def open_file(location: str | Path, mode: str = "wb",
              storage_options: dict[str, Any] | None = None) -> Iterator[IO[Any]]:
    """Open a file at a local path (parent folders made for writing) or an fsspec URL."""
    if is_url(location):
        fs, path = url_filesystem(str(location), storage_options)
        with fs.open(path, mode) as fh:
            yield fh
        if mode[0] in "wax":
            fs.invalidate_cache(path)
        return
    path = Path(location)
    if mode[0] in "wax":
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as fh:
        yield fh


def remove_location(location: str | Path,
                    storage_options: dict[str, Any] | None = None) -> None:
    """Delete a store (or folder, or file) at a path or URL; nothing there is fine."""
    if is_url(location):
        fs, path = url_filesystem(str(location), storage_options)
        fs.invalidate_cache(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.invalidate_cache(path)
        return
    path = Path(location)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def store_exists(location: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    """True if something is at ``location`` already (a non-empty folder, a file or objects)."""
    if not is_url(location):
        path = Path(location)
        return any(path.iterdir()) if path.is_dir() else path.exists()
    fs, path = url_filesystem(str(location), storage_options)
    fs.invalidate_cache(path)  # listings are cached per file-system instance
    try:
        return bool(fs.exists(path) and (fs.isfile(path) or fs.ls(path, detail=False)))
    except FileNotFoundError:
        return False


def location_name(location: str | Path) -> str:
    """How to show a location: the URL as given, or the absolute local path."""
    return str(location) if is_url(location) else str(Path(location).resolve())


def lock_path(path: str | Path) -> Path:
    """The writer lock of a store lives beside it: ``<store>.lock``."""
    return Path(str(Path(path)) + LOCK_SUFFIX)


def is_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    """True if ``path`` (a local path or URL) holds a Zarr group written by this package."""
    try:
        group = open_group(path, "r", storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return group.attrs.get("format") == FORMAT


def create_store(path: str | Path, X: np.ndarray, y: np.ndarray, layout: StoreLayout,
                 attrs: dict[str, Any], compression: dict[str, Any] | None = None,
                 overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Create the group with X, y, norms, the (empty, NaN-filled) data array and ``done``."""
    P, p, T = layout.tile_points, layout.block, layout.n_tiles
    group = open_group(path, "w" if overwrite else "w-", storage_options, zarr_format=3)
    compressors = zarr_compressors(compression)
    for name, data, dims, chunks in (
            ("X", X, ("point", "feature"), (P, layout.d0)),
            ("y", y, ("point",), (P,)),
            ("norms", np.linalg.norm(X, axis=1), ("point",), (P,))):
        arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype="float64",
                                 dimension_names=dims, compressors=compressors)
        arr[...] = data
    if layout.mode == "dense":
        group.create_array("gram", shape=layout.gram_shape, chunks=(P * p, P * p),
                           dtype=layout.dtype, fill_value=np.nan, compressors=compressors,
                           dimension_names=("gram_row", "gram_col"))
    else:
        N = layout.n_points
        group.create_array("fields", shape=(len(FIELD_NAMES), N, N),
                           chunks=(len(FIELD_NAMES), P, P), dtype=layout.dtype,
                           fill_value=np.nan, compressors=compressors,
                           dimension_names=("field", "point_i", "point_j"))
    group.create_array("done", shape=(T, T), chunks=(1, 1), dtype="uint8", fill_value=0,
                       compressors=None, dimension_names=("tile_i", "tile_j"))
    group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "package_version": __version__, "layout": asdict(layout),
                        "layout_description": LAYOUT_DESCRIPTION,
                        "field_names": list(FIELD_NAMES), "complete": False,
                        "tiles_total": layout.total_tiles, "tiles_done": 0,
                        "completed_tiles": "", **attrs})
    return group


def mirror_fields(stacked: np.ndarray) -> np.ndarray:
    """Fields (8, n2, n1) of (x2, x1) from fields (8, n1, n2) of (x1, x2) (a view)."""
    return stacked[list(MIRROR_ORDER)].transpose(0, 2, 1)


def done_bitmap_hex(done: np.ndarray) -> str:
    """Completed tiles i ≤ j, row by row, as a packed bitmap in hex (the ``completed_tiles`` attr)."""
    upper = done[np.triu_indices(done.shape[0])].astype(bool)
    return np.packbits(upper).tobytes().hex()


# ---- writing ----------------------------------------------------------------------------


class TileWriter:
    """Writes whole tiles of one store: data chunk, mirror chunk, then the ``done`` mark."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.group = open_group(path, "r+", storage_options)
        self.layout = StoreLayout.from_attrs(dict(self.group.attrs))
        self.data = self.group[self.layout.data_name]
        self.done = self.group["done"]
        self.X = self.group["X"]
        # X is small next to the Gram (N·d0 vs N²(d0+1)²): keep it in memory unless huge
        self._X_cache = self.X[...] if self.X.nbytes <= X_CACHE_BYTES else None

    def points(self, i: int) -> np.ndarray:
        """Inputs of tile row ``i`` (float64, (≤P, d0))."""
        a, b = self.layout.points(i)
        return self._X_cache[a:b] if self._X_cache is not None else self.X[a:b]

    def write(self, i: int, j: int, f: KernelFields, xi: torch.Tensor, xj: torch.Tensor,
              compile: bool = False) -> int:
        """Store tile (i, j) (i ≤ j) from its fields and its mirror; mark it done; return entries.
        ``compile``: expand dense tiles through the torch.compile'd one-pass expansion."""
        if i > j:
            raise ValueError(f"only tiles on or above the diagonal are written, got ({i}, {j})")
        lay = self.layout
        (a, b), (c, d) = lay.points(i), lay.points(j)
        dtype = np.dtype(lay.dtype)
        if lay.mode == "dense":
            with torch.no_grad():
                tile = kernels.expand_gram(f, xi, xj, compile=compile).cpu().numpy()
            tile = tile.astype(dtype, copy=False)
            p = lay.block
            self.data[a * p:b * p, c * p:d * p] = tile
            if i != j:
                self.data[c * p:d * p, a * p:b * p] = tile.T
        else:
            stacked = f.stack().cpu().numpy().astype(dtype, copy=False)
            self.data[:, a:b, c:d] = stacked
            if i != j:
                self.data[:, c:d, a:b] = mirror_fields(stacked)
        self.done[i, j] = 1
        return lay.tile_entries(i, j) * (1 if i == j else 2)


# ---- lock -------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Exclusive writer lock of a store: ``<store>.lock``, an flock'd file holding pid/host/time.

    The OS releases an flock when its process dies (SIGKILL included), so a crashed job never
    blocks the next one; a lock file left by a dead holder is taken over with a warning.
    """

    def __init__(self, store_path: str | Path) -> None:
        self.path = lock_path(store_path)
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text().strip()
            return json.loads(text) if text else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def acquire(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = self._holder()
            raise StoreLockedError(
                f"store {str(self.path)[:-len(LOCK_SUFFIX)]} is being written by another job "
                f"(pid {who.get('pid', '?')} on {who.get('host', '?')}, started "
                f"{who.get('started', '?')}); wait for it to finish or stop it") from None
        previous = self._holder()
        if previous.get("pid"):
            here = previous.get("host") == socket.gethostname()
            state = ("no longer running" if here and not _pid_alive(int(previous["pid"]))
                     else "not holding it")
            log.warning("taking over the stale lock %s of pid %s on %s (started %s, %s)",
                        self.path, previous.get("pid"), previous.get("host"),
                        previous.get("started"), state)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file is a free lock; keep the inode
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ObjectStoreLock:
    """Exclusive writer lock of a store at an fsspec URL: the object ``<store>.lock``.

    Taken by creating that object exclusively (``open(…, "xb")``: S3 ``If-None-Match: *``, an
    ``O_EXCL`` create for ``file://``), then reading it back to check that the token in it is
    ours. It holds the owner's host, pid, start time and a heartbeat that a background thread
    renews every ``heartbeat_s``; releasing deletes it. Object stores cannot tell that a writer
    died, so a lock is *stale* -- taken over with a warning -- when its holder ran on this host
    and that pid is gone, or when its heartbeat is older than ``stale_after_s`` (a killed job on
    another node: wait that long, or delete ``<store>.lock`` by hand once sure it is dead).
    Clocks of the nodes are assumed to agree to well within ``stale_after_s``.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 stale_after_s: float | None = None, heartbeat_s: float | None = None) -> None:
        self.url = str(url).rstrip("/") + LOCK_SUFFIX
        self.store_url = str(url)
        self.fs, self.path = url_filesystem(self.url, storage_options)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._local = "file" in protocols
        env_stale = os.environ.get("JNTK_LOCK_STALE_S")
        self.stale_after_s = float(stale_after_s if stale_after_s is not None
                                   else env_stale if env_stale else OBJECT_LOCK_STALE_S)
        self.heartbeat_s = (heartbeat_s if heartbeat_s is not None
                            else max(1.0, min(OBJECT_LOCK_HEARTBEAT_S, self.stale_after_s / 4)))
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The lock object's contents, or None when there is no lock."""
        for attempt in range(5):  # an exclusive create may not have written its bytes yet
            self.fs.invalidate_cache(self.path)
            try:
                with self.fs.open(self.path, "rb") as fh:
                    text = fh.read().decode()
            except FileNotFoundError:
                return None
            try:
                info = json.loads(text)
                return info if isinstance(info, dict) else {}
            except json.JSONDecodeError:
                time.sleep(0.05 * (attempt + 1))
        return {}

    def _stale_reason(self, info: dict[str, Any]) -> str | None:
        if info.get("host") == socket.gethostname() and info.get("pid"):
            if not _pid_alive(int(info["pid"])):
                return "its process is no longer running"
            return None
        beat = info.get("heartbeat")
        if not isinstance(beat, (int, float)):
            return "it holds no heartbeat"
        age = time.time() - float(beat)
        if age > self.stale_after_s:
            return f"its last heartbeat is {age:.0f} s old (> {self.stale_after_s:.0f} s)"
        return None

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                "started": self._started, "heartbeat": time.time()}

    def _write(self, mode: str) -> None:
        data = json.dumps(self._info()).encode()
        if mode == "wb" and self._local:
            # a local file is truncated before it is rewritten: readers must never see that
            tmp = f"{self.path}.{self.token}.tmp"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
            return
        with self.fs.open(self.path, mode) as fh:  # object stores put whole objects
            fh.write(data)

    def acquire(self) -> "ObjectStoreLock":
        self.token = uuid.uuid4().hex
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for attempt in range(2):
            try:
                self._write("xb")
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released meanwhile
                reason = self._stale_reason(info)
                if reason is None or attempt:
                    self.token = None
                    raise StoreLockedError(
                        f"store {self.store_url} is being written by another job (pid "
                        f"{info.get('pid', '?')} on {info.get('host', '?')}, started "
                        f"{info.get('started', '?')}); wait for it to finish or stop it. If "
                        f"that job is dead (e.g. its node was lost), the lock {self.url} turns "
                        f"stale {self.stale_after_s:.0f} s after its last heartbeat, or "
                        "delete it by hand") from None
                log.warning("taking over the stale lock %s of pid %s on %s (started %s): %s",
                            self.url, info.get("pid"), info.get("host"), info.get("started"),
                            reason)
                again = self.holder()
                if again is not None and again.get("token") == info.get("token"):
                    self.fs.rm(self.path)
                continue
            if (self.holder() or {}).get("token") != self.token:  # a backend without "x"
                self.token = None
                raise StoreLockedError(f"store {self.store_url}: another job took the lock "
                                       f"{self.url} at the same moment; try again later")
            break
        else:
            self.token = None
            raise StoreLockedError(f"store {self.store_url}: could not take the lock {self.url}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="jntk-store-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (self.holder() or {}).get("token") != self.token:
                    log.error("lost the store lock %s: another job took it over", self.url)
                    return
                self._write("wb")
            except Exception as err:  # noqa: BLE001 -- a flaky network must not kill the job
                log.warning("could not renew the store lock %s: %s", self.url, err)

    def release(self) -> None:
        if self.token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if (self.holder() or {}).get("token") == self.token:
                self.fs.rm(self.path)
        finally:
            self.token = None

    def __enter__(self) -> "ObjectStoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def store_lock(location: str | Path, storage_options: dict[str, Any] | None = None
               ) -> StoreLock | ObjectStoreLock:
    """The writer lock of a store: :class:`StoreLock` for a local path, else :class:`ObjectStoreLock`."""
    if is_url(location):
        return ObjectStoreLock(str(location), storage_options)
    return StoreLock(location)


# ---- reading ----------------------------------------------------------------------------


def _as_range(key: Any, size: int) -> tuple[int, int, int, bool]:
    """(start, stop, step, is_int) of an int or slice index along an axis of ``size``."""
    if isinstance(key, (int, np.integer)):
        k = int(key) + (size if key < 0 else 0)
        if not 0 <= k < size:
            raise IndexError(f"index {key} out of range for axis of size {size}")
        return k, k + 1, 1, True
    if isinstance(key, slice):
        start, stop, step = key.indices(size)
        if step < 1:
            raise IndexError("negative slice steps are not supported")
        return start, max(start, stop), step, False
    raise IndexError(f"Gram stores support int and slice indices, got {type(key).__name__}")


class GramStore:
    """Read access to a Gram store: attributes, inputs, tiles, any region, a lazy Dask array.

    Values are the unscaled kernel unless ``lam`` is given (then Θ_λ = ΛΘΛ). In a ``fields``
    store every read expands the stored fields with :func:`kernels.expand_blocks`.
    """

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.storage_options = dict(storage_options or {})
        try:
            self.group = open_group(path, "r", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(f"no Gram store at {self.path}") from None
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a Zarr group but not a jntk Gram store "
                             f"(attribute format={self.attrs.get('format')!r})")
        self.layout = StoreLayout.from_attrs(self.attrs)
        self.data = self.group[self.layout.data_name]
        self._X: np.ndarray | None = None
        self._done: np.ndarray | None = None

    # -- description
    @property
    def config(self) -> dict[str, Any]:
        return self.attrs.get("config", {})

    @property
    def kind(self) -> str:
        return self.attrs["kernel"]

    @property
    def depth(self) -> int:
        return int(self.attrs["depth"])

    @property
    def activation(self) -> str:
        return self.attrs["activation"]

    @property
    def lam(self) -> float | None:
        """The λ of the job's config (readers apply it only when asked)."""
        return self.attrs.get("lam")

    @property
    def mode(self) -> str:
        return self.layout.mode

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.gram_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.layout.dtype)

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = self.group["X"][...]
        return self._X

    @property
    def y(self) -> np.ndarray:
        return self.group["y"][...]

    @property
    def norms(self) -> np.ndarray:
        return self.group["norms"][...]

    def done_mask(self, refresh: bool = True) -> np.ndarray:
        """(T, T) bool: tile (i, j) present (mirrored, so symmetric).

        ``refresh=False`` reuses the last reading while it shows every tile done (a complete
        store does not change) -- one small read per tile would dominate region reads.
        """
        if refresh or self._done is None or not self._done.all():
            done = self.group["done"][...].astype(bool)
            self._done = done | done.T
        return self._done

    def missing_tiles(self) -> list[tuple[int, int]]:
        done = self.done_mask()
        T = self.layout.n_tiles
        return [(i, j) for i in range(T) for j in range(i, T) if not done[i, j]]

    @property
    def is_complete(self) -> bool:
        return not self.missing_tiles()

    def __repr__(self) -> str:
        lay = self.layout
        return (f"GramStore({self.path!r}: {self.kind} depth={self.depth} {self.activation}, "
                f"N={lay.n_points} d0={lay.d0}, {lay.mode}, shape={self.shape}, "
                f"tiles {lay.total_tiles - len(self.missing_tiles())}/{lay.total_tiles})")

    # -- values
    def fields(self, i: int, j: int) -> KernelFields:
        """Stored fields of tile (i, j) (``fields`` stores only)."""
        if self.mode != "fields":
            raise StoreError(f"{self.path} is a dense store; it keeps Gram entries, not fields")
        (a, b), (c, d) = self.layout.points(i), self.layout.points(j)
        return self._fields(a, b, c, d)

    def _fields(self, a: int, b: int, c: int, d: int) -> KernelFields:
        stacked = torch.from_numpy(np.ascontiguousarray(self.data[:, a:b, c:d]))
        return KernelFields.from_stack(stacked, kind=self.kind, depth=self.depth,
                                       activation=self.activation)

    def _require_done(self, i0: int, i1: int, j0: int, j1: int) -> None:
        mask = self.done_mask(refresh=False)[i0:i1, j0:j1]
        if not mask.all():
            i, j = np.argwhere(~mask)[0]
            raise StoreError(f"tile ({i0 + i}, {j0 + j}) of {self.path} is not computed yet; "
                             "rerun the gram job to complete the store")

    def read(self, rows: slice | int = slice(None), cols: slice | int = slice(None),
             lam: float | None = None, check_done: bool = True) -> np.ndarray:
        """Gram entries ``G[rows, cols]`` (ints or slices), λ-scaled when ``lam`` is given."""
        p, P = self.layout.block, self.layout.tile_points
        side = self.shape[0]
        r0, r1, rs, r_int = _as_range(rows, side)
        c0, c1, cs, c_int = _as_range(cols, side)
        # widen to whole points: the block (and λ) structure lives on (d0+1)-aligned ranges
        a, b = r0 // p, -(-r1 // p)
        c, d = c0 // p, -(-c1 // p)
        if check_done and b > a and d > c:
            self._require_done(a // P, -(-b // P), c // P, -(-d // P))
        if self.mode == "dense":
            region = np.asarray(self.data[a * p:b * p, c * p:d * p])
            if lam is not None:
                kernels.lambda_scale(region.reshape(b - a, p, d - c, p).transpose(0, 2, 1, 3), lam)
        else:
            f = self._fields(a, b, c, d)
            X = torch.from_numpy(self.X)
            with torch.no_grad():
                blocks = kernels.expand_blocks(f, X[a:b], X[c:d], lam=lam)
            region = kernels.to_gram(blocks).numpy()
        out = region[r0 - a * p:r1 - a * p:rs, c0 - c * p:c1 - c * p:cs]
        if r_int or c_int:
            out = out[0 if r_int else slice(None), 0 if c_int else slice(None)]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return self.read(rows, cols)

    def tile(self, i: int, j: int, lam: float | None = None) -> np.ndarray:
        """Gram tile (i, j): rows of tile-row i's points, columns of tile-column j's points."""
        p = self.layout.block
        (a, b), (c, d) = self.layout.points(i), self.layout.points(j)
        return self.read(slice(a * p, b * p), slice(c * p, d * p), lam=lam)

    def to_numpy(self, lam: float | None = None) -> np.ndarray:
        """The whole Gram in memory (small N only)."""
        return self.read(lam=lam)

    def dask_array(self, lam: float | None = None, allow_incomplete: bool = False) -> Any:
        """Lazy Dask array of the Gram, one chunk per tile; each task opens the store itself."""
        import dask.array as da
        from dask.base import tokenize

        if not allow_incomplete and not self.is_complete:
            raise StoreError(f"{self.path} is incomplete ({len(self.missing_tiles())} tiles "
                             "missing); rerun the gram job or pass allow_incomplete=True")
        rows = self.layout.tile_points * self.layout.block
        source = _GramSource(self.path, self.shape, self.dtype, lam, not allow_incomplete,
                             self.storage_options)
        where = self.path if is_url(self.path) else os.path.realpath(self.path)
        name = "jntk-gram-" + tokenize(where, lam, self.attrs.get("config_hash"),
                                       allow_incomplete)
        return da.from_array(source, chunks=(rows, rows), name=name, lock=False,
                             asarray=False, fancy=False, meta=np.empty((0, 0), self.dtype))


class _GramSource:
    """Array-like over a store for ``dask.array.from_array``: picklable, opens the store lazily."""

    def __init__(self, path: str, shape: tuple[int, int], dtype: np.dtype,
                 lam: float | None, check_done: bool,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.path, self.shape, self.dtype, self.lam = path, shape, dtype, lam
        self.check_done = check_done
        self.storage_options = storage_options
        self.ndim = 2
        self._store: GramStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._store is None:
            self._store = GramStore(self.path, self.storage_options)
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return self._store.read(rows, cols, lam=self.lam, check_done=False)


def open_gram(path: str | Path, storage_options: dict[str, Any] | None = None) -> GramStore:
    """Open a Gram store for reading: ``open_gram(p).tile(i, j, lam=…)``, ``.dask_array(lam=…)``.

    ``path`` is a local path or an fsspec URL (``storage_options`` go to fsspec, e.g.
    ``{"endpoint_url": …}`` for an S3-compatible service).
    """
    return GramStore(path, storage_options)
