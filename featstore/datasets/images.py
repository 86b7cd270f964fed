"""Image datasets read from a user-named directory: ``cifar100:DIR`` and ``folder:DIR`` (docs/cli.md).

Both load a whole split into memory as float32 (N, 3, H, W) already normalised, like ``digits``: the store
pairs row i with sample i of the split, and the fingerprint hashes the exact pixels, so the cheapest correct
design is to decode every image once. Memory is N·3·H·W·4 bytes (CIFAR-100 train: 50,000 × 3 × 32 × 32 × 4
≈ 614 MB); that is the scale these loaders target (small and medium sets), not ImageNet.

**Fingerprints do not depend on the directory.** ``spec`` keeps the string the user typed (it is what the
store and checkpoints record, for provenance), but :meth:`DirImageDataset.fingerprint` hashes a canonical
name instead — ``cifar100`` or ``folder?size=S&resize=R`` — plus split, shape, pixels and labels. A dataset
moved or copied to another directory (or named by a relative instead of an absolute path) therefore keeps
its fingerprint and still matches the stores made from it; any change of a pixel, label or order does not.

``cifar100:DIR``
    ``DIR`` is the extracted ``cifar-100-python`` folder: ``DIR/train`` and ``DIR/test`` are pickles of a
    dict with ``b"data"`` (N, 3072) uint8 (1024 red, 1024 green, 1024 blue values, rows of 32) and
    ``b"fine_labels"`` (N ints in 0..99); ``DIR/meta`` (optional) has ``b"fine_label_names"``. Pixels are
    scaled to [0, 1] and normalised with the CIFAR-100 mean (0.5071, 0.4867, 0.4408) and std (0.2675,
    0.2565, 0.2761) (docs/methods.md, the RepDistiller recipe). The pickles are opened only from the directory the
    user named, and with a restricted unpickler that admits nothing but plain containers and numpy arrays
    (``encoding="bytes"`` as the Python 2 files need), so a doctored file cannot run code — it is refused
    as invalid input.

    Views: ``ViewPolicy("shift", (32, 32), pad=4, flip_p=0.5)`` = RandomCrop(32, padding=4) + horizontal
    flip. One small, consistent difference from RepDistiller: there the raw image is zero-padded (black)
    *before* normalisation, so the border is ``-mean/std`` after it; here :func:`featstore.views.render_views`
    pads the *normalised* image with 0, i.e. with the dataset's mean colour. Teacher and student both see
    the same rendered pixels, so distillation is unaffected; only the border colour differs.

``folder:DIR`` and ``folder:DIR?size=S&resize=R``
    One sub-folder per class under ``DIR/train`` and ``DIR/test`` (``DIR/<split>/<class>/<image>``, the
    torchvision ImageFolder layout). Classes are the sorted (code-point order, as ImageFolder) names of the
    sub-folders of ``DIR/train`` — for both splits, so label i means the same class in each; a class folder
    under ``DIR/test`` that ``DIR/train`` lacks is an error, one that is missing from ``DIR/test`` is fine.
    Images are the files with suffix .png .jpg .jpeg .bmp .gif .webp (any case) anywhere below a class
    folder, taken in sorted order of their path relative to it; hidden files and folders (``.name``) and
    other files are skipped. Each image is decoded with Pillow, converted to RGB (first frame of an
    animation), resized (bilinear, antialiased) so its short side is ``resize``, center-cropped to
    ``size`` × ``size`` — torchvision's Resize(resize) + CenterCrop(size) on a PIL image —, scaled to [0, 1]
    and normalised with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

    Options follow the directory after a ``?`` as ``key=value`` pairs joined by ``&``: ``size`` (default 32)
    and ``resize`` (default ``round(size * 9 / 8)``, i.e. 36 for 32, the 32→36 ratio); both positive
    integers, ``resize >= size``. Parsing is strict: an unknown or repeated key, a missing ``=`` or a
    non-integer value is an error. The *last* ``?`` starts the options, so a directory whose name contains
    ``?`` must be followed by one (e.g. ``folder:odd?dir?size=32``).

    Views: ``ViewPolicy("resized_crop", (size, size), pad=0, flip_p=0.5, scale=(0.35, 1.0))`` =
    RandomResizedCrop + flip, drawn on the stored size × size image (view 0 is that image itself, the usual
    resize/center-crop), not on the full-resolution file.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featstore.datasets.base import DATASETS, ImageDataset
from featstore.errors import InputNotFound, InvalidInput
from featstore.views import ViewPolicy

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
FOLDER_DEFAULT_SIZE = 32
FOLDER_OPTIONS = ("size", "resize")


@dataclass
class DirImageDataset(ImageDataset):
    """An :class:`ImageDataset` read from a directory: its fingerprint ignores where the directory is.

    ``fingerprint_name`` replaces ``spec`` in the hash (see the module docstring); ``class_names`` are the
    label names when known (index = label), else ``None``.
    """

    fingerprint_name: str = ""
    class_names: tuple[str, ...] | None = None

    def fingerprint(self) -> str:
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


def _normalise_(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """In place on float32 (N, 3, H, W) values in [0, 1]: (x - mean) / std per channel."""
    images -= np.asarray(mean, dtype=np.float32)[None, :, None, None]
    images /= np.asarray(std, dtype=np.float32)[None, :, None, None]
    return images


def _directory(argument: str, spec: str, kind: str) -> Path:
    if not argument:
        raise InvalidInput(f"dataset spec {spec!r}: give a directory, as in '{kind}:DIR'")
    path = Path(argument).expanduser()
    if not path.exists():
        raise InputNotFound(f"dataset directory not found: {path}")
    if not path.is_dir():
        raise InvalidInput(f"dataset spec {spec!r}: {path} is not a directory")
    return path


# ----------------------------------------------------------------------------------------------- cifar100

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
    root = _directory(argument, spec, "cifar100")
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


# ------------------------------------------------------------------------------------------------- folder

_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,5}")


def parse_folder_argument(argument: str, spec: str) -> tuple[str, int, int]:
    """``DIR[?size=S][&resize=R]`` → (DIR, size, resize), strictly (see the module docstring)."""
    directory, sep, query = argument.rpartition("?") if "?" in argument else (argument, "", "")
    options: dict[str, int] = {}
    if sep:
        if not query:
            raise InvalidInput(f"dataset spec {spec!r}: nothing after '?'; options: size=N, resize=N")
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not eq:
                raise InvalidInput(f"dataset spec {spec!r}: option {item!r} is not key=value")
            if key not in FOLDER_OPTIONS:
                raise InvalidInput(f"dataset spec {spec!r}: unknown option {key!r}; valid: {', '.join(FOLDER_OPTIONS)}")
            if key in options:
                raise InvalidInput(f"dataset spec {spec!r}: option {key!r} given twice")
            if not _POSITIVE_INT.fullmatch(value):
                raise InvalidInput(f"dataset spec {spec!r}: option {key} must be a positive integer, got {value!r}")
            options[key] = int(value)
    size = options.get("size", FOLDER_DEFAULT_SIZE)
    resize = options.get("resize", int(round(size * 9 / 8)))
    if resize < size:
        raise InvalidInput(f"dataset spec {spec!r}: resize ({resize}) must be at least size ({size})")
    return directory, size, resize


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not _is_hidden(e.name))


def _image_files(class_dir: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                path = Path(dirpath) / name
                found.append((path.relative_to(class_dir).as_posix(), path))
    return [path for _, path in sorted(found)]


def resize_center_crop(image: Any, size: int, resize: int) -> Any:
    """torchvision Resize(resize) + CenterCrop(size) on a PIL image: short side → ``resize`` (the long side
    ``int(resize * long / short)``, bilinear), then the central ``size`` × ``size`` box."""
    from PIL import Image

    w, h = image.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _load_image(path: Path, size: int, resize: int) -> np.ndarray:
    """(3, size, size) uint8 after RGB conversion, resize and center crop; InvalidInput naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
        out = np.asarray(resize_center_crop(rgb, size, resize), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InvalidInput(f"folder: cannot read image {path}: {err}") from None
    if out.shape != (size, size, 3):
        raise InvalidInput(f"folder: image {path} gave shape {out.shape} after cropping, expected ({size}, {size}, 3)")
    return out.transpose(2, 0, 1)


def _load_all(files: list[Path], load: Callable[[Path], np.ndarray], out: np.ndarray) -> None:
    """Decode into ``out`` (uint8 → float32 in [0, 1]) with a few threads (Pillow releases the GIL); the
    result does not depend on the thread count, only ``files``' order."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, pixels in enumerate(pool.map(load, files) if workers > 1 else map(load, files)):
            out[i] = pixels
            out[i] /= np.float32(255.0)


@DATASETS.register("folder")
def _folder(spec: str, argument: str, split: str) -> DirImageDataset:
    """``folder:DIR[?size=S&resize=R]``: DIR/<split>/<class>/<image> (see the module docstring)."""
    directory, size, resize = parse_folder_argument(argument, spec)
    root = _directory(directory, spec, "folder")
    train_dir, split_dir = root / "train", root / split
    for needed in dict.fromkeys((train_dir, split_dir)):
        if not needed.is_dir():
            raise InputNotFound(f"folder: {needed} not found (expected {root}/<train|test>/<class>/<images>)")
    classes = _class_folders(train_dir)
    if not classes:
        raise InvalidInput(f"folder: no class sub-folders in {train_dir}")
    index = {name: i for i, name in enumerate(classes)}
    split_classes = classes if split_dir == train_dir else _class_folders(split_dir)
    unknown = [c for c in split_classes if c not in index]
    if unknown:
        raise InvalidInput(
            f"folder: class folder(s) {', '.join(map(repr, unknown))} in {split_dir} are not in "
            f"{train_dir}; every class must have training images"
        )
    if not split_classes:
        raise InvalidInput(f"folder: no class sub-folders in {split_dir}")
    files: list[Path] = []
    labels: list[int] = []
    for name in split_classes:
        found = _image_files(split_dir / name)
        if not found:
            raise InvalidInput(
                f"folder: class folder {split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        files += found
        labels += [index[name]] * len(found)
    images = np.empty((len(files), 3, size, size), dtype=np.float32)
    _load_all(files, lambda p: _load_image(p, size, resize), images)
    _normalise_(images, IMAGENET_MEAN, IMAGENET_STD)
    policy = ViewPolicy(kind="resized_crop", source_size=(size, size), pad=0, flip_p=0.5, scale=(0.35, 1.0))
    return DirImageDataset(
        spec=spec,
        split=split,
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=len(classes),
        view_policy=policy,
        fingerprint_name=f"folder?size={size}&resize={resize}",
        class_names=tuple(classes),
        normalisation=(IMAGENET_MEAN, IMAGENET_STD),
    )


def folder_memory_bytes(num_images: int, size: int = FOLDER_DEFAULT_SIZE) -> int:
    """Bytes a ``folder`` split of ``num_images`` takes in memory: N·3·size·size·4."""
    return int(num_images) * 3 * int(size) * int(size) * 4


__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "DirImageDataset",
    "folder_memory_bytes",
    "parse_folder_argument",
    "resize_center_crop",
]
