"""Datasets read from image files or records, decoded one sample at a time when a view is asked for.

Why lazy: memory must not grow with the number of samples (MS1M-V3 is 5.1 M faces), so a dataset is an
*index* — for each sample a key (a relative path, a record offset), its byte size and its label — plus a
way to read one sample's bytes. :meth:`LazyImageDataset.load_views` reads the bytes, decodes them with
Pillow (RGB), cuts each requested view from the *original* image (:func:`featstore.views.render_original`)
at the model's input size and normalises it; DataLoader workers call it (:mod:`featstore.loader`).

**Fingerprints come from the index, never from pixels**: sha256 over the format name, the split, every
key, byte size and label, in order — a million entries in about a second, and independent of where the
data lies (keys are relative), so a moved dataset keeps its fingerprint. A file rewritten with the same
size is caught by the *content digest*: every sample's bytes are hashed as they are read, extraction
stores one digest per chunk, and ``store verify --teacher`` and the trainer compare it
(:func:`chunk_digest`).
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from featstore.datasets.base import Dataset, LoadOptions, SampleViews
from featstore.datasets.images import UnreadableImage, decode_rgb, image_size
from featstore.errors import InvalidInput
from featstore.views import ViewPolicy, render_original, sample_view_params

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadSample(InvalidInput):
    """A sample whose bytes cannot be read or decoded; the message names the file or record."""


def index_fingerprint(name: str, split: str, keys: list[str], sizes: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over (name, split, keys, byte sizes, labels) in order — the index, not the content."""
    digest = hashlib.sha256()
    digest.update(f"{name}|{split}|{len(keys)}\n".encode())
    digest.update("\n".join(keys).encode("utf-8", "surrogateescape"))
    digest.update(np.ascontiguousarray(sizes, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def chunk_digest(sample_digests: list[bytes]) -> bytes:
    """The content digest of a chunk: sha256 over its samples' sha256 digests, in row order."""
    return hashlib.sha256(b"".join(sample_digests)).digest()


def to_tensor(image: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """A PIL RGB image → float32 (3, H, W), scaled to [0, 1] and normalised (ToTensor + Normalize)."""
    array = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    return x.sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))


class LazyImageDataset(Dataset):
    """Base of the file-backed formats: subclasses provide the index and :meth:`read_bytes`."""

    lazy: ClassVar[bool] = True
    name: ClassVar[str] = ""  # the format name that enters the fingerprint (never the directory)

    def __init__(
        self,
        spec: str,
        split: str,
        keys: list[str],
        sizes: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        image_size: tuple[int, int],
        view_policy: ViewPolicy,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        self.spec, self.split = spec, split
        self.keys = keys
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.view_policy = view_policy
        self.mean, self.std = mean, std
        self.normalisation = (tuple(mean), tuple(std))
        self.class_names = class_names
        self.options = LoadOptions()
        self._fingerprint: str | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(3, H, W): every sample decodes to RGB at the dataset's image size."""
        return (3, *self.image_size)

    def fingerprint(self) -> str:
        """The digest of the index (name, split, keys, sizes, labels), computed once."""
        if self._fingerprint is None:
            self._fingerprint = index_fingerprint(self.name, self.split, self.keys, self.sizes, self.labels)
        return self._fingerprint

    @abstractmethod
    def read_bytes(self, row: int) -> bytes:
        """The stored bytes of sample ``row`` (an encoded image); :class:`BadSample` when unreadable."""

    @abstractmethod
    def where(self, row: int) -> str:
        """Where sample ``row`` lives, for error messages (a path, or a record of a file)."""

    def decode(self, row: int, data: bytes) -> Any:
        """Encoded bytes → a PIL RGB image (:func:`featstore.datasets.images.decode_rgb`).

        Raises :class:`BadSample` naming the sample when the bytes do not decode.
        """
        try:
            return decode_rgb(data)
        except UnreadableImage as err:
            raise BadSample(f"{self.name}: cannot read image {self.where(row)}: {err}") from None

    def _size_of(self, row: int, data: bytes) -> tuple[int, int]:
        try:
            return image_size(data)
        except UnreadableImage as err:
            raise BadSample(f"{self.name}: cannot read image {self.where(row)}: {err}") from None

    def source_sizes(self, rows: np.ndarray) -> np.ndarray:
        """(H, W) of each original, from the image header (Pillow decodes no pixels for this)."""
        return np.array([self._size_of(int(r), self.read_bytes(int(r))) for r in rows], dtype=np.int64).reshape(-1, 2)

    def load_views(
        self, row: int, params: np.ndarray | None, seed: int = 0, view_ids: tuple[int, ...] = (0,)
    ) -> SampleViews:
        """Read and decode sample ``row`` once and render each of ``view_ids`` from it."""
        data = self.read_bytes(row)
        image = self.decode(row, data)
        if params is None:
            size = (image.height, image.width)
            params = np.stack([sample_view_params(self.view_policy, seed, row, v, size) for v in view_ids])
        views = [to_tensor(render_original(image, p, self.image_size), self.mean, self.std) for p in params]
        return SampleViews(torch.stack(views), np.asarray(params, np.float32), hashlib.sha256(data).digest())

    def content_digest(self, rows: np.ndarray) -> bytes:
        """The digest of the encoded bytes of ``rows``."""
        return chunk_digest([hashlib.sha256(self.read_bytes(int(r))).digest() for r in rows])
