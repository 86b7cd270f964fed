"""Tests for featstore.datasets: the digits split of docs/cli.md, pixel scale, fingerprints, and errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from featstore.datasets import DATASETS, ImageDataset, load_dataset
from featstore.errors import InvalidInput, UnknownName


@pytest.fixture(scope="module")
def digits_test() -> ImageDataset:
    return load_dataset("digits", "test")


def test_split_sizes(digits_train, digits_test) -> None:
    assert len(digits_train) == 1347 and len(digits_test) == 450
    assert digits_train.images.shape == (1347, 1, 8, 8) and digits_test.images.shape == (450, 1, 8, 8)
    assert digits_train.image_shape == (1, 8, 8)
    assert digits_train.images.dtype == np.float32 and digits_train.labels.dtype == np.int64
    assert digits_train.num_classes == digits_test.num_classes == 10
    assert digits_train.spec == "digits" and digits_train.split == "train" and digits_test.split == "test"
    assert load_dataset("digits").split == "train"  # default split


def test_exact_split_per_design(digits_train, digits_test) -> None:
    bunch = load_digits()
    train_idx, test_idx = train_test_split(np.arange(1797), test_size=0.25, random_state=0, stratify=bunch.target)
    for ds, idx in ((digits_train, train_idx), (digits_test, test_idx)):
        np.testing.assert_array_equal(ds.labels, bunch.target[idx])
        np.testing.assert_array_equal(ds.images[:, 0], (bunch.images[idx] / 16.0).astype(np.float32))
    # Stratified: every class in both splits, in roughly the overall proportions.
    for ds in (digits_train, digits_test):
        frac = np.bincount(ds.labels, minlength=10) / len(ds)
        np.testing.assert_allclose(frac, np.bincount(bunch.target) / 1797, atol=0.01)


def test_pixel_range(digits_train, digits_test) -> None:
    for ds in (digits_train, digits_test):
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        # Pixels are integers 0..16 scaled by 1/16.
        np.testing.assert_array_equal(ds.images * 16, np.round(ds.images * 16))


def test_get_images(digits_train) -> None:
    x = digits_train.get_images([5, 0, 5])
    assert x.shape == (3, 1, 8, 8) and x.dtype.is_floating_point
    np.testing.assert_array_equal(x.numpy(), digits_train.images[[5, 0, 5]])


def test_view_policy(digits_train) -> None:
    p = digits_train.view_policy
    assert p.kind == "shift" and p.source_size == (8, 8) and p.pad == 1


def test_fingerprint_stable_and_sensitive(digits_train, digits_test) -> None:
    fp = digits_train.fingerprint()
    assert len(fp) == 64 and set(fp) <= set("0123456789abcdef")  # a sha256 hex digest
    assert load_dataset("digits", "train").fingerprint() == fp
    assert digits_test.fingerprint() != fp

    def variant(images=None, labels=None) -> ImageDataset:
        return ImageDataset(
            spec="digits",
            split="train",
            images=digits_train.images.copy() if images is None else images,
            labels=digits_train.labels.copy() if labels is None else labels,
            num_classes=10,
            view_policy=digits_train.view_policy,
        )

    assert variant().fingerprint() == fp
    labels = digits_train.labels.copy()
    labels[100] = (labels[100] + 1) % 10
    assert variant(labels=labels).fingerprint() != fp
    images = digits_train.images.copy()
    images[7, 0, 3, 3] += 1 / 16
    assert variant(images=images).fingerprint() != fp
    order = np.arange(1347)
    order[[0, 1]] = order[[1, 0]]
    assert variant(images=digits_train.images[order], labels=digits_train.labels[order]).fingerprint() != fp
    assert variant(images=digits_train.images[:100], labels=digits_train.labels[:100]).fingerprint() != fp


def test_describe(digits_test) -> None:
    d = digits_test.describe()
    assert d == {
        "spec": "digits",
        "split": "test",
        "num_samples": 450,
        "num_classes": 10,
        "image_shape": [1, 8, 8],
        "fingerprint": digits_test.fingerprint(),
    }


def test_unknown_spec_lists_valid_names() -> None:
    assert "digits" in DATASETS
    with pytest.raises(UnknownName, match="digits") as info:
        load_dataset("mnist", "train")
    assert "mnist" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert not str(info.value).startswith("'")  # not quoted like a plain KeyError


def test_bad_split_and_argument() -> None:
    with pytest.raises(InvalidInput, match="validation"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="unknown split ''"):
        load_dataset("digits", "")
    with pytest.raises(InvalidInput, match="takes no argument"):
        load_dataset("digits:extra", "train")
