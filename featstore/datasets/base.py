"""Datasets: named by a SPEC string, split deterministically, fingerprinted — an index, not a pixel array.

The interface is deliberately small because the store and the trainer only ever need rows by index: the
store row i *is* dataset sample i of the split, and the fingerprint is how training proves the pairing is
right. A :class:`Dataset` knows its labels, its view policy, the size its views are rendered to, and how to
produce the views of one sample (:meth:`Dataset.load_views`, what DataLoader workers call) or of a batch
(:meth:`Dataset.render`, for the in-process path). Small sets (``digits``, ``cifar100``, ``idx``) hold their pixels
in memory (:class:`ImageDataset`); sets read from files (``folder``, ``mxrec``) decode a sample only when it
is asked for (:class:`featstore.datasets.lazy.LazyImageDataset`), in worker processes
(:mod:`featstore.loader`).
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from featstore.errors import InputNotFound, InvalidInput
from featstore.registry import Registry
from featstore.views import ViewPolicy, identity_params, render_views, sample_view_params

DATASETS: Registry = Registry("dataset")
SPLITS = ("train", "test")
MAX_IMAGE_SIZE = 2048
"""The largest size views are rendered to (``--image-size``, ``?size=``): one 2048 × 2048 RGB view is 48 MiB
of float32, so a typo such as 200000 is refused before anything is allocated for it."""


class SplitNotFound(InputNotFound):
    """The dataset exists but has no files for the asked split (insightface's face sets ship ``train`` only)."""


@dataclass(frozen=True)
class LoadOptions:
    """How a dataset is read, not what it is (never part of a fingerprint).

    Attributes:
        workers: DataLoader worker processes (None: a default from the CPU count).
        skip_bad_samples: leave unreadable samples out (with a warning) rather than stop.
    """

    workers: int | None = None
    skip_bad_samples: bool = False


@dataclass
class SampleViews:
    """The rendered views of one sample, as a loader worker returns them.

    Attributes:
        x: (V, C, H, W) float32, normalised model input.
        params: (V, P) float32 view parameters (drawn by the worker when the request carries none).
        digest: sha256 of the bytes read for this sample (None: in-memory data).
    """

    x: torch.Tensor  # (V, C, H, W) float32, normalised model input
    params: np.ndarray  # (V, P) float32 view parameters (drawn here when the request carried none)
    digest: bytes | None  # sha256 of the bytes read for this sample (None: in-memory data)


class Dataset(ABC):
    """What every registered dataset offers (see the module docstring).

    Subclasses set the attributes below; ``lazy`` says whether samples are decoded on demand (then the
    loader uses workers).

    Attributes:
        spec: the spec the dataset is loaded from.
        split: ``train`` or ``test``.
        labels: (N,) int64 labels, one per sample.
        num_classes: C.
        view_policy: how views of a sample are drawn and rendered.
        options: how the dataset is read.
        normalisation: the per-channel (mean, std) that turns [0, 1] pixels into the rendered input, so a
            model that wants other input scaling can recover the pixels; None when not declared.
    """

    lazy: ClassVar[bool] = False
    # An ONNX face model, for one, wants (x - 127.5) / 127.5 and converts from this.
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    spec: str
    split: str
    labels: np.ndarray
    num_classes: int
    view_policy: ViewPolicy
    options: LoadOptions

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) of the model input the views are rendered to."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Hash what pairs store rows with samples (order, labels, content or index).

        Returns:
            The hex digest a store records and training checks.
        """

    @abstractmethod
    def source_sizes(self, rows: np.ndarray) -> np.ndarray:
        """Return the (n, 2) int64 (H, W) of the original images of ``rows`` (what view boxes are drawn on)."""

    @abstractmethod
    def load_views(
        self, row: int, params: np.ndarray | None, seed: int = 0, view_ids: tuple[int, ...] = (0,)
    ) -> SampleViews:
        """Render the views of sample ``row``.

        Args:
            row: the sample.
            params: (V, P) view parameters, or None to draw those of ``view_ids`` from (seed, row, view).
            seed: the seed parameters are drawn from.
            view_ids: the views drawn when ``params`` is None.

        Returns:
            The rendered views, their parameters and the sample's digest.

        Raises:
            BadSample: the sample cannot be read or decoded (datasets read from files).
        """

    def render(self, rows: np.ndarray, params: np.ndarray) -> torch.Tensor:
        """Render one view per row from (n, P) parameters (the in-process path).

        Args:
            rows: the samples.
            params: (n, P) view parameters, one row per sample.

        Returns:
            (n, C, H, W) float32 views.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return torch.zeros((0, *self.image_shape))
        return torch.stack([self.load_views(int(r), np.asarray(p)[None]).x[0] for r, p in zip(rows, params)])

    def get_images(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Render view 0 (the deterministic view) of the given samples.

        Args:
            indices: the samples.

        Returns:
            (n, C, H, W) float32 views.
        """
        rows = np.asarray(indices, dtype=np.int64)
        sizes = self.source_sizes(rows)
        return self.render(rows, np.stack([identity_params(self.view_policy, tuple(s)) for s in sizes]))

    def content_digest(self, rows: np.ndarray) -> bytes | None:
        """Hash the per-sample digests of ``rows`` (sha256).

        Returns:
            The digest; None for in-memory data, whose fingerprint covers every pixel.
        """
        return None

    def describe(self) -> dict:
        """Return the dataset's spec, split, sizes, image shape and fingerprint as a plain dict."""
        return {
            "spec": self.spec,
            "split": self.split,
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "fingerprint": self.fingerprint(),
        }


@dataclass
class ImageDataset(Dataset):
    """An in-memory labelled image split (``digits``, ``cifar100``).

    Attributes:
        spec: the spec the dataset is loaded from.
        split: ``train`` or ``test``.
        images: float32 (N, C, H, W) in the model's input scale.
        labels: int64 (N,).
        num_classes: C.
        view_policy: how views of a sample are drawn and rendered.
        options: how the dataset is read.
        normalisation: the per-channel (mean, std) of the input scale, or None.
    """

    spec: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    view_policy: ViewPolicy
    _fingerprint: str | None = field(default=None, repr=False)
    options: LoadOptions = field(default_factory=LoadOptions, repr=False)
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) of the stored images, which views keep."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def get_images(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Return the source images of the given samples, as a float32 tensor (n, C, H, W)."""
        return torch.from_numpy(self.images[np.asarray(indices, dtype=np.int64)])

    def render(self, rows: np.ndarray, params: np.ndarray) -> torch.Tensor:
        """Render one view per row from (n, P) parameters, in one batched call."""
        return render_views(self.get_images(rows), params, self.view_policy)

    def source_sizes(self, rows: np.ndarray) -> np.ndarray:
        """Return the (n, 2) (H, W) of ``rows``: every image has the stored size."""
        return np.tile(np.asarray(self.images.shape[2:], dtype=np.int64), (len(rows), 1))

    def load_views(
        self, row: int, params: np.ndarray | None, seed: int = 0, view_ids: tuple[int, ...] = (0,)
    ) -> SampleViews:
        """Render the views of sample ``row`` (see :meth:`Dataset.load_views`)."""
        if params is None:
            params = np.stack([sample_view_params(self.view_policy, seed, row, v) for v in view_ids])
        image = self.get_images([row]).expand(len(params), -1, -1, -1)
        return SampleViews(render_views(image, params, self.view_policy), np.asarray(params, np.float32), None)

    def fingerprint(self) -> str:
        """Hash the split's pixels and labels (sha256): it changes if any sample, label or order changes."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(f"{self.spec}|{self.split}|{self.images.shape}|{self.images.dtype}".encode())
            digest.update(np.ascontiguousarray(self.images).tobytes())
            digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


@dataclass
class DirImageDataset(ImageDataset):
    """An in-memory :class:`ImageDataset` read from a directory: its fingerprint ignores where it is.

    ``fingerprint_name`` replaces ``spec`` in the hash (see the module docstring); ``class_names`` are the
    label names when known (index = label), else ``None``.
    """

    fingerprint_name: str = ""
    class_names: tuple[str, ...] | None = None

    def fingerprint(self) -> str:
        """Hash the pixels and labels as :class:`ImageDataset` does, with ``fingerprint_name`` for the spec."""
        if self._fingerprint is None:
            # The base class's hash, computed as if the spec were the canonical, path-free name.
            canonical = ImageDataset(
                spec=self.fingerprint_name,
                split=self.split,
                images=self.images,
                labels=self.labels,
                num_classes=self.num_classes,
                view_policy=self.view_policy,
            )
            self._fingerprint = canonical.fingerprint()
        return self._fingerprint


def directory_of(argument: str, spec: str, kind: str) -> Path:
    """Return the directory a ``kind:DIR`` spec names, checked to exist.

    Args:
        argument: the part after ``kind:``.
        spec: the whole spec, for the messages.
        kind: the format's name.

    Returns:
        The directory (``~`` expanded).

    Raises:
        InvalidInput: no directory given, or a path that is not a directory.
        InputNotFound: the path does not exist.
    """
    if not argument:
        raise InvalidInput(f"dataset spec {spec!r}: give a directory, as in '{kind}:DIR'")
    path = Path(argument).expanduser()
    if not path.exists():
        raise InputNotFound(f"dataset directory not found: {path}")
    if not path.is_dir():
        raise InvalidInput(f"dataset spec {spec!r}: {path} is not a directory")
    return path


ImageSize = int | tuple[int, int]  # S (a square) or (H, W)


def as_hw(image_size: ImageSize | None) -> tuple[int, int] | None:
    """Return ``image_size`` as (H, W): an int is a square; None stays None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = (int(v) for v in image_size)
    return (height, width)


