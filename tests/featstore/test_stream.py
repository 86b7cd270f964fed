"""Tests for featstore.stream: exact epoch coverage (also rank-sharded), batch sizes, per-epoch order,
row contents matching the store, view sampling modes, prefetch equivalence, argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featstore.errors import InvalidInput
from featstore.store import FeatureStore, StoreShape, create_store, open_store
from featstore.stream import StoreStream, StreamBatch

N, D, C = 103, 6, 7
CHUNK = 8  # 13 chunks, the last one 7 rows


def build(path: Path, num_views: int, dtype: str = "float32") -> FeatureStore:
    """A store whose contents identify their own position: embedding[i, v] = 1000 i + 10 v + d."""
    emb = (
        np.arange(N)[:, None, None] * 1000.0 + np.arange(num_views)[None, :, None] * 10.0 + np.arange(D)[None, None, :]
    ).astype(np.float32)
    views = np.zeros((N, num_views, 5), dtype=np.float32)
    views[..., 0] = np.arange(N)[:, None] % 3
    views[..., 1] = np.arange(num_views)[None, :]
    views[..., 2:4] = 8
    views[..., 4] = (np.arange(N)[:, None] + np.arange(num_views)[None, :]) % 2
    labels = (np.arange(N) * 7 % C).astype(np.int64)
    store = create_store(
        path,
        shape=StoreShape(N, num_views, D, 5, C),
        dtype=dtype,
        chunk_rows=CHUNK,
        labels=labels,
        head_weight=np.zeros((C, D), np.float32),
        head_bias=None,
        meta={"teacher": {}, "head": {}, "dataset": {}, "views": {}},
    )
    for k in range(store.num_chunks):
        a, b = store.chunk_bounds(k)
        store.write_chunk(k, emb[a:b], views[a:b])
    store.mark_complete()
    return open_store(path)


@pytest.fixture(scope="module")
def store3(tmp_path_factory) -> FeatureStore:
    return build(tmp_path_factory.mktemp("stream") / "v3.zarr", 3)


@pytest.fixture(scope="module")
def store2(tmp_path_factory) -> FeatureStore:
    return build(tmp_path_factory.mktemp("stream") / "v2.zarr", 2)


def epoch(stream: StoreStream, e: int) -> list[StreamBatch]:
    stream.set_epoch(e)
    return list(stream)


def cat(batches: list[StreamBatch], field: str) -> np.ndarray:
    parts = [getattr(b, field) for b in batches]
    return np.concatenate([p.numpy() if isinstance(p, torch.Tensor) else p for p in parts]) if parts else np.array([])


@pytest.mark.parametrize("batch_size,buffer_chunks", [(10, 4), (1, 1), (7, 2), (200, 3), (16, 100)])
def test_every_sample_once_per_epoch(store3, batch_size, buffer_chunks) -> None:
    stream = StoreStream(store3, batch_size, seed=1, buffer_chunks=buffer_chunks)
    for e in (0, 1):
        idx = cat(epoch(stream, e), "indices")
        assert idx.dtype == np.int64
        assert len(idx) == N
        np.testing.assert_array_equal(np.sort(idx), np.arange(N))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_disjoint_and_cover(store3, world_size) -> None:
    for e in (0, 4):
        per_rank = []
        for rank in range(world_size):
            stream = StoreStream(store3, 9, seed=2, rank=rank, world_size=world_size)
            batches = epoch(stream, e)
            idx = cat(batches, "indices")
            assert len(idx) == stream.num_samples() and len(batches) == len(stream)
            assert len(np.unique(idx)) == len(idx)
            per_rank.append(set(idx.tolist()))
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not per_rank[a] & per_rank[b]
        assert set().union(*per_rank) == set(range(N))


def test_more_ranks_than_chunks(tmp_path) -> None:
    small = build(tmp_path / "s", 1)
    world = small.num_chunks + 2
    total = []
    for rank in range(world):
        stream = StoreStream(small, 4, rank=rank, world_size=world)
        total += cat(list(stream), "indices").tolist()
    assert sorted(total) == list(range(N))


@pytest.mark.parametrize("batch_size", [10, 16, 103, 150])
def test_batch_sizes(store3, batch_size) -> None:
    keep = StoreStream(store3, batch_size, seed=0)
    sizes = [len(b.indices) for b in epoch(keep, 0)]
    full, rest = divmod(N, batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest else [])
    assert len(keep) == len(sizes)

    drop = StoreStream(store3, batch_size, seed=0, drop_last=True)
    batches = epoch(drop, 0)
    assert [len(b.indices) for b in batches] == [batch_size] * full
    assert len(drop) == full
    # drop_last only drops the tail: the kept batches are those of the keep-all stream.
    for a, b in zip(batches, epoch(keep, 0)):
        np.testing.assert_array_equal(a.indices, b.indices)


def test_batch_fields_shapes_and_dtypes(store3) -> None:
    batch = next(iter(StoreStream(store3, 12)))
    assert batch.indices.shape == (12,) and batch.view_ids.shape == (12,)
    assert batch.view_ids.dtype == np.int64
    assert isinstance(batch.embeddings, torch.Tensor) and batch.embeddings.dtype == torch.float32
    assert batch.embeddings.shape == (12, D)
    assert isinstance(batch.labels, torch.Tensor) and batch.labels.dtype == torch.int64
    assert batch.view_params.shape == (12, 5) and batch.view_params.dtype == np.float32


def test_orders_per_epoch_and_seed(store3) -> None:
    a = StoreStream(store3, 10, seed=3)
    b = StoreStream(store3, 10, seed=3)
    e0 = cat(epoch(a, 0), "indices")
    e1 = cat(epoch(a, 1), "indices")
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(cat(epoch(b, 0), "indices"), e0)
    np.testing.assert_array_equal(cat(epoch(b, 1), "indices"), e1)
    np.testing.assert_array_equal(cat(epoch(a, 0), "indices"), e0)  # re-iterating an epoch replays it
    np.testing.assert_array_equal(cat(epoch(a, 0), "view_ids"), cat(epoch(b, 0), "view_ids"))
    other_seed = cat(epoch(StoreStream(store3, 10, seed=4), 0), "indices")
    assert not np.array_equal(other_seed, e0)
    # Shuffled beyond chunk order: consecutive rows are not mostly consecutive sample ids.
    assert np.mean(np.diff(e0) == 1) < 0.5


@pytest.mark.parametrize("sampling", ["random", "cycle"])
def test_rows_match_store(store3, sampling) -> None:
    emb, labels, views = store3.read_rows(0, N)
    stream = StoreStream(store3, 11, seed=5, view_sampling=sampling)
    for e in (0, 1):
        for batch in epoch(stream, e):
            i, v = batch.indices, batch.view_ids
            assert np.all((v >= 0) & (v < 3))
            np.testing.assert_array_equal(batch.embeddings.numpy(), emb[i, v])
            np.testing.assert_array_equal(batch.labels.numpy(), labels[i])
            np.testing.assert_array_equal(batch.view_params, views[i, v])
            # The synthetic contents name their own (sample, view).
            np.testing.assert_array_equal(batch.embeddings[:, 0].numpy(), i * 1000.0 + v * 10.0)


def test_rows_match_store_int8(tmp_path) -> None:
    store = build(tmp_path / "i8", 2, dtype="int8")
    emb = store.read_rows(0, N)[0]
    for batch in StoreStream(store, 13, seed=0):
        np.testing.assert_array_equal(batch.embeddings.numpy(), emb[batch.indices, batch.view_ids])


def test_cycle_view_sampling(store3) -> None:
    stream = StoreStream(store3, 10, view_sampling="cycle")
    for e in range(4):
        batches = epoch(stream, e)
        idx, vid = cat(batches, "indices"), cat(batches, "view_ids")
        np.testing.assert_array_equal(vid, (e + idx) % 3)


def test_random_view_sampling_uses_all_views(store2, store3) -> None:
    for store, v in ((store2, 2), (store3, 3)):
        stream = StoreStream(store, 10, seed=0, view_sampling="random")
        vids = [cat(epoch(stream, e), "view_ids") for e in (0, 1)]
        for vid in vids:
            assert set(vid.tolist()) == set(range(v))
            counts = np.bincount(vid, minlength=v)
            assert counts.min() > N / v / 2  # roughly balanced
        assert not np.array_equal(vids[0], vids[1])


def test_prefetch_gives_identical_batches(store3) -> None:
    for sampling in ("random", "cycle"):
        on = StoreStream(store3, 9, seed=7, view_sampling=sampling, buffer_chunks=2, prefetch=True)
        off = StoreStream(store3, 9, seed=7, view_sampling=sampling, buffer_chunks=2, prefetch=False)
        for e in (0, 3):
            a, b = epoch(on, e), epoch(off, e)
            assert len(a) == len(b)
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x.indices, y.indices)
                np.testing.assert_array_equal(x.view_ids, y.view_ids)
                assert torch.equal(x.embeddings, y.embeddings) and torch.equal(x.labels, y.labels)
                np.testing.assert_array_equal(x.view_params, y.view_params)


@pytest.mark.parametrize(
    ("kwargs", "refusal"),
    [
        ({"batch_size": 0}, "batch-size must be positive, got 0"),
        ({"batch_size": -2}, "batch-size must be positive, got -2"),
        ({"view_sampling": "sequential"}, "unknown view sampling 'sequential'"),
        ({"rank": 2, "world_size": 2}, "rank 2 outside world size 2"),
        ({"rank": -1, "world_size": 2}, "rank -1 outside world size 2"),
        ({"rank": 0, "world_size": 0}, "rank 0 outside world size 0"),
    ],
)
def test_invalid_arguments(store3, kwargs, refusal) -> None:
    kwargs = {"batch_size": 8, **kwargs}
    with pytest.raises(InvalidInput, match=refusal):
        StoreStream(store3, **kwargs)
