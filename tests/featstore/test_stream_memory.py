"""The stream's memory is bounded by its buffer, not by the store: the peak while iterating a store 8×
larger stays the same (bound documented in StoreStream and docs/store.md)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from featstore.store import StoreShape, create_store
from featstore.stream import StoreStream


def _store(url: str, n: int):
    store = create_store(
        url,
        shape=StoreShape(n, 2, 64, 5, 3),
        dtype="float16",
        chunk_rows=32,
        labels=np.arange(n) % 3,
        head_weight=np.ones((3, 64), np.float32),
        head_bias=None,
        meta={"teacher": {}, "head": {"type": "linear"}, "dataset": {}, "views": {}},
    )
    rng = np.random.default_rng(0)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        store.write_chunk(
            chunk, rng.normal(size=(stop - start, 2, 64)).astype(np.float32), np.zeros((stop - start, 2, 5), np.float32)
        )
    store.mark_complete()
    return store


def _peak_bytes(store) -> int:
    stream = StoreStream(store, 16, buffer_chunks=2)
    tracemalloc.start()
    count = sum(len(batch.indices) for batch in stream)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == store.shape.num_samples
    return peak


def test_peak_memory_does_not_grow_with_the_store(tmp_path):
    small = _peak_bytes(_store(str(tmp_path / "small.zarr"), 512))
    large = _peak_bytes(_store(str(tmp_path / "large.zarr"), 4096))
    assert large < 1.5 * small, (small, large)
    # and it is of the order of the documented bound: (2 groups in flight + carry) × buffer of float32 rows
    bound = 3 * 2 * 32 * 2 * 64 * 4
    assert large < 20 * bound
