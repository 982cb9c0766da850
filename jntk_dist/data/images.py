"""Loaders for the standard MNIST (IDX) and CIFAR-10 (binary or python batches) files a user provides.

Nothing is downloaded: point the loaders at the files you have, e.g.

    X, labels = load_mnist("~/data/mnist", split="train")        # train-images-idx3-ubyte[.gz] …
    X, labels = load_cifar10("~/data/cifar-10-batches-bin", split="test")   # test_batch.bin
    X, labels = load_cifar10("~/data/cifar-10-batches-py", split="test")    # test_batch (pickle)
    ds = image_dataset(X, labels, positive=(0, 2, 4, 6, 8))       # paper preprocessing, ±1 labels

Pixels are mapped from [0, 255] to [-1, 1] by the fixed pixel range (so always-blank border
pixels of MNIST stay well defined) and rows are scaled to unit norm with
:func:`jntk_dist.data.normalize_rows`.

CIFAR-10's binary batches (``data_batch_1.bin`` …: records of 1 label byte + 3072 pixel bytes)
need no unpickling and are preferred when both forms are present. The python batches are pickles:
they are read with :class:`RestrictedUnpickler`, which builds only numpy arrays, dtypes and plain
containers and refuses any other global (a pickle naming ``os.system`` is an error, never a call).
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, InputError
from .preprocessing import binary_labels, normalize_rows, scale_columns

__all__ = ["read_idx", "load_mnist", "load_cifar10", "read_cifar10_binary",
           "read_cifar10_python", "RestrictedUnpickler", "image_dataset", "MNIST_FILES",
           "load_image_set", "IMAGE_POSITIVE"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_PIXELS = 3072  # 32 x 32 x 3, channel-major
CIFAR_RECORD = 1 + CIFAR_PIXELS  # binary format: label byte, then the pixels
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    """The bytes of a raw or ``.gz`` file; a damaged gzip stream is an :class:`InputError`."""
    try:
        with _open(path) as fh:
            return fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise InputError(f"{path} is not a readable gzip file ({err or 'cut short'}): download "
                         "or unpack it again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``): magic 0x0000 TT DD, DD big-endian uint32 dims, data."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no IDX file at {path}")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise InputError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()!r}; expected "
                         f"00 00 <type in {[hex(t) for t in _IDX_TYPES]}> <ndim>)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path} is truncated: its IDX header names {ndim} dimensions but the "
                         f"file holds {len(raw)} bytes")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise InputError(f"{path} is truncated or padded: header says dims {dims} "
                         f"({expected} data bytes) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    candidates = [directory / stem, directory / (stem + ".gz"),
                  directory / stem.replace("-idx", ".idx"),
                  directory / (stem.replace("-idx", ".idx") + ".gz")]
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {directory} (nothing is "
                            "downloaded: put the standard IDX files there)")


def load_mnist(directory: str | Path, split: str = "train", limit: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST images (n, 784) float64 in [0, 255] and labels (n,) int64 from the IDX files."""
    if split not in MNIST_FILES:
        raise ConfigError(f"split must be one of {list(MNIST_FILES)}, got {split!r}")
    directory = Path(directory).expanduser()
    img_name, lab_name = MNIST_FILES[split]
    images = read_idx(_find(directory, img_name))
    labels = read_idx(_find(directory, lab_name))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(f"MNIST {split}: images {images.shape} and labels {labels.shape} do not "
                         "form a (n, rows, cols) / (n,) pair")
    n = images.shape[0] if limit is None else min(int(limit), images.shape[0])
    return (images[:n].reshape(n, -1).astype(np.float64), labels[:n].astype(np.int64))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 python batches: numpy arrays and plain containers, nothing else.

    Allowed globals are the few that numpy arrays pickle through; any other global (``os.system``,
    ``builtins.eval``, a class …) raises :class:`pickle.UnpicklingError` naming it.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # ≥ 5
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: a CIFAR-10 batch holds only numpy "
                "arrays, lists, dicts, bytes and numbers (use the binary .bin batches to avoid "
                "pickle altogether)")
        if module.startswith("numpy.core."):  # numpy ≥ 2 keeps these in numpy._core
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def read_cifar10_python(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickled dict) → uint8 (n, 3072) pixels, int64 (n,) labels."""
    path = Path(path).expanduser()
    with open(path, "rb") as fh:
        try:
            batch = RestrictedUnpickler(fh, encoding="bytes").load()
        except pickle.UnpicklingError as err:
            raise InputError(f"{path} is not a readable CIFAR-10 python batch: {err}") from None
        except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                struct.error, UnicodeDecodeError) as err:  # what garbage bytes make pickle say
            raise InputError(f"{path} is not a readable CIFAR-10 python batch (pickle: "
                             f"{type(err).__name__}: {err}); unpack cifar-10-python.tar.gz "
                             "again") from None
    if not isinstance(batch, dict):
        raise InputError(f"{path} is not a CIFAR-10 python batch (a pickled {type(batch).__name__}"
                         ", not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or not isinstance(labels, (list, tuple, np.ndarray)):
        raise InputError(f"{path} is not a CIFAR-10 python batch (no 'data'/'labels' keys)")
    data = np.asarray(data)
    if (data.ndim != 2 or data.shape[1] != CIFAR_PIXELS or data.shape[0] != len(labels)
            or data.dtype.kind not in "ui"):
        raise InputError(f"{path}: data {data.shape} {data.dtype} / {len(labels)} labels is not "
                         "a CIFAR-10 batch of (n, 3072) uint8 rows")
    return data, np.asarray(labels, dtype=np.int64)


def read_cifar10_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch (records of 1 label byte + 3072 pixel bytes) → pixels, labels."""
    path = Path(path).expanduser()
    raw = path.read_bytes()
    if not raw or len(raw) % CIFAR_RECORD:
        raise InputError(f"{path} is not a CIFAR-10 binary batch: {len(raw)} bytes is not a "
                         f"whole number of {CIFAR_RECORD}-byte records (1 label + 3072 pixels)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        row = int(np.argmax(labels > 9))
        raise InputError(f"{path}: record {row} has label {labels[row]}, not 0..9 -- not a "
                         "CIFAR-10 binary batch (CIFAR-100's .bin files have two label bytes)")
    return records[:, 1:], labels


def _cifar_batch(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    for candidate, reader in ((directory / f"{name}.bin", read_cifar10_binary),
                              (directory / name, read_cifar10_python)):
        if candidate.exists():
            return reader(candidate)
    raise FileNotFoundError(f"CIFAR-10 batch {name}.bin (binary) or {name} (python) not found in "
                            f"{directory} (nothing is downloaded: unpack cifar-10-binary.tar.gz "
                            "or cifar-10-python.tar.gz there)")


def load_cifar10(directory: str | Path, split: str = "train", limit: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Raw CIFAR-10 images (n, 3072) float64 in [0, 255] (channel-major, as stored) and labels.

    Reads ``<batch>.bin`` (binary version) where present, else the python batch ``<batch>``.
    """
    if split not in CIFAR_BATCHES:
        raise ConfigError(f"split must be one of {list(CIFAR_BATCHES)}, got {split!r}")
    directory = Path(directory).expanduser()
    xs, ys, have = [], [], 0
    for name in CIFAR_BATCHES[split]:
        data, labels = _cifar_batch(directory, name)
        xs.append(data.astype(np.float64))
        ys.append(labels)
        have += data.shape[0]
        if limit is not None and have >= limit:
            break
    X, y = np.concatenate(xs), np.concatenate(ys)
    n = X.shape[0] if limit is None else min(int(limit), X.shape[0])
    return X[:n], y[:n]


def image_dataset(X_raw: np.ndarray, labels: np.ndarray,
                  positive: Sequence[int] = (0, 2, 4, 6, 8)) -> tuple[np.ndarray, np.ndarray]:
    """Paper preprocessing for pixel data: [0, 255] → [-1, 1], rows to unit norm; ±1 labels."""
    X = normalize_rows(scale_columns(X_raw, bounds=(0.0, 255.0)))
    return X, binary_labels(labels, list(positive))


#: the binary task of each image set: MNIST even digits, CIFAR-10 animals (bird … horse) → +1
IMAGE_POSITIVE = {"mnist": (0, 2, 4, 6, 8), "cifar10": (2, 3, 4, 5, 6, 7)}
IMAGE_TITLES = {"mnist": "MNIST, even digits = +1, odd = -1",
                "cifar10": "CIFAR-10, animals (classes 2–7) = +1, vehicles (0, 1, 8, 9) = -1"}


def load_image_set(name: str, *, directory: str | Path | None = None, split: str = "train",
                   limit: int | None = None, positive: Sequence[int] | None = None,
                   near_parallel_threshold: float | None = None) -> Any:
    """MNIST or CIFAR-10 from ``directory`` as a :class:`~jntk_dist.data.Dataset` with the
    paper's preprocessing (pixels [0, 255] → [-1, 1], rows to unit norm) and ±1 labels
    (``positive``: the classes labelled +1, default :data:`IMAGE_POSITIVE`)."""
    from .dataset import finish_dataset

    if directory is None:
        files = ("the IDX files train-images-idx3-ubyte[.gz] …" if name == "mnist"
                 else "data_batch_1[.bin] … test_batch[.bin]")
        raise ConfigError(f"dataset {name!r} needs options.directory: the folder that holds your "
                         f"{name} files ({files}); nothing is downloaded")
    loader = load_mnist if name == "mnist" else load_cifar10
    X, labels = loader(directory, split=split, limit=limit)
    positive = IMAGE_POSITIVE[name] if positive is None else tuple(positive)
    notes = [f"read {X.shape[0]} {split} images ({X.shape[1]} pixel values 0..255) from "
             f"{Path(directory).expanduser()}",
             f"binary labels: classes {sorted(positive)} → +1, the others → -1 (ds.labels keeps "
             "the classes)"]
    names = [f"px{j}" for j in range(X.shape[1])]
    return finish_dataset(name, IMAGE_TITLES[name], X, labels, binary_labels(labels, list(positive)),
                          names, np.arange(X.shape[0], dtype=np.int64), notes, preprocess=True,
                          scale=lambda A: scale_columns(A, bounds=(0.0, 255.0)),
                          scale_note="pixel values mapped from [0, 255] to [-1, 1]",
                          near_parallel_threshold=near_parallel_threshold)
