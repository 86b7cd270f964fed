"""Writes the format-2 fixture stores under tests/data/ with the fsd on PYTHONPATH, and what it reads back.

    PYTHONPATH=<an fsd checkout> python tests/data/make_format2_stores.py

The stores committed here were written by fsd's code as it was before its store became a package; the test
``tests/featstore/test_store_fixtures.py`` opens them with today's code and compares every array with the
``expected.npz`` read back by the code that wrote them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from featstore.store import StoreShape, create_store, open_store

HERE = Path(__file__).parent
N, V, D, P, C = 7, 2, 4, 5, 3
META = {
    "teacher": {"arch": "fixture", "checkpoint_sha256": "a" * 64, "embedding_dim": D, "input_shape": [1, 8, 8]},
    "head": {"type": "linear", "num_classes": C, "scale": None, "margin": None},
    "dataset": {"spec": "fixture", "split": "train", "num_samples": N, "fingerprint": "f" * 64, "num_classes": C},
    "views": {"count": V, "kind": "shift", "params_names": ["top", "left", "height", "width", "flip"], "seed": 0},
}


def write(name: str, dtype: str, with_head: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(len(name))
    url = HERE / name
    shutil.rmtree(url, ignore_errors=True)
    labels = rng.integers(0, C, N)
    weight = rng.standard_normal((C, D)).astype(np.float32) if with_head else None
    bias = rng.standard_normal(C).astype(np.float32) if with_head else None
    meta = META if with_head else {**META, "head": None}
    store = create_store(
        url, shape=StoreShape(N, V, D, P, C), dtype=dtype, chunk_rows=3, labels=labels,
        head_weight=weight, head_bias=bias, meta=meta,
    )  # fmt: skip
    for chunk in range(store.num_chunks):
        a, b = store.chunk_bounds(chunk)
        store.write_chunk(chunk, rng.standard_normal((b - a, V, D)).astype(np.float32), rng.random((b - a, V, P)))
    store.mark_complete()
    back = open_store(url)
    rows = [back.read_chunk(c) for c in range(back.num_chunks)]
    out = {f"{name}/{part}": np.concatenate([r[i] for r in rows]) for i, part in enumerate(("emb", "labels", "views"))}
    if with_head:
        out[f"{name}/weight"], out[f"{name}/bias"] = back.head_weight(), back.head_bias()
    return out


if __name__ == "__main__":
    expected = {**write("format2_float16.zarr", "float16", True), **write("format2_int8_headless.zarr", "int8", False)}
    np.savez(HERE / "expected.npz", **expected)
