"""What a feature store is: format versions, geometry, chunking and compression rules (docs/store.md).

Chunks run along the sample axis only, so a chunk holds every view of its rows and one read serves any
view choice. Large stores group chunks into shards so an array never has more than about
``TARGET_SHARDS`` files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from featstore import codecs

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
"""Format 2 = format 1 + a crc32c on every chunk + ``labels_sha256``; both are read."""
TARGET_CHUNK_BYTES = 4 * 1024 * 1024  # uncompressed embedding bytes per chunk: "a few MB"
MIN_CHUNKS_FOR_SHUFFLE = 16  # small stores still get enough chunks for chunk-shuffled streaming
MAX_UNSHARDED_CHUNKS = 4096  # beyond this many chunks per array, chunks are grouped into shards
TARGET_SHARDS = 1024  # ... so that each array has at most about this many files
WRITTEN_PER_CHUNK = ("embeddings", "views", "scales")
"""Arrays that every written chunk has a file in (labels are written at creation)."""


@dataclass(frozen=True)
class StoreShape:
    """The sizes of a store: N samples, V views of D dimensions, P view parameters, C classes."""

    num_samples: int
    num_views: int
    dim: int
    num_params: int
    num_classes: int


class ChunkGeometry:
    """Rows [0, N) cut into units of ``chunk_rows``: shared by stores and by store-shaped view sources."""

    shape: StoreShape
    chunk_rows: int

    @property
    def num_chunks(self) -> int:
        """The number of units of work, the last one possibly shorter."""
        return math.ceil(self.shape.num_samples / self.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Return the rows ``(start, stop)`` of unit ``chunk``."""
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape.num_samples)


def shard_factor(num_samples: int, chunk_rows: int) -> int:
    """Say how many chunks one shard holds.

    1 (no sharding) up to ``MAX_UNSHARDED_CHUNKS`` chunks per array, else enough that an array has at most
    ``TARGET_SHARDS`` shard files, so the file count stays bounded for any N.

    Args:
        num_samples: N, the store's rows.
        chunk_rows: rows per zarr chunk.

    Returns:
        Chunks per shard (1: unsharded).
    """
    chunks = math.ceil(num_samples / chunk_rows)
    return 1 if chunks <= MAX_UNSHARDED_CHUNKS else math.ceil(chunks / TARGET_SHARDS)


def default_chunk_rows(num_samples: int, num_views: int, dim: int, dtype: str) -> int:
    """Rows per chunk: about ``TARGET_CHUNK_BYTES`` of embeddings, but at least ``MIN_CHUNKS_FOR_SHUFFLE`` chunks.

    The stream shuffles at chunk granularity, so a store of one giant chunk would stream in a fixed order
    inside its shuffle buffer.

    Args:
        num_samples: N, the store's rows.
        num_views: V, views per row.
        dim: D, the embedding width.
        dtype: the storage dtype (featstore.codecs), which sets a row's bytes.

    Returns:
        Rows per chunk, at least 1.
    """
    row_bytes = num_views * dim * np.dtype(codecs.STORAGE_DTYPE[dtype]).itemsize
    by_size = max(1, TARGET_CHUNK_BYTES // row_bytes)
    by_count = max(1, num_samples // MIN_CHUNKS_FOR_SHUFFLE)
    return int(max(1, min(by_size, by_count)))


def compressor(dtype: str) -> tuple[BloscCodec, Crc32cCodec]:
    """Blosc, then a crc32c of the compressed bytes: a flipped bit that would still decompress is caught."""
    # Bit-shuffle groups the sign/exponent bits of 16-bit floats, which is what makes them compress.
    shuffle = "bitshuffle" if dtype in ("float16", "bfloat16") else "shuffle"
    return BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), Crc32cCodec()


def fsd_version() -> str:
    """The installed fsd version, recorded in the stores and checkpoints it writes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fsd")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def left_out(views: np.ndarray) -> np.ndarray:
    """Which rows of ``views`` (n, V, P) are samples left out at extraction (``--skip-bad-samples``).

    Such a row keeps zero embeddings and all-NaN view parameters, so nothing that learns or measures from
    the embeddings may use it.

    Args:
        views: view parameters, (n, V, P) or any shape with rows first.

    Returns:
        A (n,) bool mask, True for the rows left out.
    """
    return np.isnan(views).all(axis=tuple(range(1, views.ndim))) if views.ndim > 1 else np.isnan(views)


def has_head(group: zarr.Group) -> bool:
    """Whether the group holds a classifier (``head/weight``)."""
    return "head" in group and "weight" in group["head"]


def num_classes(arrays: dict[str, Any], meta: dict[str, Any], group: zarr.Group) -> int:
    """The head's rows; for a head-less store the dataset's recorded class count, else the largest label + 1."""
    if "head/weight" in arrays:
        return int(arrays["head/weight"].shape[0])
    recorded = (meta.get("dataset") or {}).get("num_classes")
    if recorded:
        return int(recorded)
    labels = np.asarray(group["labels"][:])
    return int(labels.max()) + 1 if labels.size else 0


DECODE_THREADS = max(
    1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)
"""Threads decompressing the chunk files of one read (Blosc releases the GIL; zarr turns Blosc's own off)."""
