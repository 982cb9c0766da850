"""Where stores and results live: local paths and fsspec URLs (s3://, gs://, file://).

Every function takes the location plus optional fsspec ``storage_options`` and opens URLs through
:class:`zarr.storage.FsspecStore`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

import zarr

from ..errors import MissingBackendError
from .layout import StoreError

__all__ = ["FSSPEC_EXTRAS", "is_url", "url_filesystem", "zarr_target", "open_group",
           "child_location", "beside", "local_beside", "open_file", "remove_location",
           "store_exists", "location_name", "canonical_location"]

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
        raise MissingBackendError(f"{protocol}:// stores need an fsspec backend that is not "
                                  f"installed ({err}); {hint}") from None
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


def canonical_location(location: str | Path) -> Path | str:
    """One spelling per store: a local path (or a ``file://``/``local://`` URL) as its resolved
    absolute path, symlinks followed (``runs/s.zarr``, ``/abs/runs/s.zarr``,
    ``file:///abs/runs/s.zarr`` and a symlink to it are one store); any other URL with its scheme
    in lower case, duplicate slashes and a trailing slash dropped. The writer lock is taken on
    this location, so two spellings never get two locks."""
    if not is_url(location):
        return Path(os.path.realpath(Path(location).expanduser()))
    scheme, rest = str(location).split("://", 1)
    scheme = scheme.lower()
    if scheme in ("file", "local"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(f"file://{rest}")
        host = "" if parts.netloc in ("", "localhost") else parts.netloc
        return Path(os.path.realpath(unquote(host + parts.path) or "/"))
    return f"{scheme}://" + "/".join(part for part in rest.split("/") if part)


def location_name(location: str | Path) -> str:
    """How to show a location: the URL as given, or the absolute local path."""
    return str(location) if is_url(location) else str(Path(location).resolve())
