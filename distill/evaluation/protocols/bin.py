"""insightface's verification ``.bin`` files and their 10-fold accuracy with flip test.

The files are ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` …; the accuracy is as arcface_torch reports it.

**Format.** A pickle of ``(bins, issame_list)``: ``bins`` a list of 2·P encoded images (JPEG/PNG bytes,
112×112 aligned faces), ``issame_list`` P booleans; pair p is images 2p and 2p+1. Files written by Python 2
need ``encoding="bytes"``. The pickle is read with an unpickler that resolves no global at all, so only
plain containers, bytes and booleans can come out of it (``_codecs.encode``, with which protocol-2
pickles spell bytes, is the one function it resolves): a file carrying any other object (the way a
pickle runs code) is refused as invalid input before anything is built.

**Protocol** (arcface_torch ``eval/verification.py``): every image and its horizontal flip are embedded;
the two embeddings are summed and L2-normalised; a pair's score is the cosine of its two images (the
squared distance arcface_torch thresholds is 2 − 2·cos, the same order). The P pairs are cut into 10
contiguous folds (scikit-learn ``KFold(10)`` without shuffling: the first P mod 10 folds one pair larger);
for each fold the threshold maximising accuracy on the other nine is applied to it. One difference:
arcface_torch searches thresholds on a 0.01 grid of distances, fsd takes the exact best threshold
(:func:`best_threshold`), which can only be as good or better on the training folds. The report gives
the mean and the standard deviation over folds as arcface_torch prints them (``np.std``, ddof = 0), the
LFW-style statistics of :func:`lfw_accuracy`, and the accuracy without the flip.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.evaluation.protocols.pairs import lfw_accuracy
from featstore.datasets.files import UnreadableFile, read_file
from featstore.datasets.images import UnreadableImage, decode_rgb
from featstore.errors import InputNotFound, InvalidInput

BIN_FOLDS = 10
MAX_BIN_BYTES = 4 << 30  # a regular file of at most 4 GiB (insightface's largest, cfp_fp.bin, is ~0.1 GiB)


class _NoGlobals(pickle.Unpickler):
    """Resolves no class or function but ``_codecs.encode`` (how protocol-2 pickles spell bytes).

    Only lists, tuples, bytes, str, numbers and booleans load.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


@dataclass
class BinSet:
    """One verification set read from a ``.bin`` file.

    Attributes:
        name: The set's name (the file stem).
        images: The 2·P encoded images; pair p is images 2p and 2p+1.
        same: (P,) whether each pair shows one person.
    """

    name: str
    images: list[bytes]
    same: np.ndarray

    @property
    def pairs(self) -> int:
        """The number of pairs, P."""
        return int(self.same.size)


def read_bin(path: str | Path) -> BinSet:
    """Parse a verification ``.bin`` safely (see the module docstring); every defect is :class:`InvalidInput`."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"verification file {path} does not exist")
    try:
        data = read_file(path, limit=MAX_BIN_BYTES)
    except UnreadableFile as exc:
        raise InvalidInput(f"verification file {path} cannot be read: {exc}") from None
    try:
        content = _NoGlobals(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise InvalidInput(
            f"{path} is not a verification .bin: its pickle holds objects other than images and flags ({exc})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files raise EOFError, ValueError, …
        raise InvalidInput(f"{path} is not a verification .bin ({type(exc).__name__})") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise InvalidInput(f"{path}: expected a pickled (images, is-same flags) pair")
    images, flags = content
    if not isinstance(images, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise InvalidInput(f"{path}: the images must be a list of encoded image bytes")
    if not isinstance(flags, (list, tuple)) or not all(isinstance(f, (bool, int)) for f in flags):
        raise InvalidInput(f"{path}: the is-same flags must be a list of booleans")
    if len(images) != 2 * len(flags) or not flags:
        raise InvalidInput(f"{path}: {len(images)} images for {len(flags)} pairs (two images per pair are needed)")
    return BinSet(path.stem, [bytes(b) for b in images], np.asarray([bool(f) for f in flags], dtype=bool))


def decode_images(bins: BinSet, size: int) -> np.ndarray:
    """uint8 (2P, 3, size, size) RGB images of the set.

    Images of another size are resized (bilinear), as arcface_torch does. Decoding is fsd's one image decoder
    (:func:`featstore.datasets.images.decode_rgb`: 16-bit images scaled, decompression bombs refused).
    """
    from PIL import Image

    out = np.empty((len(bins.images), 3, size, size), dtype=np.uint8)
    for i, data in enumerate(bins.images):
        try:
            rgb = decode_rgb(data)
        except UnreadableImage as exc:
            raise InvalidInput(f"{bins.name}.bin: image {i} cannot be decoded: {exc}") from None
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    return out


def kfold_ids(pairs: int, folds: int = BIN_FOLDS) -> np.ndarray:
    """Fold id of every pair: contiguous folds, the first ``pairs % folds`` one larger (KFold, no shuffle)."""
    if pairs < folds:
        raise InvalidInput(f"{folds}-fold accuracy needs at least {folds} pairs, got {pairs}")
    sizes = np.full(folds, pairs // folds)
    sizes[: pairs % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def _pair_cosines(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", unit[0::2], unit[1::2]).astype(np.float64)


def bin_accuracy(embeddings: np.ndarray, flipped: np.ndarray | None, same: np.ndarray) -> dict[str, Any]:
    """The report of one ``.bin``: 10-fold accuracy of (embedding + flipped embedding), see the module doc."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != 2 * same.size:
        raise InvalidInput(f"{e.shape[0]} embeddings for {same.size} pairs")
    folds = kfold_ids(same.size)
    combined = e if flipped is None else e + np.asarray(flipped, dtype=np.float64)
    lfw = lfw_accuracy(_pair_cosines(combined), same, folds)
    plain = lfw_accuracy(_pair_cosines(e), same, folds)
    fold_acc = np.asarray(lfw["fold_accuracy"])
    return {
        "pairs": int(same.size),
        "folds": BIN_FOLDS,
        "flip_test": flipped is not None,
        "accuracy": float(fold_acc.mean()),
        "accuracy_std": float(fold_acc.std()),  # ddof 0, as arcface_torch prints it
        "accuracy_without_flip": plain["accuracy_mean"],
        "lfw": lfw,
    }
