"""What a store must satisfy before anyone reads it.

Its metadata agree with its arrays, its head is finite, its labels are the ones it was written with, and each chunk file
carries a checksum that matches.

Why a module of its own: these checks are the one gate every reader passes (training, eval, export, verify,
stream) — :func:`layout_problems` runs when a store is opened, :func:`check_crc` on every chunk file the direct
read path decompresses (zarr's ``crc32c`` codec checks the others) — so damage that would still decode is named
(array, chunk, what is wrong) instead of being trained on or surfacing as a ``KeyError`` from deep inside zarr.

Format 2 stores append zarr v3's ``crc32c`` codec to every array's codec chain and record ``labels_sha256``
(the labels as little-endian int64); format 1 stores have neither and are still read, with the static checks
only (``fsd store info`` says so).
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import google_crc32c
import numpy as np

from featstore import codecs

CRC_BYTES = 4


def labels_digest(labels: np.ndarray) -> str:
    """sha256 of the labels as little-endian int64.

    Recorded at creation and compared on every open, so labels shifted, re-ordered or lost (a deleted chunk reads as -1)
    cannot pass for the ones extracted.
    """
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def check_crc(data: bytes, key: str) -> bytes:
    """The payload of a chunk file whose last 4 bytes are the crc32c of the rest (zarr's ``crc32c`` codec).

    Raises ValueError naming the file when they disagree (a flipped bit, a truncated or foreign file).
    """
    if len(data) < CRC_BYTES:
        raise ValueError(f"chunk file {key} is {len(data)} bytes, too short to hold its checksum")
    payload = data[:-CRC_BYTES]
    (stored,) = struct.unpack("<I", data[-CRC_BYTES:])
    computed = google_crc32c.value(payload)
    if stored != computed:
        raise ValueError(f"chunk file {key}: checksum mismatch (stored {stored:08x}, computed {computed:08x})")
    return payload


def _unit_rows(array: Any) -> int:
    """Rows of the unit of work an array is cut into: the shard when sharded, else the chunk."""
    shards = getattr(array, "shards", None)
    return int((shards or array.chunks)[0])


def _array_problems(group: Any, meta: dict[str, Any], arrays: dict[str, Any]) -> list[str]:
    """Shapes, dtypes and chunking of the arrays against each other and against the attributes."""
    emb = arrays["embeddings"]
    if emb.ndim != 3:
        return [f"array embeddings has {emb.ndim} dimensions, expected 3 (samples, views, dim)"]
    n, v, d = (int(x) for x in emb.shape)
    dtype = meta.get("dtype")
    problems = []
    if dtype not in codecs.DTYPES:
        return [f"attribute dtype is {dtype!r}, not one of {', '.join(codecs.DTYPES)}"]
    if np.dtype(emb.dtype) != np.dtype(codecs.STORAGE_DTYPE[dtype]):
        problems.append(
            f"attribute dtype {dtype!r} needs embeddings of {codecs.STORAGE_DTYPE[dtype]}, found {emb.dtype}"
        )
    chunk_rows = meta.get("chunk_rows")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows <= 0:
        return problems + [f"attribute chunk_rows is {chunk_rows!r}, not a positive integer"]
    expected: dict[str, tuple[int, ...]] = {
        "labels": (n,),
        "views": (n, v, int(arrays["views"].shape[-1]) if arrays["views"].ndim == 3 else -1),
        "progress/done": (math.ceil(n / chunk_rows),),
    }
    if "head/weight" in arrays:  # absent in a head-less store (until fsd store fit-head)
        head_w = arrays["head/weight"]
        expected["head/weight"] = (int(head_w.shape[0]) if head_w.ndim == 2 else -1, d)
    if "scales" in arrays:
        expected["scales"] = (n, v)
    if "head/bias" in arrays:
        expected["head/bias"] = (expected["head/weight"][0],)
    for name, shape in expected.items():
        if tuple(int(x) for x in arrays[name].shape) != shape:
            problems.append(f"array {name} has shape {tuple(arrays[name].shape)}, expected {shape}")
    for name in ("embeddings", "labels", "views", "scales"):
        if name in arrays and _unit_rows(arrays[name]) != chunk_rows:
            problems.append(
                f"attribute chunk_rows is {chunk_rows} but array {name} is chunked by {_unit_rows(arrays[name])} rows"
            )
    recorded_n = (meta.get("dataset") or {}).get("num_samples")
    if recorded_n is not None and recorded_n != n:
        problems.append(f"attributes say {recorded_n} samples, arrays hold {n}")
    recorded_v = (meta.get("views") or {}).get("count")
    if recorded_v is not None and recorded_v != v:
        problems.append(f"attributes say {recorded_v} views, arrays hold {v}")
    recorded_c = (meta.get("head") or {}).get("num_classes")
    if recorded_c is not None and "head/weight" in expected and recorded_c != expected["head/weight"][0]:
        problems.append(f"attributes say {recorded_c} classes, head/weight has {expected['head/weight'][0]} rows")
    return problems


def open_arrays(group: Any, dtype: Any, headless: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Every array a store must hold, and a problem line for each that is missing or unreadable.

    Scales exist only for int8; there is no head when the attributes say ``head: null`` (a head-less teacher's store).
    An array is missing when it is deleted or its ``zarr.json`` is gone.
    """
    names = ["embeddings", "labels", "views", "progress/done"] + ([] if headless else ["head/weight"])
    names += ["scales"] if dtype == "int8" else []
    arrays, problems = {}, []
    for name in names:
        try:
            arrays[name] = group[name]
        except Exception as exc:  # noqa: BLE001 - KeyError, or zarr's many kinds for a bad zarr.json
            problems.append(f"array {name} is missing or unreadable ({type(exc).__name__}); the store was damaged")
    try:
        if not headless and "bias" in group["head"]:
            arrays["head/bias"] = group["head/bias"]
    except Exception:  # noqa: BLE001 - head missing is already reported through head/weight
        pass
    return arrays, problems


def layout_problems(group: Any, meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the arrays, every problem found): the static part of the gate — nothing here reads a chunk."""
    arrays, problems = open_arrays(group, meta.get("dtype"), headless="head" in meta and meta["head"] is None)
    if problems:
        return arrays, problems
    return arrays, _array_problems(group, meta, arrays)


def content_problems(meta: dict[str, Any], num_classes: int, read: Any) -> list[str]:
    """Check the small arrays read whole on open.

    The head must be finite, labels in [-1, C) and — format 2 — equal to the recorded digest. ``read(name)`` returns an
    array or raises (the error is reported, not raised).
    """
    problems = []
    for name in ("head/weight", "head/bias"):
        try:
            values = read(name)
        except KeyError:
            continue
        except Exception as exc:  # noqa: BLE001 - a damaged head chunk
            problems.append(f"array {name} cannot be read ({type(exc).__name__}: {exc})")
            continue
        if values is not None and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            problems.append(f"array {name} holds {bad} non-finite values (the teacher's head is NaN/Inf)")
    try:
        labels = read("labels")
    except Exception as exc:  # noqa: BLE001
        return problems + [f"array labels cannot be read ({type(exc).__name__}: {exc})"]
    outside = (labels < -1) | (labels >= num_classes)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        problems.append(
            f"array labels: {int(outside.sum())} labels outside [-1, {num_classes}) (first at row {first}: "
            f"{int(labels[first])})"
        )
    recorded = meta.get("labels_sha256")
    if recorded is not None and labels_digest(labels) != recorded:
        changed = "a labels chunk is missing or " if (labels == -1).any() else ""
        problems.append(
            f"array labels does not match the digest recorded at extraction ({changed}labels were changed, "
            "shifted or re-ordered)"
        )
    return problems


def chunk_problems(labels: np.ndarray, views: np.ndarray, num_classes: int) -> list[str]:
    """What a read chunk must satisfy beyond decoding: labels in range, finite view parameters."""
    problems = []
    outside = (labels < -1) | (labels >= num_classes)
    if outside.any():
        problems.append(f"{int(outside.sum())} labels outside [-1, {num_classes})")
    # a row whose parameters are all NaN is a sample left out at extraction (--skip-bad-samples), by design
    kept = views[~np.isnan(views).all(axis=tuple(range(1, views.ndim)))] if views.ndim > 1 else views
    if not np.isfinite(kept).all():
        problems.append(f"{int((~np.isfinite(kept)).sum())} non-finite view parameters")
    return problems
