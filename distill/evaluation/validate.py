"""Argument checks shared by every evaluation module.

Arrays in, validated numpy arrays out, or an :class:`~featstore.errors.InvalidInput` with a message that names
the argument.

One module meant to be shared, so that search, metrics, verification and the protocols fail with the same
words for the same mistake (and none of them reaches into another's private helpers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from featstore.errors import InvalidInput

UNKNOWN_LABEL: int = -1
"""Label meaning "unknown"; also the sentinel for padded/missing neighbours (it never matches a query)."""

__all__ = [
    "UNKNOWN_LABEL",
    "l2_normalize",
    "normalised_known",
    "as_matrix",
    "check_far",
    "check_ks",
    "int_vector",
    "positive_int",
    "score_vector",
    "to_numpy",
]


def to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, sequences and (without importing torch) CPU/GPU tensors."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def int_vector(x: Any, name: str) -> np.ndarray:
    """``x`` as a 1-D int64 array, refused unless it is 1-D integers; ``name`` is named in the refusal."""
    a = to_numpy(x)
    if a.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InvalidInput(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def score_vector(x: Any, name: str) -> np.ndarray:
    """A 1-D finite float array. float32 stays float32 (scores can be billions of pairs; no silent 2x copy)."""
    a = to_numpy(x)
    if a.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-D array of scores, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise InvalidInput(f"{name} must hold real numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name} contains NaN or infinite scores")
    return a


def as_matrix(x: Any, name: str) -> np.ndarray:
    """A finite 2-D float array (any float/int dtype accepted; the caller's array is not modified)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise InvalidInput(f"{name} must be a 2-D array (n, dim), got shape {a.shape}")
    if a.shape[1] == 0:
        raise InvalidInput(f"{name} has dimension 0")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InvalidInput(f"{name} must hold real numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name} contains NaN or infinite values")
    return a


def positive_int(v: Any, name: str) -> int:
    """``v`` as an int, refused unless it is an integer > 0 (bool excluded)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise InvalidInput(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_far(far: float) -> Fraction:
    """Return ``far`` as the exact decimal it prints as (see :func:`distill.evaluation.metrics.tar_at_far` for why)."""
    if isinstance(far, bool) or not isinstance(far, (int, float, np.floating, np.integer)):
        raise InvalidInput(f"FAR must be a number, got {far!r}")
    if not (math.isfinite(far) and 0.0 < far <= 1.0):
        raise InvalidInput(f"FAR must be in (0, 1], got {far!r}")
    return Fraction(repr(float(far)))


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """The k values of Recall@k as sorted, distinct positive integers; refused when empty or invalid."""
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise InvalidInput(f"ks must be a sequence of positive integers, got {ks!r}") from None
    if not out or any(k <= 0 for k in out) or any(int(k) != k for k in ks):
        raise InvalidInput(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted(set(out)))


_NORMALIZE_BLOCK_BYTES = 1 << 20
"""Size of the float64 working block of :func:`l2_normalize`: small enough to stay in a core's cache."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """float32, C-contiguous copy of ``x`` (n, dim) with rows of unit L2 norm; all-zero rows stay zero.

    The norm is taken in float64 so large or tiny float32 values neither overflow nor underflow; zero rows are
    divided by 1 instead of 0, so they give score 0 against everything rather than NaN. The rows go through a
    float64 block of a few hundred kilobytes at a time rather than one float64 copy of the whole matrix, so
    the widening, the squares, the division and the rounding back to float32 run in cache; each row's result
    is the same as ``x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)`` rounded to float32,
    bit for bit (the same float64 operations, in the same order, on the same row).
    """
    a = as_matrix(x, "embeddings")
    if np.result_type(a.dtype, np.float64) != np.float64:  # long double: divided at its own precision
        norms = np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
        return np.ascontiguousarray(a / np.where(norms > 0, norms, 1.0), dtype=np.float32)
    n, dim = a.shape
    out = np.empty((n, dim), dtype=np.float32)
    rows = max(1, _NORMALIZE_BLOCK_BYTES // (8 * dim))
    wide = np.empty((min(rows, n), dim), dtype=np.float64)
    squares = np.empty_like(wide)
    norms = np.empty((len(wide), 1), dtype=np.float64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        w, sq, norm = wide[: stop - start], squares[: stop - start], norms[: stop - start]
        np.copyto(w, a[start:stop], casting="unsafe")  # exact: every accepted dtype widens to float64
        np.multiply(w, w, out=sq)
        np.add.reduce(sq, axis=1, keepdims=True, out=norm)  # the pairwise row sum np.linalg.norm does
        np.sqrt(norm, out=norm)
        norm[norm == 0] = 1.0
        np.divide(w, norm, out=w)
        out[start:stop] = w
    return out


def normalised_known(embeddings: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated, L2-normalised float32 rows and int64 labels of the known (label != -1) samples.

    This is the input every all-pairs scorer starts from.
    """
    x = as_matrix(embeddings, "embeddings")
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.size != x.shape[0]:
        raise InvalidInput(f"labels must be 1-D with one label per embedding ({x.shape[0]}), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    keep = y != UNKNOWN_LABEL
    if keep.all():  # the usual case: no copy of the rows before normalising them
        return l2_normalize(x), y.copy()  # a copy, as y[keep] is: the caller's labels stay theirs
    return l2_normalize(x[keep]), np.ascontiguousarray(y[keep])
