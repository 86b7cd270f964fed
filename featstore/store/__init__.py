"""The feature store: a Zarr v3 group holding a teacher's embeddings per (sample, view), format 2.

Layout and attributes are those of docs/store.md. The package is cut by concern:

- :mod:`~featstore.store.location` — where a store lives (local directory or fsspec URL);
- :mod:`~featstore.store.layout` — what a store is: formats, geometry, chunking and compression rules;
- :mod:`~featstore.store.create` and :mod:`~featstore.store.opening` — the creation policy and what is
  checked on open;
- :mod:`~featstore.store.reading` and :mod:`~featstore.store.chunk_files` — how chunks are read (zarr's
  public API, or the chunk files themselves for fsd's plain local layout);
- :mod:`~featstore.store.head` — installing a classifier in one atomic step;
- :mod:`~featstore.store.sizes` — sizes, ``store info`` and resume identity;
- :mod:`~featstore.store.facade` — :class:`FeatureStore`, the one object that touches the arrays.
"""

from featstore.store.create import create_store
from featstore.store.facade import FeatureStore
from featstore.store.head import write_head_arrays
from featstore.store.layout import (
    DECODE_THREADS,
    FORMAT_VERSION,
    MAX_UNSHARDED_CHUNKS,
    MIN_CHUNKS_FOR_SHUFFLE,
    READABLE_FORMATS,
    TARGET_CHUNK_BYTES,
    TARGET_SHARDS,
    WRITTEN_PER_CHUNK,
    ChunkGeometry,
    StoreShape,
    default_chunk_rows,
    fsd_version,
    left_out,
    shard_factor,
)
from featstore.store.location import local_path, store_exists
from featstore.store.opening import open_store, remove_store
from featstore.store.reading import RawChunk
from featstore.store.sizes import identity_of, instance_of

__all__ = [
    "DECODE_THREADS",
    "FORMAT_VERSION",
    "MAX_UNSHARDED_CHUNKS",
    "MIN_CHUNKS_FOR_SHUFFLE",
    "READABLE_FORMATS",
    "TARGET_CHUNK_BYTES",
    "TARGET_SHARDS",
    "WRITTEN_PER_CHUNK",
    "ChunkGeometry",
    "FeatureStore",
    "RawChunk",
    "StoreShape",
    "create_store",
    "default_chunk_rows",
    "fsd_version",
    "identity_of",
    "instance_of",
    "left_out",
    "local_path",
    "open_store",
    "remove_store",
    "shard_factor",
    "store_exists",
    "write_head_arrays",
]
