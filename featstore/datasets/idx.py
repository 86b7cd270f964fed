"""``idx:DIR``: the MNIST IDX format, which MNIST, Fashion-MNIST, KMNIST and EMNIST ship in.

A split is two files in ``DIR``: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` for ``train``,
``t10k-images-idx3-ubyte`` + ``t10k-labels-idx1-ubyte`` for ``test``, each optionally gzipped (``.gz``; the
uncompressed file wins when both exist). ``idx:`` without a directory reads the folder of the Debian package
``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), so Fashion-MNIST works offline after
``apt-get install dataset-fashion-mnist``.

File layout (big-endian): two zero bytes, a type byte (only 0x08 = unsigned byte is accepted, which is
what these datasets use), the number of dimensions (3 for images, 1 for labels), one uint32 per
dimension, then the values row-major. A file whose magic, dimensions or size disagree, an image file and
label file with different counts, or a test label the training split has no class for is refused with one
``Error:`` line naming the file.

Pixels are scaled to [0, 1] (float32, one channel): (N, 1, H, W), like ``digits``. The split is decoded
whole into memory once (Fashion-MNIST train: 60,000 × 28 × 28 × 4 bytes ≈ 188 MB). Classes are
0 … max(train label); their number comes from the training split, for both splits.

Options follow the directory after the last ``?`` as ``key=value`` joined by ``&``:

* ``limit=N`` — only the first N samples of each split (Fashion-MNIST's files are already shuffled, so the
  first N are a near-balanced subset): for quick experiments and CI.
* ``per_class=N`` — only the first N samples of each class, in file order (a fixed, stratified subset: N
  of every class, e.g. ``per_class=1000`` is 10,000 Fashion-MNIST images); refused when a class of the
  training split has fewer (or none) in the split loaded.
  Applied after ``limit``.
* ``flip=P`` — the views' horizontal-flip probability (default 0: a flipped digit or letter is another
  glyph; 0.5 suits Fashion-MNIST's clothes).
* ``pad=K`` — the views' shift: RandomCrop(size, padding=K) (default 2, at most 256).

The fingerprint hashes ``idx`` plus the options instead of the directory, so a moved folder keeps it.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from featstore.datasets.base import DATASETS, DirImageDataset, ImageDataset
from featstore.datasets.files import UnreadableFile, read_file
from featstore.errors import InputNotFound, InvalidInput
from featstore.spec_query import SpecQuery
from featstore.views import ViewPolicy

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
UNSIGNED_BYTE = 0x08
PREFIXES = {"train": "train", "test": "t10k"}
OPTIONS = ("limit", "per_class", "flip", "pad")
MAX_IDX_BYTES = 4 << 30  # EMNIST ByClass, the largest IDX set, is ~0.6 GiB uncompressed
MAX_PAD = 256  # the views' zero padding: more would only allocate (every shift then shows padding alone)


def _read_bytes(path: Path) -> bytes:
    """The file's (decompressed) content, at most :data:`MAX_IDX_BYTES`.

    A damaged gzip stream or a gzip bomb is invalid input naming the file.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read(MAX_IDX_BYTES + 1)
        else:
            data = read_file(path, limit=MAX_IDX_BYTES)
    except UnreadableFile as exc:
        raise InvalidInput(f"IDX file {path} is unreadable: {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(f"IDX file {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise InvalidInput(f"IDX file {path} holds more than {MAX_IDX_BYTES} bytes (decompressed)")
    return data


def read_idx(path: Path, ndim: int, limit: int | None = None) -> np.ndarray:
    """The uint8 array of an IDX file with ``ndim`` dimensions, checking magic, dimensions and size.

    Args:
        path: The IDX file, optionally gzipped.
        ndim: The dimensions the header must declare (3 for images, 1 for labels).
        limit: Keep only the first rows (the file must still hold every row its header promises).

    Returns:
        The uint8 array of the header's shape (first dimension cut to ``limit``).

    Raises:
        InvalidInput: An unreadable or truncated file, or a bad magic number, value type or dimension count.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InvalidInput(f"IDX file {path}: bad magic {data[:4].hex() or 'empty file'} (not an IDX file)")
    if data[2] != UNSIGNED_BYTE:
        raise InvalidInput(f"IDX file {path}: value type 0x{data[2]:02x} is not supported (only 0x08, unsigned byte)")
    if data[3] != ndim:
        raise InvalidInput(f"IDX file {path}: {data[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidInput(f"IDX file {path} is truncated: its header is incomplete")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)  # Python integers: a product of four u4 dimensions cannot wrap
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise InvalidInput(
            f"IDX file {path} is {problem}: header {shape} needs {expected} bytes, the file has {len(data)}"
        )
    if shape[0] == 0 or (ndim > 1 and min(shape[1:]) == 0):
        raise InvalidInput(f"IDX file {path} holds no data (shape {shape})")
    rows = shape[0] if limit is None else min(limit, shape[0])
    return np.frombuffer(data, dtype=np.uint8, offset=header, count=rows * (expected - header) // shape[0]).reshape(
        (rows, *shape[1:])
    )


def _find(directory: Path, prefix: str, kind: str, ndim: int) -> Path:
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputNotFound(f"IDX dataset {directory}: no {names[0]} or {names[0]}.gz")


def _parse(argument: str, spec: str) -> tuple[Path, dict[str, float]]:
    """(directory, the options given, typed); see the module docstring."""
    directory, query = SpecQuery.split(argument, spec, OPTIONS, what="dataset spec")
    typed = {
        "limit": query.int("limit", None, low=1, high=1 << 31),
        "per_class": query.int("per_class", None, low=1, high=1 << 31),
        "flip": query.float("flip", None, low=0.0, high=1.0),
        "pad": query.int("pad", None, low=0, high=MAX_PAD),
    }
    options = {key: value for key, value in typed.items() if value is not None}
    path = Path(directory).expanduser() if directory else DEBIAN_FASHION_MNIST
    if not path.is_dir():
        hint = " (install the Debian package dataset-fashion-mnist, or give idx:DIR)" if not directory else ""
        raise InputNotFound(f"IDX dataset directory not found: {path}{hint}")
    return path, options


def _load_split(directory: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, Path]:
    prefix = PREFIXES[split]
    image_path = _find(directory, prefix, "images", 3)
    label_path = _find(directory, prefix, "labels", 1)
    labels = read_idx(label_path, 1)
    images = read_idx(image_path, 3)
    if len(images) != len(labels):
        raise InvalidInput(
            f"IDX dataset {directory}: {image_path.name} holds {len(images)} images but "
            f"{label_path.name} {len(labels)} labels"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, label_path


def first_per_class(labels: np.ndarray, per_class: int, path: Path, num_classes: int) -> np.ndarray:
    """Row indices, in file order, of the first ``per_class`` samples of each class.

    Args:
        labels: The loaded split's labels.
        per_class: Samples kept of each class.
        path: The labels file, named in the error.
        num_classes: The classes of the training split; each must have ``per_class`` samples (a class that
            ``limit`` cut out has none), so the subset always holds every class.

    Returns:
        The kept rows, ascending.

    Raises:
        InvalidInput: A class has fewer than ``per_class`` samples.
    """
    counts = np.bincount(labels, minlength=num_classes)
    if (short := np.flatnonzero(counts < per_class)).size:
        label = int(short[0])
        raise InvalidInput(f"IDX file {path}: per_class={per_class}, but class {label} has {counts[label]} samples")
    keep = [np.flatnonzero(labels == label)[:per_class] for label in range(num_classes)]
    return np.sort(np.concatenate(keep))


@DATASETS.register("idx")
def _idx(spec: str, argument: str, split: str) -> ImageDataset:
    """MNIST-format IDX files (see the module docstring); ``idx:`` alone is Debian's Fashion-MNIST."""
    directory, options = _parse(argument, spec)
    limit = int(options["limit"]) if "limit" in options else None
    images, labels, label_path = _load_split(directory, split, limit)
    # the classes are those of the whole training split, whichever split (and limit) is loaded
    train_labels = read_idx(_find(directory, PREFIXES["train"], "labels", 1), 1)
    num_classes = int(train_labels.max()) + 1
    if int(labels.max()) >= num_classes:
        raise InvalidInput(
            f"IDX file {label_path}: label {int(labels.max())} is out of range: the training split has "
            f"classes 0..{num_classes - 1}"
        )
    if "per_class" in options:
        keep = first_per_class(labels, int(options["per_class"]), label_path, num_classes)
        images, labels = images[keep], labels[keep]
    pixels = images.astype(np.float32)[:, None, :, :] / np.float32(255.0)
    h, w = pixels.shape[2:]
    policy = ViewPolicy("shift", (h, w), pad=int(options.get("pad", 2)), flip_p=float(options.get("flip", 0.0)))
    canonical = "idx" + ("?" + "&".join(f"{k}={options[k]:g}" for k in sorted(options)) if options else "")
    return DirImageDataset(
        spec=spec,
        split=split,
        images=pixels,
        labels=labels.astype(np.int64),
        num_classes=num_classes,
        view_policy=policy,
        fingerprint_name=canonical,
        normalisation=((0.0,), (1.0,)),  # pixels / 255, no mean or std
    )
