"""Checking a Gram store end to end (``jntk verify``): every chunk decodes and matches its
checksum, holds finite numbers, the ``done`` marks match the chunks, each computed tile equals
its mirror exactly, the inputs match their recorded hashes, and a few random entries equal the
kernels recomputed now. Each bad chunk is named with its path and tile."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .. import kernels
from ..kernels import mirror_stack
from .attributes import array_sha256, decode_attrs
from .chunks import (chunk_key, describe_chunk, read_chunk, stored_chunks,
                     with_metadata_errors)
from .layout import FORMAT, StoreError, StoreLayout, done_path
from .locations import location_name, open_group

__all__ = ["BadChunk", "VerifyReport", "verify_store"]

INPUT_ARRAYS = ("X", "y", "norms", "point", "feature", "field", "point_i", "point_j",
                "gram_row_point", "gram_row_component", "gram_col_point", "gram_col_component")
# relative deviation allowed between a stored entry and the kernel recomputed for one pair (the
# tile's route differs from the single pair's in BLAS summation order: ~1e-15 in float64)
SAMPLE_RTOL = {"float64": 1e-9, "float32": 1e-4}


@dataclass(frozen=True)
class BadChunk:
    """One bad chunk (or metadata file): its key, the tile it belongs to, what is wrong."""

    key: str
    problem: str
    tile: tuple[int, int] | None = None
    where: str = ""  # "chunk gram/c/2/1 (the mirror of tile (1, 2))"

    def describe(self) -> str:
        """``chunk gram/c/1/2 (tile (1, 2)): fails its checksum (…)``."""
        return f"{self.where or self.key}: {self.problem}"


@dataclass
class VerifyReport:
    """What :func:`verify_store` found."""

    location: str
    format_version: int
    checksums: bool
    layout: StoreLayout | None = None
    tiles_done: int = 0
    chunks_checked: int = 0
    samples: int = 0
    max_sample_deviation: float = 0.0
    bad: list[BadChunk] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # store-level (attributes, creation)

    @property
    def ok(self) -> bool:
        """Nothing bad found."""
        return not self.bad and not self.problems

    @property
    def bad_tiles(self) -> list[tuple[int, int]]:
        """Tiles (i ≤ j) to recompute."""
        return sorted({b.tile for b in self.bad if b.tile is not None})

    @property
    def bad_inputs(self) -> list[str]:
        """Arrays derived from the dataset (X, y, norms, coordinates) with a bad chunk."""
        return sorted({b.key.split("/", 1)[0] for b in self.bad
                       if b.key.split("/", 1)[0] in INPUT_ARRAYS})

    def text(self) -> str:
        """The report ``jntk verify`` prints."""
        lay = self.layout
        head = [f"verify {self.location}: format {self.format_version} "
                f"({'crc32c checksums' if self.checksums else 'no checksums: format 1'})"]
        if lay is not None:
            head.append(f"  {lay.mode} store, N={lay.n_points}, d0={lay.d0}, {lay.n_tiles}x"
                        f"{lay.n_tiles} tile grid, {self.tiles_done} of {lay.total_tiles} tiles "
                        f"done; {self.chunks_checked} chunks read, {self.samples} entries "
                        f"recomputed from the kernels (largest relative deviation "
                        f"{self.max_sample_deviation:.1e})")
        lines = head + [f"  BAD {b.describe()}" for b in self.bad]
        lines += [f"  PROBLEM {p}" for p in self.problems]
        if self.bad_tiles:
            lines.append("  tiles to recompute: " + ", ".join(map(str, self.bad_tiles)))
        if not self.ok:
            lines.append("  repair: jntk gram CONFIG --repair (CONFIG: the job's config; the "
                         "store records it in its 'config' attribute) recomputes exactly the bad "
                         "tiles and rewrites bad input chunks")
        lines.append("OK" if self.ok else f"{len(self.bad)} bad chunk(s), "
                     f"{len(self.problems)} other problem(s)")
        return "\n".join(lines)


def _check_chunk(report: VerifyReport, array: zarr.Array, coords: tuple[int, ...],
                 stored: set[tuple[int, ...]], tile: tuple[int, int] | None = None
                 ) -> np.ndarray | None:
    """Read one chunk that must exist; record what is wrong with it; its values if good."""
    key, where = chunk_key(array, coords), describe_chunk(array, coords)
    if tuple(coords) not in stored:
        report.bad.append(BadChunk(key, "missing" + (" although its tile is marked done"
                                                     if tile else ""), tile, where))
        return None
    report.chunks_checked += 1
    try:
        values = read_chunk(array, coords)
    except Exception as err:  # noqa: BLE001 -- every decoding failure is a finding
        problem = ("fails its checksum" if "checksum" in str(err).lower()
                   else "cannot be decoded")
        report.bad.append(BadChunk(key, f"{problem} ({type(err).__name__}: {str(err)[:100]})",
                                   tile, where))
        return None
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        report.bad.append(BadChunk(key, "holds NaN/inf values", tile, where))
        return None
    return values


def _check_inputs(report: VerifyReport, group: zarr.Group, attrs: dict[str, Any]) -> None:
    values: dict[str, np.ndarray | None] = {}
    for name in INPUT_ARRAYS:
        if name not in group:
            continue
        array = group[name]
        stored = stored_chunks(array)
        parts = [_check_chunk(report, array, coords, stored)
                 for coords in np.ndindex(*array.cdata_shape)]
        if name in ("X", "y", "norms") and all(p is not None for p in parts):
            values[name] = np.asarray(array[...])
    X, y, norms = values.get("X"), values.get("y"), values.get("norms")
    for name, arr in (("X", X), ("y", y)):
        recorded = attrs.get(f"{name}_sha256")
        if arr is not None and recorded and array_sha256(arr) != recorded:
            report.bad.append(BadChunk(f"{name}/c", f"{name} does not match the SHA-256 "
                                       "recorded when the store was written"))
    if X is not None and norms is not None and not np.array_equal(norms, np.linalg.norm(X, axis=1)):
        report.bad.append(BadChunk("norms/c", "norms differ from |x_i| of the stored X"))


def _check_tile(report: VerifyReport, data: zarr.Array, lay: StoreLayout,
                stored: set[tuple[int, ...]], i: int, j: int) -> None:
    def coords(r: int, c: int) -> tuple[int, ...]:
        return (r, c) if lay.mode == "dense" else (0, r, c)

    tile = _check_chunk(report, data, coords(i, j), stored, (i, j))
    if i == j:  # symmetric up to rounding (dense); the sampled entries check fields tiles
        if tile is not None and lay.mode == "dense":
            scale = max(float(np.abs(tile).max()), 1e-300)
            if float(np.abs(tile - tile.T).max()) > SAMPLE_RTOL[lay.dtype] * scale:
                report.bad.append(BadChunk(chunk_key(data, coords(i, j)),
                                           "a diagonal tile that is not symmetric", (i, j),
                                           describe_chunk(data, coords(i, j))))
        return
    mirror = _check_chunk(report, data, coords(j, i), stored, (i, j))
    if tile is None or mirror is None:
        return
    expected = tile.T if lay.mode == "dense" else mirror_stack(tile)
    if not np.array_equal(mirror, expected):
        report.bad.append(BadChunk(chunk_key(data, coords(i, j)),
                                   "differs from its mirror chunk "
                                   f"{chunk_key(data, coords(j, i))} (one of the two is corrupt)",
                                   (i, j), describe_chunk(data, coords(i, j))))


def _sample(report: VerifyReport, data: zarr.Array, X: np.ndarray, attrs: dict[str, Any],
            tiles: list[tuple[int, int]], samples: int, seed: int) -> None:
    """Recompute ``samples`` random point pairs of good tiles from the kernels and compare."""
    lay = report.layout
    assert lay is not None
    if not tiles or samples <= 0:
        return
    rng = np.random.default_rng(seed)
    p, dtype = lay.block, getattr(torch, lay.dtype)
    kind, depth, act = attrs["kernel"], int(attrs["depth"]), attrs["activation"]
    for _ in range(samples):
        i, j = tiles[rng.integers(len(tiles))]
        (a0, a1), (b0, b1) = lay.points(i), lay.points(j)
        a, b = int(rng.integers(a0, a1)), int(rng.integers(b0, b1))
        xa = torch.from_numpy(X[a:a + 1]).to(dtype)
        xb = xa if a == b else torch.from_numpy(X[b:b + 1]).to(dtype)
        f = kernels.fields(xa, None if a == b else xb, depth=depth, activation=act, kind=kind)
        if lay.mode == "dense":
            with torch.no_grad():
                ref = kernels.expand_gram(f, xa, xb).numpy()
            got = np.asarray(data[a * p:(a + 1) * p, b * p:(b + 1) * p])
        else:
            ref = f.stack().numpy()[:, 0, 0]
            got = np.asarray(data[:, a, b])
        dev = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-300))
        report.samples += 1
        report.max_sample_deviation = max(report.max_sample_deviation, dev)
        if not dev <= SAMPLE_RTOL[lay.dtype]:
            coords = (i, j) if lay.mode == "dense" else (0, i, j)
            report.bad.append(BadChunk(chunk_key(data, coords), f"entry of points ({a}, {b}) "
                                       f"differs from the kernel recomputed now by {dev:.1e} "
                                       "relative", (i, j), describe_chunk(data, coords)))


def verify_store(location: str | Path, storage_options: dict[str, Any] | None = None,
                 samples: int = 16, seed: int = 0) -> VerifyReport:
    """Check every chunk of the store at ``location`` and recompute ``samples`` random entries
    from the kernels; returns a :class:`VerifyReport` (``.ok``, ``.bad``, ``.bad_tiles``,
    ``.text()``). Raises :class:`StoreError` for something that is not a Gram store and
    :class:`.layout.StoreCorruptError` for a damaged root ``zarr.json``."""
    where = location_name(location)
    try:
        group = with_metadata_errors(where, "", lambda: open_group(location, "r",
                                                                   storage_options))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise FileNotFoundError(f"no Gram store at {where}") from None
    attrs = decode_attrs(dict(group.attrs))
    if attrs.get("format") != FORMAT:
        raise StoreError(f"{where} is not a jntk Gram store (attribute format="
                         f"{attrs.get('format')!r})")
    version = int(attrs.get("format_version", 1))
    report = VerifyReport(where, version, checksums=version >= 2)
    if attrs.get("creation_complete") is False:
        report.problems.append("the store's creation was interrupted (no tile is in it); rerun "
                               "the gram job to create it")
        return report
    lay = report.layout = StoreLayout.from_attrs(attrs)
    arrays: dict[str, zarr.Array] = {}
    for name in (lay.data_name, done_path(version)):
        try:
            arrays[name] = with_metadata_errors(where, f"{name}/", lambda n=name: group[n])
        except StoreError as err:
            report.bad.append(BadChunk(f"{name}/zarr.json", str(err)))
    _check_inputs(report, group, attrs)
    if len(arrays) < 2:
        return report
    data, done_arr = arrays[lay.data_name], arrays[done_path(version)]
    stored_done = stored_chunks(done_arr)
    done = np.zeros((lay.n_tiles,) * 2, dtype=bool)
    for c in np.ndindex(*done_arr.cdata_shape):
        if c in stored_done and c[0] <= c[1]:  # a bad mark: recompute its tile
            value = _check_chunk(report, done_arr, c, stored_done, c)
            done[c] = bool(value is not None and value.any())
    stored = stored_chunks(data)
    computed = [(i, j) for i in range(lay.n_tiles) for j in range(i, lay.n_tiles) if done[i, j]]
    report.tiles_done = len(computed)
    for i, j in computed:
        _check_tile(report, data, lay, stored, i, j)
    if attrs.get("complete") and report.tiles_done < lay.total_tiles:
        lacking = lay.total_tiles - report.tiles_done
        report.problems.append(f"the attributes say complete, but {lacking} tile(s) are not "
                               "marked done (a rerun of the gram job computes them)")
    good = sorted(set(computed) - set(report.bad_tiles))
    X = np.asarray(group["X"][...]) if "X" not in report.bad_inputs else None
    if X is not None:
        _sample(report, data, X, attrs, good, samples, seed)
    return report
