"""``digits``: scikit-learn's bundled 8×8 digits, the one real image set always present."""

from __future__ import annotations

import numpy as np

from featstore.datasets.base import DATASETS, ImageDataset
from featstore.errors import InvalidInput
from featstore.views import ViewPolicy


@DATASETS.register("digits")
def _digits(spec: str, argument: str, split: str) -> ImageDataset:
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes): the one real image set always present.

    Split exactly as docs/cli.md: train_test_split(arange(1797), test_size=0.25, random_state=0,
    stratify=target); pixels / 16 so they lie in [0, 1].
    """
    if argument:
        raise InvalidInput(f"dataset spec 'digits' takes no argument, got {spec!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    index = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(index, test_size=0.25, random_state=0, stratify=bunch.target)
    chosen = train_idx if split == "train" else test_idx
    images = (bunch.images[chosen] / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target[chosen].astype(np.int64)
    # 8×8 is too small for a resized crop: views are ±1-pixel shifts plus a horizontal flip.
    policy = ViewPolicy(kind="shift", source_size=(8, 8), pad=1, flip_p=0.0)
    return ImageDataset(
        spec="digits",
        split=split,
        images=images,
        labels=labels,
        num_classes=10,
        view_policy=policy,
        normalisation=((0.0,), (1.0,)),
    )
