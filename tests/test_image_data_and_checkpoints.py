"""No arbitrary unpickling: CIFAR-10 batches (binary format, or python pickles through a restricted
unpickler) and drift checkpoints (torch.load weights_only). Files are written here, in the
standard formats; malicious pickles must be refused without running anything."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from jntk_dist.solvers.checkpoint import FileCheckpointer, load_state
from jntk_dist.data.images import load_cifar10, read_cifar10_binary, read_cifar10_python


class _RunsCode:
    """Unpickling this calls os.system (the classic pickle exploit)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.uint8))


def _write_bin(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    path.write_bytes(np.concatenate([labels[:, None], data], axis=1).astype(np.uint8).tobytes())


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    parts = [_batch(3, seed) for seed in range(5)]
    for k, (data, labels) in enumerate(parts, start=1):
        _write_bin(tmp_path / f"data_batch_{k}.bin", data, labels)
    test_data, test_labels = _batch(4, 9)
    _write_bin(tmp_path / "test_batch.bin", test_data, test_labels)

    X, y = load_cifar10(tmp_path, "test")
    assert X.dtype == np.float64 and X.shape == (4, 3072)
    np.testing.assert_array_equal(X, test_data)
    np.testing.assert_array_equal(y, test_labels)
    X, y = load_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(X, np.concatenate([d for d, _ in parts]))
    np.testing.assert_array_equal(y, np.concatenate([lab for _, lab in parts]))
    X, y = load_cifar10(tmp_path, "train", limit=5)  # reads only the batches it needs
    np.testing.assert_array_equal(X, np.concatenate([parts[0][0], parts[1][0][:2]]))

    # binary preferred over a python batch of the same name (which could be a pickle bomb)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _RunsCode(tmp_path / "never")}, fh, protocol=2)
    np.testing.assert_array_equal(load_cifar10(tmp_path, "test")[0], test_data)
    assert not (tmp_path / "never").exists()

    raw = (tmp_path / "test_batch.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="whole number of 3073-byte records"):
        read_cifar10_binary(tmp_path / "cut.bin")
    bad = bytearray(raw)
    bad[3073] = 57  # label of record 1
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="record 1 has label 57"):
        read_cifar10_binary(tmp_path / "bad.bin")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_python_batches_through_the_restricted_unpickler(tmp_path: Path,
                                                                 protocol: int) -> None:
    data, labels = _batch(6, 3)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(), b"data": data,
             b"filenames": [b"a.png"] * 6}
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)
    X, y = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(X, data)
    np.testing.assert_array_equal(y, labels)


def test_cifar10_python_batch_as_numpy_1_pickled_it(tmp_path: Path) -> None:
    """The published batches name numpy.core.multiarray (numpy < 2); they still load."""
    data, labels = _batch(2, 4)
    raw = pickle.dumps({b"data": data, b"labels": labels.tolist()}, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    (tmp_path / "test_batch").write_bytes(
        raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    X, y = read_cifar10_python(tmp_path / "test_batch")
    np.testing.assert_array_equal(X, data)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_cifar10_pickle_is_refused(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [1]}, fh, protocol=protocol)
    with pytest.raises(ValueError, match=r"refusing to unpickle global (posix|os)\.system"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()
    with open(tmp_path / "test_batch", "wb") as fh:  # a class instance is refused too
        pickle.dump({b"data": FileCheckpointer.__new__(FileCheckpointer), b"labels": []}, fh,
                    protocol=protocol)
    with pytest.raises(ValueError, match="refusing to unpickle global .*FileCheckpointer"):
        load_cifar10(tmp_path, "test")


def test_drift_checkpoints_hold_only_tensors_and_plain_values(tmp_path: Path) -> None:
    ck = FileCheckpointer(tmp_path / "run")
    assert ck.load() is None
    state = {"trainer": {"weights": [torch.randn(3, 2), torch.randn(1, 3)], "step": 4,
                         "history": {"loss": [0.5, 0.25], "distance": [[0.1, 0.2]]},
                         "initial_kernel": torch.eye(2)},
             "sums": (torch.ones(2), torch.zeros(2), 7), "attempts": 2, "position": 4,
             "started": 1.5}
    ck.save(state, {"run": "r", "step": 4})
    back = ck.load()
    assert back is not None and back["trainer"]["step"] == 4 and back["sums"][2] == 7
    torch.testing.assert_close(back["trainer"]["weights"][1], state["trainer"]["weights"][1])
    assert back["trainer"]["history"] == state["trainer"]["history"]

    marker = tmp_path / "pwned"
    torch.save({"trainer": _RunsCode(marker)}, ck.path)  # a tampered checkpoint
    with pytest.raises(ValueError, match="refusing to unpickle"):
        ck.load()
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_state(ck.path)
    assert not marker.exists()
