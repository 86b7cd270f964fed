"""Stream throughput: StoreStream over a whole epoch against a numpy memmap read of the same rows.

    python -m benchmarks.stream [--quick] [--out-dir DIR]

(the same as ``python -m benchmarks.run --sections stream``; run after ``training`` — as ``benchmarks.run``
does by default — it also compares the stream's rate with the rate store-KD training consumes rows).

Same batches in the same order for both sides, page cache warm for both, repetitions alternating.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.harness import Context, log, median


def write_memmap_copy(store, folder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The store's rows uncompressed (float16 as stored, float32 views, int64 labels), opened read-only."""
    n, v, d = store.shape.num_samples, store.shape.num_views, store.shape.dim
    folder.mkdir(exist_ok=True)
    emb = np.lib.format.open_memmap(folder / "emb.npy", mode="w+", dtype=np.float16, shape=(n, v, d))
    par = np.lib.format.open_memmap(
        folder / "views.npy", mode="w+", dtype=np.float32, shape=(n, v, store.shape.num_params)
    )
    lab = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
    for chunk in range(store.num_chunks):
        a, b = store.chunk_bounds(chunk)
        e, y, p = store.read_chunk(chunk)
        emb[a:b], lab[a:b], par[a:b] = e.astype(np.float16), y, p
    for m in (emb, par, lab):
        m.flush()
    del emb, par, lab
    return tuple(np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("emb", "views", "labels"))


def bench_stream(ctx: Context, training: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    from featstore.stream import StoreStream

    s, store = ctx.sizes, ctx.train_store
    n = store.shape.num_samples
    emb, par, lab = write_memmap_copy(store, ctx.work / "memmap")
    stream = StoreStream(store, s.batch, seed=0)
    order: list[tuple[np.ndarray, np.ndarray]] = []

    def stream_epoch(record: bool = False) -> int:
        stream.set_epoch(0)  # every repetition reads epoch 0: exactly the recorded batches
        rows = 0
        for batch in stream:
            rows += len(batch.indices)
            if record:
                order.append((batch.indices, batch.view_ids))
        return rows

    def memmap_epoch() -> int:
        rows = 0
        for ids, views in order:
            torch.from_numpy(np.ascontiguousarray(emb[ids, views], dtype=np.float32))
            torch.from_numpy(np.asarray(lab[ids], dtype=np.int64))
            np.asarray(par[ids, views])
            rows += len(ids)
        return rows

    stream_epoch(record=True)  # records the batch order, warms the page cache
    memmap_epoch()
    stream_t, memmap_t = [], []
    for rep in range(s.stream_reps):
        for name in ("stream", "memmap") if rep % 2 == 0 else ("memmap", "stream"):
            started = time.perf_counter()
            rows = stream_epoch() if name == "stream" else memmap_epoch()
            (stream_t if name == "stream" else memmap_t).append(time.perf_counter() - started)
            assert rows == n
    per_rep = [m / st for st, m in zip(stream_t, memmap_t)]
    stream_rate = n / median(stream_t)
    out = {
        "rows": n,
        "views": store.shape.num_views,
        "dim": store.shape.dim,
        "dtype": store.dtype,
        "chunk_rows": store.chunk_rows,
        "batch": s.batch,
        "stream_seconds": stream_t,
        "memmap_seconds": memmap_t,
        "stream_rows_per_s": stream_rate,
        "memmap_rows_per_s": n / median(memmap_t),
        "stream_vs_memmap": median(per_rep),
        "stream_vs_memmap_per_rep": per_rep,
    }
    if training is not None:
        consumed = training["samples_per_second"]["store-KD"]
        out["training_rows_per_s"] = consumed
        out["stream_vs_training"] = stream_rate / consumed
    log(f"stream: {stream_rate:,.0f} rows/s, memmap {out['memmap_rows_per_s']:,.0f} rows/s")
    return out


if __name__ == "__main__":
    from benchmarks.run import main

    main(sections=("stream",))
