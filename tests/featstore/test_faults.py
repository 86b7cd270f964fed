"""Fault injection: corrupt or non-finite chunks are never streamed silently; a full disk during
extraction gives a clear error and the store resumes afterwards to the same bytes."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import zarr

from featstore import store as store_mod
from featstore.errors import StoreError
from featstore.extract import extract_teacher
from featstore.store import open_store
from featstore.stream import StoreStream


@pytest.fixture
def store_url(teacher, small_digits, tmp_path) -> str:
    url = str(tmp_path / "s.zarr")
    extract_teacher(teacher, small_digits, url, views=2, chunk_rows=16, dtype="float32", progress=False)
    return url


def _chunk_file(url: str, chunk: int) -> Path:
    return Path(url) / "embeddings" / "c" / str(chunk) / "0" / "0"


def test_corrupt_chunk_file_stops_the_stream_naming_the_chunk(store_url):
    _chunk_file(store_url, 3).write_bytes(b"\x00garbage" * 7)
    with pytest.raises(StoreError, match="chunk 3 .*verify"):
        list(StoreStream(open_store(store_url), 16))


def test_truncated_chunk_file_with_skip_flag_skips_only_that_chunk(store_url):
    path = _chunk_file(store_url, 2)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(RuntimeWarning, match="chunk 2 .*skipped"):
        rows = np.concatenate([b.indices for b in StoreStream(open_store(store_url), 16, skip_bad_chunks=True)])
    assert sorted(rows.tolist()) == [i for i in range(120) if not 32 <= i < 48]


def test_non_finite_embeddings_are_refused(store_url):
    group = zarr.open_group(store_url, mode="r+")
    group["embeddings"][70, 1, 3] = np.nan
    with pytest.raises(StoreError, match="chunk 4 .*non-finite"):
        list(StoreStream(open_store(store_url), 16))


def test_disk_full_during_extraction_is_a_clear_error_and_resumable(teacher, small_digits, tmp_path, monkeypatch):
    reference = str(tmp_path / "reference.zarr")
    extract_teacher(teacher, small_digits, reference, views=2, chunk_rows=16, progress=False)

    url = str(tmp_path / "full.zarr")
    real_write = store_mod.FeatureStore.write_chunk
    calls = {"n": 0}

    def write_until_full(self, chunk, embeddings, views):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, chunk, embeddings, views)

    monkeypatch.setattr(store_mod.FeatureStore, "write_chunk", write_until_full)
    with pytest.raises(StoreError, match="No space left on device.*3/8 chunks are safely written.*re-run"):
        extract_teacher(teacher, small_digits, url, views=2, chunk_rows=16, progress=False)
    assert not open_store(url, require_complete=False).complete
    assert not Path(url + ".lock").exists()  # the lock is released on the error path

    monkeypatch.setattr(store_mod.FeatureStore, "write_chunk", real_write)
    summary = extract_teacher(teacher, small_digits, url, views=2, chunk_rows=16, progress=False)
    assert summary.resumed and summary.chunks_computed == 5
    for name in ("embeddings", "views", "labels"):
        assert np.array_equal(
            zarr.open_group(url, mode="r")[name][...], zarr.open_group(reference, mode="r")[name][...]
        )
