"""Shared fixtures for the featstore tests: a small real digits subset and an untrained, seeded teacher."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from distill.models import create_model
from featstore.datasets import ImageDataset, load_dataset
from featstore.extract import TeacherSource

EMBEDDING_DIM = 16
NUM_CLASSES = 10
SMALL_N = 120


@pytest.fixture(scope="session")
def digits_train() -> ImageDataset:
    return load_dataset("digits", "train")


def subset(d: ImageDataset, n: int) -> ImageDataset:
    """The first ``n`` samples of ``d`` as a new dataset (its fingerprint differs from the full split)."""
    return ImageDataset(
        spec=d.spec,
        split=d.split,
        images=d.images[:n],
        labels=d.labels[:n],
        num_classes=d.num_classes,
        view_policy=d.view_policy,
    )


@pytest.fixture(scope="session")
def small_digits(digits_train: ImageDataset) -> ImageDataset:
    return subset(digits_train, SMALL_N)


def build_teacher(sha: str = "x" * 64, seed: int = 0, head_bias: bool = True) -> TeacherSource:
    """A deterministic random convnet teacher (no training) with a random linear head."""
    torch.manual_seed(seed)
    model = create_model("convnet_teacher", num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM)
    model.eval()
    rng = np.random.default_rng(seed)
    return TeacherSource(
        model=model,
        arch="convnet_teacher",
        checkpoint_sha256=sha,
        embedding_dim=EMBEDDING_DIM,
        input_shape=[1, 8, 8],
        head_type="linear",
        head_weight=rng.standard_normal((NUM_CLASSES, EMBEDDING_DIM)).astype(np.float32),
        head_bias=rng.standard_normal(NUM_CLASSES).astype(np.float32) if head_bias else None,
    )


@pytest.fixture(scope="session")
def teacher() -> TeacherSource:
    return build_teacher()


@pytest.fixture
def make_teacher() -> Callable[..., TeacherSource]:
    return build_teacher


@pytest.fixture
def make_subset() -> Callable[[ImageDataset, int], ImageDataset]:
    return subset
