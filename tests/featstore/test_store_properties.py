"""Property tests (hypothesis) for the store: any N, V, D, chunk size and dtype round-trips within the
dtype's error, and an interruption at any chunk resumes to identical arrays."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from featstore import codecs
from featstore.store import StoreShape, create_store, open_store

SETTINGS = settings(max_examples=20, deadline=None)
TOLERANCE = {"float32": 0.0, "float16": 1e-3, "bfloat16": 8e-3, "int8": 0.5 / 127 + 1e-6}


def _write(url: str, rows: np.ndarray, chunk_rows: int, dtype: str, chunks: list[int] | None = None):
    n, v, d = rows.shape
    store = create_store(
        url,
        shape=StoreShape(n, v, d, 5, 3),
        dtype=dtype,
        chunk_rows=chunk_rows,
        labels=np.arange(n) % 3,
        head_weight=np.ones((3, d), np.float32),
        head_bias=None,
        meta={"teacher": {}, "head": {"type": "linear"}, "dataset": {}, "views": {}},
    )
    for chunk in range(store.num_chunks) if chunks is None else chunks:
        start, stop = store.chunk_bounds(chunk)
        store.write_chunk(chunk, rows[start:stop], np.full((stop - start, v, 5), chunk, np.float32))
    return store


@SETTINGS
@given(
    st.integers(1, 60),
    st.integers(1, 3),
    st.integers(1, 9),
    st.integers(1, 25),
    st.sampled_from(codecs.DTYPES),
    st.integers(0, 2**31 - 1),
)
def test_round_trip_any_geometry_and_dtype(n, v, d, chunk_rows, dtype, seed):
    rows = np.random.default_rng(seed).normal(size=(n, v, d)).astype(np.float32)
    work = Path(tempfile.mkdtemp())
    try:
        store = _write(str(work / "s.zarr"), rows, chunk_rows, dtype)
        store.mark_complete()
        back = open_store(str(work / "s.zarr"))
        got = np.concatenate([back.read_chunk(c)[0] for c in range(back.num_chunks)])
        scale = np.abs(rows).max(axis=-1, keepdims=True)  # relative to each row's magnitude
        assert np.all(np.abs(got - rows) <= TOLERANCE[dtype] * np.maximum(scale, 1e-30) + 1e-7)
        assert np.array_equal(back.labels(), np.arange(n) % 3)
    finally:
        shutil.rmtree(work)


@SETTINGS
@given(st.integers(2, 50), st.integers(1, 10), st.sampled_from(codecs.DTYPES), st.data())
def test_interruption_at_any_chunk_resumes_identically(n, chunk_rows, dtype, data):
    rows = np.random.default_rng(n).normal(size=(n, 2, 4)).astype(np.float32)
    work = Path(tempfile.mkdtemp())
    try:
        full = _write(str(work / "full.zarr"), rows, chunk_rows, dtype)
        cut = data.draw(st.integers(0, full.num_chunks - 1))
        order = data.draw(st.permutations(range(full.num_chunks)))
        partial = _write(str(work / "part.zarr"), rows, chunk_rows, dtype, chunks=list(order[:cut]))
        assert sorted(partial.missing_chunks()) == sorted(order[cut:])
        for chunk in partial.missing_chunks():  # the resume: only what is missing, in any order
            start, stop = partial.chunk_bounds(chunk)
            partial.write_chunk(chunk, rows[start:stop], np.full((stop - start, 2, 5), chunk, np.float32))
        a, b = zarr.open_group(str(work / "full.zarr")), zarr.open_group(str(work / "part.zarr"))
        for name in ("embeddings", "views", "labels", "progress/done") + (("scales",) if dtype == "int8" else ()):
            assert np.array_equal(a[name][...], b[name][...]), name
    finally:
        shutil.rmtree(work)
