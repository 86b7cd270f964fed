"""``cifar100:DIR``: the cifar-100-python pickle folder, held in memory (50,000 × 3 × 32 × 32 float32 ≈ 614 MB).

``DIR/train`` and ``DIR/test`` are pickles of a dict with ``b"data"`` (N, 3072) uint8 (1024 red, 1024 green,
1024 blue values, rows of 32) and ``b"fine_labels"`` (N ints in 0..99); ``DIR/meta`` (optional) has
``b"fine_label_names"``. Pixels are scaled to [0, 1] and normalised with the CIFAR-100 mean (0.5071, 0.4867,
0.4408) and std (0.2675, 0.2565, 0.2761) (the RepDistiller recipe). The pickles are opened only from the
directory the user named, and with a restricted unpickler that admits nothing but plain containers and numpy
arrays (``encoding="bytes"`` as the Python 2 files need), so a doctored file cannot run code — it is refused
as invalid input.

**The fingerprint does not depend on the directory**: it hashes the canonical name ``cifar100`` instead of
the spec the user typed (which is still recorded, for provenance), plus split, shape, pixels and labels; a
copied or moved folder keeps matching the stores made from it.

Views: ``ViewPolicy("shift", (32, 32), pad=4, flip_p=0.5)`` = RandomCrop(32, padding=4) + horizontal flip.
One small, consistent difference from RepDistiller: there the raw image is zero-padded (black) *before*
normalisation, so the border is ``-mean/std`` after it; here :func:`featstore.views.render_views` pads the
*normalised* image with 0, i.e. with the dataset's mean colour. Teacher and student both see the same
rendered pixels, so distillation is unaffected; only the border colour differs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from featstore.datasets.base import DATASETS, DirImageDataset, directory_of
from featstore.errors import InputNotFound, InvalidInput
from featstore.views import ViewPolicy

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def _normalise_(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """In place on float32 (N, 3, H, W) values in [0, 1]: (x - mean) / std per channel."""
    images -= np.asarray(mean, dtype=np.float32)[None, :, None, None]
    images /= np.asarray(std, dtype=np.float32)[None, :, None, None]
    return images


# What a cifar-100-python pickle may reference: numpy's array reconstruction and, for pickles written by
# Python 3 at protocol <= 2, the bytes helper. Anything else (os.system, builtins.eval, ...) is refused.
_PICKLE_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 renamed it; avoid the shim's warning
        return super().find_class(module, name)


def _load_pickle(path: Path) -> Any:
    if not path.is_file():
        raise InputNotFound(
            f"cifar100: file not found: {path} (expected the cifar-100-python folder with "
            "files 'train', 'test' and 'meta')"
        )
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as err:
        raise InvalidInput(f"cifar100: {path} is not a cifar-100-python pickle: {type(err).__name__}: {err}") from None


def _entry(obj: Any, key: str, path: Path) -> Any:
    if not isinstance(obj, dict):
        raise InvalidInput(f"cifar100: {path} does not hold a dict but a {type(obj).__name__}")
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise InvalidInput(f"cifar100: {path} has no {key!r} entry")


def _cifar_class_names(path: Path) -> tuple[str, ...] | None:
    if not path.exists():
        return None
    names = _entry(_load_pickle(path), "fine_label_names", path)
    if not isinstance(names, (list, tuple)) or len(names) != 100:
        raise InvalidInput(f"cifar100: {path}: 'fine_label_names' should be a list of 100 names")
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as err:
        raise InvalidInput(f"cifar100: {path}: unreadable class name: {err}") from None


@DATASETS.register("cifar100")
def _cifar100(spec: str, argument: str, split: str) -> DirImageDataset:
    """``cifar100:DIR``: the cifar-100-python pickle folder (see the module docstring)."""
    root = directory_of(argument, spec, "cifar100")
    path = root / split
    content = _load_pickle(path)
    data = np.asarray(_entry(content, "data", path))
    labels = np.asarray(_entry(content, "fine_labels", path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise InvalidInput(f"cifar100: {path}: 'data' should be (N, 3072), got shape {data.shape}")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or data.min() < 0 or data.max() > 255:
            raise InvalidInput(f"cifar100: {path}: 'data' should be uint8 pixels, got {data.dtype}")
        data = data.astype(np.uint8)
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise InvalidInput(
            f"cifar100: {path}: 'fine_labels' should be {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= 100:
        raise InvalidInput(f"cifar100: {path}: labels must lie in 0..99, got {labels.min()}..{labels.max()}")
    class_names = _cifar_class_names(root / "meta")
    images = data.reshape(-1, 3, 32, 32).astype(np.float32)
    images /= np.float32(255.0)
    _normalise_(images, CIFAR100_MEAN, CIFAR100_STD)
    policy = ViewPolicy(kind="shift", source_size=(32, 32), pad=4, flip_p=0.5)
    return DirImageDataset(
        spec=spec,
        split=split,
        images=images,
        labels=labels.astype(np.int64),
        num_classes=100,
        view_policy=policy,
        fingerprint_name="cifar100",
        class_names=class_names,
        normalisation=(CIFAR100_MEAN, CIFAR100_STD),
    )


__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "DirImageDataset"]
