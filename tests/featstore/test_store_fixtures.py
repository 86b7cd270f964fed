"""Stores written by an earlier fsd (tests/data/, made by tests/data/make_format2_stores.py) open and read
exactly as the code that wrote them read them back, on the direct and the zarr read path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from featstore.store import open_store
from featstore.stream import StoreStream
from featstore.verify import verify_store

DATA = Path(__file__).parent.parent / "data"
FIXTURES = ("format2_float16.zarr", "format2_int8_headless.zarr")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "expected.npz"))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("name", FIXTURES)
def test_a_store_of_the_earlier_code_reads_the_same(name: str, expected, tmp_path: Path) -> None:
    url = tmp_path / name
    shutil.copytree(DATA / name, url)  # a copy: nothing a test does may change the committed fixture
    store = open_store(url)
    assert store.meta["format"] == 2 and store.complete and store.reader.direct is not None
    rows = [store.read_chunk(c) for c in range(store.num_chunks)]
    for i, part in enumerate(("emb", "labels", "views")):
        assert same(np.concatenate([r[i] for r in rows]), expected[f"{name}/{part}"])
    chunks = list(range(store.num_chunks))
    for direct, through_zarr in zip(store.read_chunks_raw(chunks), store.reader.read_chunks_zarr(chunks)):
        for x, y in zip(direct, through_zarr):
            assert (x is None and y is None) or same(x, y)
    if f"{name}/weight" in expected:
        assert same(store.head_weight(), expected[f"{name}/weight"])
        assert same(store.head_bias(), expected[f"{name}/bias"])
    else:
        assert not store.has_head
    streamed = np.sort(np.concatenate([b.indices for b in StoreStream(store, 4, seed=0)]))
    assert np.array_equal(streamed, np.arange(store.shape.num_samples))
    assert verify_store(str(url)).ok
