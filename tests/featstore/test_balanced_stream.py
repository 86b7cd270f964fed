"""Class-balanced batches of featstore.stream: every sample once per epoch, P classes × K samples per batch,
deterministic per (seed, epoch), rows still matching the store, bounded carry, and the argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featstore.errors import InvalidInput
from featstore.store import FeatureStore, StoreShape, create_store, open_store
from featstore.stream import StoreStream, balanced_order

N, D, C, CHUNK = 203, 4, 6, 16


def build(path: Path, labels: np.ndarray) -> FeatureStore:
    """A store whose embedding row i is (i, i, …), so a batch's rows can be checked against its indices."""
    store = create_store(
        path,
        shape=StoreShape(N, 1, D, 5, C),
        dtype="float32",
        chunk_rows=CHUNK,
        labels=labels.astype(np.int64),
        head_weight=np.zeros((C, D), np.float32),
        head_bias=None,
        meta={"teacher": {}, "head": {}, "dataset": {}, "views": {}},
    )
    emb = np.repeat(np.arange(N, dtype=np.float32)[:, None, None], D, axis=2)
    for k in range(store.num_chunks):
        a, b = store.chunk_bounds(k)
        store.write_chunk(k, emb[a:b], np.zeros((b - a, 1, 5), np.float32))
    store.mark_complete()
    return open_store(path)


@pytest.fixture(scope="module", params=["mixed", "sorted"])
def store(request, tmp_path_factory) -> FeatureStore:
    """``mixed``: classes spread over every chunk; ``sorted``: the rows grouped by class, so one chunk holds
    one or two classes — the hard case for balancing inside a group of chunks."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    if request.param == "sorted":
        labels = np.sort(labels)
    return build(tmp_path_factory.mktemp("balanced") / f"{request.param}.zarr", labels)


def epoch(stream: StoreStream, e: int) -> list:
    stream.set_epoch(e)
    return list(stream)


@pytest.mark.parametrize("batch_size,k,buffer_chunks", [(12, 4, 4), (8, 2, 1), (18, 3, 2)])
def test_every_sample_once_and_batches_balanced(store, batch_size, k, buffer_chunks) -> None:
    stream = StoreStream(store, batch_size, seed=3, buffer_chunks=buffer_chunks, samples_per_class=k)
    plain = StoreStream(store, batch_size, seed=3, buffer_chunks=buffer_chunks)
    for e in range(2):
        batches = epoch(stream, e)
        rows = np.concatenate([b.indices for b in batches])
        assert sorted(rows.tolist()) == list(range(N))  # every sample exactly once
        assert len(batches) == len(stream) == len(plain)  # as many steps as the plain stream
        assert all(len(b.indices) == batch_size for b in batches[:-1])
        labels = store.labels()
        balanced, alone = 0, 0
        for b in batches:
            assert np.array_equal(b.labels.numpy(), labels[b.indices])
            assert np.array_equal(b.embeddings[:, 0].numpy(), b.indices.astype(np.float32))  # the rows' own data
            counts = np.bincount(b.labels.numpy(), minlength=C)
            alone += int((counts == 1).sum())
            balanced += int((counts[counts > 0] == k).all() and (counts > 0).sum() == batch_size // k)
        # only the rows left at the end of the epoch, under K of a class, may lack a positive in their batch
        assert alone <= C * (k - 1)
        assert balanced >= (len(batches) - 1) // 2  # most batches hold P distinct classes × K


def test_deterministic_per_seed_and_epoch(store) -> None:
    def rows(seed: int, e: int) -> list[int]:
        stream = StoreStream(store, 12, seed=seed, samples_per_class=3)
        return np.concatenate([b.indices for b in epoch(stream, e)]).tolist()

    assert rows(1, 0) == rows(1, 0)  # a resumed epoch replays the same batches
    assert rows(1, 0) != rows(1, 1) and rows(1, 0) != rows(2, 0)


def test_balanced_order_carry_is_bounded() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 3, 1])  # one dominant class
    order, carried = balanced_order(labels, 8, 2, rng, carry_limit=10, final=False)
    assert len(order) % 8 == 0 and len(carried) <= 10 + 8
    assert sorted([*order.tolist(), *carried.tolist()]) == list(range(len(labels)))
    order, carried = balanced_order(labels, 8, 2, rng, carry_limit=10, final=True)
    assert len(carried) < 8 and sorted([*order.tolist(), *carried.tolist()]) == list(range(len(labels)))


@pytest.mark.parametrize(
    "batch_size,k,match",
    [(12, 1, "at least 2"), (10, 4, "not a multiple"), (4, 4, "between 2"), (42, 3, "between 2")],
)
def test_invalid_balanced_arguments(store, batch_size, k, match) -> None:
    with pytest.raises(InvalidInput, match=match):
        StoreStream(store, batch_size, samples_per_class=k)


def reference_order(labels, batch_size, per_class, rng, *, carry_limit, final):
    """balanced_order as its docstring states it, class by class in Python (the specification)."""
    blocks, loose = {}, []
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        whole = len(positions) // per_class * per_class
        blocks[int(label)] = list(positions[:whole].reshape(-1, per_class))
        loose.append(positions[whole:])
    batches = []
    while len(open_classes := [c for c, left in blocks.items() if left]) >= batch_size // per_class:
        weights = np.array([len(blocks[c]) for c in open_classes], dtype=np.float64)
        chosen = rng.choice(len(open_classes), batch_size // per_class, replace=False, p=weights / weights.sum())
        batches.append(np.concatenate([blocks[open_classes[i]].pop() for i in chosen]))
    rest = [block for c in sorted(blocks) for block in blocks[c]]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    empty = np.zeros(0, np.int64)
    if final or sum(map(len, rest)) + sum(map(len, loose)) > carry_limit:
        tail = np.concatenate([*rest, *(loose if final else []), empty])
        full = len(tail) // batch_size * batch_size
        batches += list(tail[:full].reshape(-1, batch_size))
        carried = np.concatenate([tail[full:], *([] if final else loose), empty])
    else:
        carried = np.concatenate([*rest, *loose, empty])
    return np.concatenate([*batches, empty]), carried


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize(
    "classes,rows,batch_size,k,limit", [(6, 200, 12, 4, 40), (40, 300, 16, 2, 64), (3, 50, 6, 3, 500)]
)
def test_balanced_order_is_its_specification(classes, rows, batch_size, k, limit, final) -> None:
    for seed in range(4):
        labels = np.random.default_rng(seed).integers(0, classes, rows)
        got = balanced_order(labels, batch_size, k, np.random.default_rng(seed), carry_limit=limit, final=final)
        want = reference_order(labels, batch_size, k, np.random.default_rng(seed), carry_limit=limit, final=final)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert got[0].dtype == got[1].dtype == np.int64


def test_balanced_order_scales_with_face_sized_class_counts() -> None:
    """A window of a face store (tens of thousands of identities, a few rows each) is arranged in well under a
    second: the work grows with rows · log(rows), not with classes × rows."""
    import time

    labels = np.random.default_rng(0).integers(0, 80_000, 160_000)
    started = time.perf_counter()
    order, carried = balanced_order(labels, 512, 2, np.random.default_rng(1), carry_limit=8192, final=False)
    assert time.perf_counter() - started < 4.0  # classes × rows work takes ~15 s here
    assert sorted([*order.tolist(), *carried.tolist()]) == list(range(len(labels)))
