"""Tests for ``idx:DIR`` (featstore/datasets/idx.py): IDX files written byte by byte by the test (plain and
gzipped), exact pixel values and labels, options, fingerprints, every refusal as one ``Error:`` line
through the CLI — and, when the Debian package dataset-fashion-mnist is installed, the real files."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from featstore.datasets import load_dataset
from featstore.datasets.idx import DEBIAN_FASHION_MNIST
from featstore.errors import InputNotFound, InvalidInput


def idx_bytes(values: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written from the format's definition (independent of the reader)."""
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(struct.pack(">I", d) for d in values.shape)
    return header + values.astype(np.uint8).tobytes()


def write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    for kind, ndim, values in (("images", 3, images), ("labels", 1, labels)):
        path = root / f"{prefix}-{kind}-idx{ndim}-ubyte"
        data = idx_bytes(values)
        if gz:
            with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
                handle.write(data)
        else:
            path.write_bytes(data)


def make_idx(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_split(root, "train", rng.integers(0, 256, (n_train, 6, 7)), np.arange(n_train) % 4, gz)
    write_split(root, "t10k", rng.integers(0, 256, (n_test, 6, 7)), np.arange(n_test) % 3, gz)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_pixels_labels_and_shape(tmp_path, gz) -> None:
    root = make_idx(tmp_path / "d", gz=gz)
    rng = np.random.default_rng(0)
    raw_train = rng.integers(0, 256, (12, 6, 7))
    raw_test = rng.integers(0, 256, (5, 6, 7))
    train = load_dataset(f"idx:{root}", "train")
    test = load_dataset(f"idx:{root}", "test")
    assert train.images.shape == (12, 1, 6, 7) and train.images.dtype == np.float32
    np.testing.assert_array_equal(train.images[:, 0], (raw_train / 255.0).astype(np.float32))
    np.testing.assert_array_equal(test.images[:, 0], (raw_test / 255.0).astype(np.float32))
    assert train.labels.tolist() == [i % 4 for i in range(12)]
    assert test.labels.tolist() == [0, 1, 2, 0, 1]
    assert train.num_classes == test.num_classes == 4  # from the training split, for both
    policy = train.view_policy
    assert (policy.kind, policy.source_size, policy.pad, policy.flip_p) == ("shift", (6, 7), 2, 0.0)


def test_options_and_fingerprint(tmp_path) -> None:
    root = make_idx(tmp_path / "d")
    full = load_dataset(f"idx:{root}", "train")
    small = load_dataset(f"idx:{root}?limit=5&flip=0.5&pad=3", "train")
    assert len(small) == 5 and small.num_classes == 4
    np.testing.assert_array_equal(small.images, full.images[:5])
    assert (small.view_policy.flip_p, small.view_policy.pad) == (0.5, 3)
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert load_dataset(f"idx:{moved}", "train").fingerprint() == full.fingerprint()  # the folder moved
    assert small.fingerprint() != full.fingerprint()
    per_class = load_dataset(f"idx:{root}?per_class=2", "train")  # labels i % 4: rows 0–7, two of each class
    np.testing.assert_array_equal(per_class.images, full.images[:8])
    assert per_class.fingerprint() != full.fingerprint()
    with pytest.raises(InvalidInput, match="class 0 has 3"):
        load_dataset(f"idx:{root}?per_class=4", "train")
    with pytest.raises(InvalidInput, match="class 3 has 0"):  # limit=3 keeps classes 0–2 only
        load_dataset(f"idx:{root}?limit=3&per_class=1", "train")
    other = make_idx(tmp_path / "other", seed=1)
    assert load_dataset(f"idx:{other}", "train").fingerprint() != full.fingerprint()  # other pixels


def _corrupt(root: Path, name: str, data: bytes) -> None:
    for stale in root.glob(name + "*"):
        stale.unlink()
    (root / name).write_bytes(data)


BAD = {
    "wrong magic": ("train-images-idx3-ubyte", lambda b: b"\x01\x02" + b[2:], "bad magic"),
    "float type": ("train-images-idx3-ubyte", lambda b: b[:2] + b"\x0d" + b[3:], "not supported"),
    "wrong ndim": ("train-labels-idx1-ubyte", lambda b: b[:3] + b"\x02" + b[4:], "dimensions, expected 1"),
    "truncated": ("train-images-idx3-ubyte", lambda b: b[:-10], "truncated"),
    "too long": ("train-labels-idx1-ubyte", lambda b: b + b"\x00", "longer than its header"),
    "count mismatch": ("train-labels-idx1-ubyte", lambda b: idx_bytes(np.arange(11) % 4), "12 images but"),
    # 2^31 · 2^31 · 4 = 2^64: a product that wraps to 0 in 64 bits must not pass for a header-only file
    "dimensions overflow 64 bits": (
        "train-images-idx3-ubyte",
        lambda b: b[:4] + struct.pack(">III", 1 << 31, 1 << 31, 4),
        "truncated",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_one_line_errors(tmp_path, case) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    root = make_idx(tmp_path / "d", gz=False)
    name, change, message = BAD[case]
    _corrupt(root, name, change((root / name).read_bytes()))
    with pytest.raises(InvalidInput, match=message):
        load_dataset(f"idx:{root}", "train")
    out = tmp_path / "t.pt"
    result = CliRunner().invoke(cli, ["train-teacher", "--dataset", f"idx:{root}", "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def test_label_out_of_range_truncated_gzip_and_missing(tmp_path) -> None:
    root = make_idx(tmp_path / "d", gz=False)
    _corrupt(root, "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 2, 9, 1])))
    with pytest.raises(InvalidInput, match="label 9 is out of range"):
        load_dataset(f"idx:{root}", "test")
    gz_root = make_idx(tmp_path / "g", gz=True)
    packed = (gz_root / "train-images-idx3-ubyte.gz").read_bytes()
    (gz_root / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(InvalidInput, match="unreadable"):
        load_dataset(f"idx:{gz_root}", "train")
    (root / "train-images-idx3-ubyte").unlink()
    with pytest.raises(InputNotFound, match="train-images-idx3-ubyte"):
        load_dataset(f"idx:{root}", "train")
    with pytest.raises(InputNotFound, match="not found"):
        load_dataset(f"idx:{tmp_path / 'nowhere'}", "train")
    for spec, refusal in (
        ("idx:?limit=0", r"limit=0 is out of range \[1, "),
        ("idx:?size=3", "unknown option 'size'"),
        ("idx:?flip=2", r"flip=2 is out of range \[0.0, 1.0\]"),
        ("idx:?limit=x", "limit must be an integer, got 'x'"),
        ("idx:?limit=1&limit=2", "option 'limit' given twice"),
        ("idx:?per_class=0", r"per_class=0 is out of range \[1, "),
    ):
        with pytest.raises(InvalidInput, match=refusal):
            load_dataset(spec.replace("idx:", f"idx:{root}"), "test")


needs_package = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)


@needs_package
def test_debian_fashion_mnist() -> None:
    test = load_dataset("idx:", "test")
    assert len(test) == 10_000 and test.image_shape == (1, 28, 28) and test.num_classes == 10
    assert np.bincount(test.labels).tolist() == [1000] * 10  # Fashion-MNIST's test split is balanced
    assert 0.28 < float(test.images.mean()) < 0.29  # its known mean pixel (0.286)
    small = load_dataset("idx:?limit=600", "train")
    assert len(small) == 600 and set(small.labels.tolist()) == set(range(10))
    stratified = load_dataset("idx:?per_class=50", "train")
    assert np.bincount(stratified.labels).tolist() == [50] * 10
