"""Tests for ``cifar100:DIR`` on tiny fake pickles built in tmp_path: shapes, labels, normalisation by hand,
fingerprints independent of the directory, errors, and a pickle that cannot run code."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from featstore.datasets import DATASETS, load_dataset
from featstore.datasets.cifar100 import CIFAR100_MEAN, CIFAR100_STD, DirImageDataset
from featstore.errors import InputNotFound, InvalidInput


def write_cifar(root: Path, n_train: int = 20, n_test: int = 10, meta: bool = True, seed: int = 0) -> Path:
    """A cifar-100-python lookalike: dicts with bytes keys, uint8 (N, 3072) data and list fine_labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        content = {
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"fine_labels": [int(x) for x in rng.integers(0, 100, size=n)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, size=n)],
        }
        (root / split).write_bytes(pickle.dumps(content, protocol=2))
    if meta:
        names = {
            b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        }
        (root / "meta").write_bytes(pickle.dumps(names, protocol=2))
    return root


def read_cifar(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-100-python")


def test_cifar_shapes_labels_policy(cifar_dir) -> None:
    train = load_dataset(f"cifar100:{cifar_dir}", "train")
    test = load_dataset(f"cifar100:{cifar_dir}", "test")
    assert isinstance(train, DirImageDataset)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.num_classes == test.num_classes == 100
    assert train.spec == f"cifar100:{cifar_dir}" and train.split == "train" and test.split == "test"
    np.testing.assert_array_equal(train.labels, read_cifar(cifar_dir / "train")[b"fine_labels"])
    np.testing.assert_array_equal(test.labels, read_cifar(cifar_dir / "test")[b"fine_labels"])
    p = train.view_policy
    assert (p.kind, p.source_size, p.pad, p.flip_p) == ("shift", (32, 32), 4, 0.5)
    assert train.class_names == tuple(f"class{i}" for i in range(100))


def test_cifar_normalisation_by_hand(cifar_dir) -> None:
    train = load_dataset(f"cifar100:{cifar_dir}", "train")
    data = read_cifar(cifar_dir / "train")[b"data"]
    # Sample 7, channel c, row 5, column 9: byte c*1024 + 5*32 + 9 of its row.
    for c in range(3):
        raw = int(data[7, c * 1024 + 5 * 32 + 9])
        expected = (raw / 255.0 - CIFAR100_MEAN[c]) / CIFAR100_STD[c]
        assert train.images[7, c, 5, 9] == pytest.approx(expected, abs=1e-5)
    # And all of it, vectorised: the channel means of the normalised values follow the raw means.
    raw = data.reshape(-1, 3, 32, 32) / 255.0
    expected = (raw - np.array(CIFAR100_MEAN)[None, :, None, None]) / np.array(CIFAR100_STD)[None, :, None, None]
    np.testing.assert_allclose(train.images, expected, atol=1e-5)


def test_cifar_meta_is_optional(tmp_path) -> None:
    root = write_cifar(tmp_path / "c", meta=False)
    ds = load_dataset(f"cifar100:{root}", "test")
    assert ds.class_names is None and len(ds) == 10


def test_cifar_errors(tmp_path) -> None:
    with pytest.raises(InputNotFound, match="not found"):
        load_dataset(f"cifar100:{tmp_path / 'nope'}")
    with pytest.raises(InvalidInput, match="directory"):
        load_dataset("cifar100:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFound, match="train"):
        load_dataset(f"cifar100:{tmp_path / 'empty'}")
    assert issubclass(InputNotFound, FileNotFoundError)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train").write_bytes(b"this is not a pickle")
    with pytest.raises(InvalidInput, match="not a cifar-100-python pickle"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(InvalidInput, match=r"\(N, 3072\)"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}))
    with pytest.raises(InvalidInput, match="0..99"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(InvalidInput, match="fine_labels"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(InvalidInput, match="dict"):
        load_dataset(f"cifar100:{bad}")


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_cannot_run_code(tmp_path) -> None:
    root = tmp_path / "evil"
    root.mkdir()
    (root / "train").write_bytes(pickle.dumps({b"data": _Boom(), b"fine_labels": [0]}))
    with pytest.raises(InvalidInput, match="refusing to load"):
        load_dataset(f"cifar100:{root}")


def test_cifar_pickle_with_numpy1_module_names(tmp_path) -> None:
    """The real files (and numpy-1 pickles) name numpy.core.multiarray; numpy 2 calls it numpy._core."""
    root = tmp_path / "np1"
    root.mkdir()
    content = {b"data": np.full((3, 3072), 255, np.uint8), b"fine_labels": [5, 6, 7]}
    raw = pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (root / "test").write_bytes(raw)
    ds = load_dataset(f"cifar100:{root}", "test")
    np.testing.assert_array_equal(ds.labels, [5, 6, 7])
    assert ds.images[0, 0, 0, 0] == pytest.approx((1 - CIFAR100_MEAN[0]) / CIFAR100_STD[0], abs=1e-6)


def test_cifar_fingerprint_independent_of_directory(tmp_path, cifar_dir) -> None:
    a = load_dataset(f"cifar100:{cifar_dir}", "train")
    moved = tmp_path / "elsewhere"
    shutil.copytree(cifar_dir, moved)
    b = load_dataset(f"cifar100:{moved}", "train")
    assert b.spec != a.spec and b.fingerprint() == a.fingerprint()
    assert a.fingerprint() != load_dataset(f"cifar100:{cifar_dir}", "test").fingerprint()
    assert a.describe()["fingerprint"] == a.fingerprint()
    other = write_cifar(tmp_path / "other", seed=1)
    assert load_dataset(f"cifar100:{other}", "train").fingerprint() != a.fingerprint()


def test_registered() -> None:
    assert {"digits", "cifar100", "folder", "mxrec"} <= set(DATASETS.names())
