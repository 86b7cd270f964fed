"""Embedding dtypes of the store: encode float32 rows for storage, decode them back to float32.

Why a module of its own: numpy and zarr have no bfloat16, and int8 needs a per-row scale, so "the dtype"
of a store is a small codec rather than a numpy dtype. Readers always get float32.
"""

from __future__ import annotations

import numpy as np
import torch

from featstore.errors import InvalidInput

DTYPES: tuple[str, ...] = ("float16", "float32", "bfloat16", "int8")
DEFAULT_DTYPE = "float16"  # half the bytes of float32, and a measured accuracy cost below seed noise (docs/store.md)

# The numpy dtype each store dtype is kept as on disk (bfloat16 as its raw 16-bit pattern).
STORAGE_DTYPE: dict[str, str] = {"float16": "float16", "float32": "float32", "bfloat16": "uint16", "int8": "int8"}


def check_dtype(name: str) -> str:
    """Return ``name`` when it is a storage dtype of ``DTYPES``; refuse it with the valid names otherwise."""
    if name not in DTYPES:
        raise InvalidInput(f"unknown store dtype {name!r}; valid: {', '.join(DTYPES)}")
    return name


def encode(rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 rows (..., D) → (stored array, per-row scales or None).

    int8 is symmetric per row: scale = max|x| / 127, q = round(x / scale); an all-zero row gets scale 1 so
    decoding stays finite. bfloat16 rounds to nearest even, as torch does.
    """
    rows = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise InvalidInput("embeddings to store contain NaN or Inf (the teacher's output is not finite)")
    if dtype == "float32":
        return rows, None
    if dtype == "float16":
        with np.errstate(over="ignore"):  # overflow is detected just below, with advice
            halves = rows.astype(np.float16)
        if not finite_rows(halves, "float16"):
            raise InvalidInput(
                f"embedding values up to {np.abs(rows).max():.3g} overflow float16 (max 65504); "
                "use --dtype bfloat16 or float32"
            )
        return halves, None
    if dtype == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(rows)).to(torch.bfloat16).view(torch.int16)
        return bits.numpy().view(np.uint16), None
    if dtype == "int8":
        peak = np.abs(rows).max(axis=-1)
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        quantised = np.clip(np.rint(rows / scales[..., None]), -127, 127).astype(np.int8)
        return quantised, scales
    raise InvalidInput(f"unknown store dtype {dtype!r}; valid: {', '.join(DTYPES)}")


def decode(stored: np.ndarray, dtype: str, scales: np.ndarray | None = None) -> np.ndarray:
    """Stored array → float32 rows; the inverse of :func:`encode` up to the dtype's rounding."""
    if dtype == "float32":
        return np.asarray(stored, dtype=np.float32)
    if dtype == "float16":
        # torch's vectorised half → float cast is faster than numpy's and gives the same value for every
        # non-NaN half (NaN is never stored: encode refuses it). Native, writable, shape-preserving input:
        halves = np.ascontiguousarray(stored, dtype=np.float16)
        if not halves.flags.writeable:
            halves = halves.copy()
        return torch.from_numpy(halves).to(torch.float32).numpy().reshape(np.shape(stored))
    if dtype == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(stored).view(np.int16))
        return bits.view(torch.bfloat16).to(torch.float32).numpy()
    if dtype == "int8":
        if scales is None:
            raise InvalidInput("an int8 store needs its scales to decode")
        return stored.astype(np.float32) * np.asarray(scales, dtype=np.float32)[..., None]
    raise InvalidInput(f"unknown store dtype {dtype!r}; valid: {', '.join(DTYPES)}")


def finite_rows(stored: np.ndarray, dtype: str, scales: np.ndarray | None = None) -> bool:
    """True when every stored value decodes to a finite number.

    Checked on the stored bits, without decoding (bfloat16: an all-ones exponent is Inf/NaN; int8: only the scales can
    be non-finite).
    """
    # Integer tests on the bit patterns are much faster than np.isfinite on float16 (numpy has no SIMD for halves).
    if dtype == "float16":
        return not bool(((stored.view(np.uint16) & 0x7C00) == 0x7C00).any())
    if dtype == "float32":
        return not bool(((stored.view(np.uint32) & 0x7F800000) == 0x7F800000).any())
    if dtype == "bfloat16":
        return not bool(((stored & 0x7F80) == 0x7F80).any())
    return scales is None or bool(np.isfinite(scales).all())