def check_image_size(spec: str, image_size: ImageSize | None, native: tuple[int, ...]) -> None:
    """Refuse an ``--image-size`` other than an in-memory set's stored size, the only one it renders at.

    Raises:
        InvalidInput: ``image_size`` is given and differs from ``native`` (H, W).
    """
    wanted = as_hw(image_size)
    if wanted is not None and wanted != tuple(native):
        raise InvalidInput(
            f"dataset {spec!r} renders its images at {native[0]}×{native[1]} only; an image size of "
            f"{wanted[0]}×{wanted[1]} applies to datasets read from image files (folder:, mxrec:)"
        )


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    image_size: ImageSize | None = None,
    options: LoadOptions | None = None,
) -> Dataset:
    """Build the dataset named by ``spec`` for ``split``.

    Args:
        spec: ``digits``, ``cifar100:DIR``, ``folder:DIR``, ``mxrec:DIR``, ... (``DATASETS`` lists the names).
        split: ``train`` or ``test``.
        image_size: S or (H, W), the size views are rendered to (``--image-size``, or a teacher's input
            size); None for the dataset's own. Only datasets read from files take another size.
        options: how the dataset is read (default: :class:`LoadOptions`).

    Returns:
        The dataset.

    Raises:
        InvalidInput: an unknown split, an image size out of range or not one the dataset renders, or a
            malformed spec.
        UnknownName: no dataset of that name is registered.
        InputNotFound: the files the spec names do not exist (:class:`SplitNotFound` for a missing split).
    """
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    hw = as_hw(image_size)
    if hw is not None and not all(0 < side <= MAX_IMAGE_SIZE for side in hw):
        shown = image_size if isinstance(image_size, int) else f"{hw[0]}×{hw[1]}"
        raise InvalidInput(f"image size must lie in 1…{MAX_IMAGE_SIZE}, got {shown}")
    options = options or LoadOptions()
    name, _, argument = spec.partition(":")
    factory = DATASETS.get(name)
    accepts = inspect.signature(factory).parameters
    # factories that list files take the load options (to skip what cannot be listed) ...
    extra = {"options": options} if "options" in accepts else {}
    # ... and factories that render from files take the size, as (H, W); in-memory ones are checked here
    if "image_size" in accepts:
        dataset = factory(spec, argument, split, image_size=hw, **extra)
    else:
        dataset = factory(spec, argument, split, **extra)
        check_image_size(spec, hw, dataset.image_shape[1:])
    dataset.options = options
    return dataset


def load_eval_dataset(
    spec: str,
    split: str | None,
    *,
    image_size: ImageSize | None = None,
    options: LoadOptions | None = None,
) -> Dataset | None:
    """Load the split a training run evaluates on, or None.

    Args:
        spec: the dataset spec, as for :func:`load_dataset`.
        split: the split to evaluate on; None evaluates nothing.
        image_size: the size views are rendered to (``--image-size``).
        options: how the split is read.

    Returns:
        The dataset; None when ``split`` is None, or when the dataset has no such split (insightface ships
        ``train.rec`` only): then a warning says so and names ``--eval-split none``, which silences it. Any
        other problem of the split is an error, as :func:`load_dataset` raises it.
    """
    if split is None:
        return None
    try:
        return load_dataset(spec, split, image_size=image_size, options=options)
    except SplitNotFound as err:
        import warnings

        warnings.warn(
            f"{err}: training evaluates nothing on the {split!r} split (--eval-split none says so and silences this)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def renders_any_size(spec: str) -> bool:
    """Say whether the dataset ``spec`` names renders its views at any ``image_size`` (read from files)."""
    name = spec.partition(":")[0]
    return name in DATASETS and "image_size" in inspect.signature(DATASETS.get(name)).parameters
