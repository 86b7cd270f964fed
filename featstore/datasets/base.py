"""Datasets: named by a SPEC string, split deterministically, fingerprinted.

The interface is deliberately small — labels, a way to fetch source images by index, a view policy and a
fingerprint — because the store and the trainer only ever need rows by index: the store row i *is*
dataset sample i of the split, and the fingerprint is how training proves the pairing is right.
``digits`` is built in; ``cifar100:DIR``, ``folder:DIR`` and ``idx:DIR`` plug into the same registry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from featstore.errors import InvalidInput
from featstore.registry import Registry
from featstore.views import ViewPolicy

DATASETS: Registry = Registry("dataset")
SPLITS = ("train", "test")


@dataclass
class ImageDataset:
    """An in-memory labelled image split.

    ``images`` are float32 (N, C, H, W) in the model's input scale (``normalisation`` says which);
    ``labels`` int64 (N,).
    """

    spec: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    view_policy: ViewPolicy
    _fingerprint: str | None = field(default=None, repr=False)
    # (mean, std) per channel that turned [0, 1] pixels into ``images``: lets a model that wants other
    # input scaling (an ONNX face model's (x - 127.5) / 127.5) recover the pixels. None: not declared.
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def get_images(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Source images of the given sample indices, as a float32 tensor (n, C, H, W)."""
        return torch.from_numpy(self.images[np.asarray(indices, dtype=np.int64)])

    def fingerprint(self) -> str:
        """sha256 over the split's pixels and labels: changes if any sample, label or order changes."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(f"{self.spec}|{self.split}|{self.images.shape}|{self.images.dtype}".encode())
            digest.update(np.ascontiguousarray(self.images).tobytes())
            digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "split": self.split,
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "fingerprint": self.fingerprint(),
        }


def load_dataset(spec: str, split: str = "train") -> ImageDataset:
    """Build the dataset named by ``spec`` (``digits``, ``cifar100:DIR``, ``folder:DIR``, ``idx:DIR``) for ``split``."""
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    name, _, argument = spec.partition(":")
    factory = DATASETS.get(name)
    return factory(spec, argument, split)
