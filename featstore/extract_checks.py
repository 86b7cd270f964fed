"""Every check of an extraction request that runs before a store is created or a chunk is computed.

Argument values, the teacher head against the dataset's classes, and the embeddings' value range against
the store dtype: float16 keeps values between 6.1e-5 and 65504 at full precision, rounds smaller ones to
subnormals and below 6e-8 to zero, so a teacher with small-valued embeddings (some ONNX models emit
un-normalised features of order 1e-6) would otherwise fill a store with zeros that every later check
accepts as finite. The range is judged on the binding's probe (the first samples' embeddings).
"""

from __future__ import annotations

import warnings

import numpy as np

from featstore.codecs import check_dtype
from featstore.errors import InvalidInput
from featstore.teacher import TeacherBinding, check_head_classes

FLOAT16_MAX = 65504.0
FLOAT16_SMALLEST_NORMAL = 6.1035e-05
UNDERFLOW_REFUSED = 0.5  # share of non-zero values float16 turns into zeros that refuses the request
SUBNORMAL_WARNED = 0.01  # share of non-zero values below float16's normal range that warns


def validate_request(
    teacher: TeacherBinding, *, views: int, dtype: str, chunk_rows: int | None, batch_size: int
) -> None:
    """Run every argument check, before anything is created or loaded onto a device.

    Args:
        teacher: the teacher bound to the dataset (its probe gives the value range).
        views: views per sample.
        dtype: the store's embedding dtype.
        chunk_rows: rows per chunk (None: the default).
        batch_size: the teacher's batch size.

    Raises:
        InvalidInput: a value is not positive, the chunk is larger than the split, the dtype is unknown or
            cannot hold the teacher's values, or the teacher head does not match the dataset's classes.
    """
    dataset = teacher.dataset
    check_dtype(dtype)
    for name, value in (("views", views), ("batch-size", batch_size)):
        if value <= 0:
            raise InvalidInput(f"{name} must be positive, got {value}")
    if chunk_rows is not None and chunk_rows <= 0:
        raise InvalidInput(f"chunk-rows must be positive, got {chunk_rows}")
    if chunk_rows is not None and chunk_rows > len(dataset):
        raise InvalidInput(
            f"chunk-rows {chunk_rows} exceeds the split's {len(dataset)} samples (one chunk would hold them all; "
            f"use at most {len(dataset)}, or leave it out for the default)"
        )
    check_head_classes(teacher.source, dataset.num_classes, dataset.spec)
    check_value_range(teacher.probe, dtype, teacher.source.arch)


def check_value_range(embeddings: np.ndarray, dtype: str, arch: str) -> None:
    """Refuse float16 for embeddings it would overflow or mostly round to zero.

    Warns when a share of them falls below float16's normal range (they keep fewer significant bits). The
    other dtypes keep float32's range and pass unchecked.

    Args:
        embeddings: sample embeddings of the teacher (the binding's probe).
        dtype: the store's embedding dtype.
        arch: the teacher's name, for the messages.

    Raises:
        InvalidInput: float16 would overflow on them, or turn at least half of them into zeros.
    """
    values = np.abs(np.asarray(embeddings, dtype=np.float32))
    values = values[np.isfinite(values) & (values > 0)]
    if dtype != "float16" or not values.size:
        return
    largest = float(values.max())
    if largest > FLOAT16_MAX:
        raise InvalidInput(
            f"teacher {arch!r} gives embedding values up to {largest:.3g}, beyond float16's 65504: "
            "use --dtype bfloat16 or float32"
        )
    zeroed = float(np.mean(values.astype(np.float16) == 0))
    if zeroed >= UNDERFLOW_REFUSED:
        raise InvalidInput(
            f"teacher {arch!r} gives embedding values of order {float(np.median(values)):.2g}: float16 would store "
            f"{100 * zeroed:.0f}% of them as zeros; use --dtype bfloat16 or float32 (same range as float32)"
        )
    subnormal = float(np.mean(values < FLOAT16_SMALLEST_NORMAL))
    if subnormal >= SUBNORMAL_WARNED or zeroed > 0:
        warnings.warn(
            f"teacher {arch!r}: {100 * subnormal:.1f}% of its embedding values lie below float16's normal range "
            f"(6.1e-5) and lose precision there ({100 * zeroed:.1f}% become zeros); consider --dtype bfloat16 or "
            "float32",
            RuntimeWarning,
            stacklevel=3,
        )
