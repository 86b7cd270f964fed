"""Sharded stores: the shard is the unit of work and of resume; file count stays bounded; reads and
resume behave exactly as for unsharded stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from featstore.extract import extract_teacher
from featstore.store import layout as store_mod
from featstore.store import open_store, shard_factor
from featstore.stream import StoreStream


def test_shard_factor_rule():
    assert shard_factor(1000, 10) == 1  # 100 chunks: no sharding
    assert shard_factor(4096 * 10, 10) == 1  # exactly the limit
    factor = shard_factor(10_000_000, 1000)  # 10,000 chunks → grouped
    assert factor == 10 and -(-10_000 // factor) <= store_mod.TARGET_SHARDS


def _files(path: Path) -> int:
    return sum(1 for p in (path / "embeddings").rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.fixture
def small_sharding(monkeypatch):
    # Shrink the thresholds so a 120-row store shards: at most 4 unsharded chunks, target 3 shards.
    monkeypatch.setattr(store_mod, "MAX_UNSHARDED_CHUNKS", 4)
    monkeypatch.setattr(store_mod, "TARGET_SHARDS", 3)


def test_sharded_store_matches_unsharded(small_sharding, teacher, small_digits, tmp_path):
    sharded = tmp_path / "sharded.zarr"
    plain = tmp_path / "plain.zarr"
    extract_teacher(teacher, small_digits, str(sharded), views=2, chunk_rows=10, progress=False)
    s = open_store(sharded)
    assert s.meta["sharding"] == {"inner_chunk_rows": 10, "chunks_per_shard": 4}
    assert s.chunk_rows == 40 and s.num_chunks == 3
    assert _files(sharded) == 3  # one file per shard, not per chunk
    group = zarr.open_group(str(sharded), mode="r")
    assert group["embeddings"].shards == (40, 2, s.shape.dim)
    assert group["embeddings"].chunks == (10, 2, s.shape.dim)

    store_mod.MAX_UNSHARDED_CHUNKS = 10_000  # the plain reference (monkeypatch restores it afterwards)
    extract_teacher(teacher, small_digits, str(plain), views=2, chunk_rows=10, progress=False)
    p = open_store(plain)
    assert p.meta["sharding"] is None and p.num_chunks == 12
    a, b = zarr.open_group(str(sharded), mode="r"), zarr.open_group(str(plain), mode="r")
    for name in ("embeddings", "views", "labels"):
        assert np.array_equal(a[name][...], b[name][...])
    rows = lambda st: np.sort(np.concatenate([batch.indices for batch in StoreStream(st, 16)]))  # noqa: E731
    assert np.array_equal(rows(s), np.arange(120))


def test_sharded_resume_recomputes_whole_shards(small_sharding, teacher, small_digits, tmp_path):
    url = str(tmp_path / "s.zarr")
    extract_teacher(teacher, small_digits, url, views=2, chunk_rows=10, progress=False)
    reference = np.asarray(zarr.open_group(url, mode="r")["embeddings"][...])
    group = zarr.open_group(url, mode="r+")
    group["progress/done"][1] = False
    group["embeddings"][40:80] = 0
    meta = dict(group.attrs["fsd"])
    meta["complete"] = False
    group.attrs["fsd"] = meta
    summary = extract_teacher(teacher, small_digits, url, views=2, progress=False)  # chunk_rows adopted
    assert summary.resumed and summary.chunks_computed == 1
    assert np.array_equal(np.asarray(zarr.open_group(url, mode="r")["embeddings"][...]), reference)
