"""Extraction throughput: ``extract_teacher`` against the bare teacher forward, and dask 2 workers against 1.

    python -m benchmarks.extraction [--quick] [--device cpu|cuda] [--no-dask] [--out-dir DIR]

(the same as ``python -m benchmarks.run --sections extraction``, which adds the ``dask`` comparison unless
``--no-dask``).

* ``extraction`` — the store written by ``extract_teacher`` against the teacher alone over the same rendered
  views at the same batch size (rendering untimed), repetitions alternating;
* ``dask`` — ``extract_teacher_distributed`` on a LocalCluster of 2 single-threaded worker processes against
  one of 1; both clusters are started, and their workers' imports warmed, before any timing.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import numpy as np

from benchmarks.harness import Clock, Context, log, median


def bare_forward_seconds(teacher, dataset, views: int, batch: int, device) -> float:
    """The teacher alone over the views extraction renders, at extraction's batch size (rendering untimed)."""
    import torch

    from featstore.views import render_views, sample_views

    clock = Clock(device)
    rows = np.arange(len(dataset))
    params = sample_views(dataset.view_policy, 0, rows, views)
    images = dataset.get_images(rows)
    rendered = [render_views(images, params[:, view], dataset.view_policy) for view in range(views)]
    elapsed = 0.0
    with torch.no_grad():
        for x in rendered:
            for start in range(0, len(rows), batch):
                xb = x[start : start + batch].to(device)
                t0 = clock()
                teacher.model.forward_features(xb).float().cpu()
                elapsed += clock() - t0
    return elapsed


def bench_extraction(ctx: Context) -> dict[str, Any]:
    from featstore.extract import extract_teacher

    s, device, dataset, teacher = ctx.sizes, ctx.device, ctx.ext_dataset, ctx.teacher
    url = str(ctx.work / "extract.zarr")
    extract_t, bare_t = [], []
    for rep in range(s.extract_reps):
        for name in ("extract", "bare") if rep % 2 == 0 else ("bare", "extract"):
            if name == "extract":
                clock = Clock(device)
                t0 = clock()
                extract_teacher(
                    teacher,
                    dataset,
                    url,
                    views=s.views,
                    dtype="float16",
                    chunk_rows=s.extract_chunk_rows,
                    batch_size=s.extract_batch,
                    device=device,
                    overwrite=True,
                    progress=False,
                )
                extract_t.append(clock() - t0)
            else:
                bare_t.append(bare_forward_seconds(teacher, dataset, s.views, s.extract_batch, device))
        log(f"  extraction rep {rep + 1}: extract {extract_t[-1]:.1f} s, bare forward {bare_t[-1]:.1f} s")
    per_rep = [b / e for b, e in zip(bare_t, extract_t)]
    ctx.ext_store_url = url  # the amortisation section trains from this store
    ctx.extract_seconds = median(extract_t)
    return {
        "samples": len(dataset),
        "views": s.views,
        "batch": s.extract_batch,
        "chunk_rows": s.extract_chunk_rows,
        "extract_seconds": extract_t,
        "bare_forward_seconds": bare_t,
        "extract_vs_bare": median(per_rep),
        "extract_vs_bare_per_rep": per_rep,
        "teacher_forwards_per_s": len(dataset) * s.views / median(extract_t),
    }


def _warm_worker() -> int:
    """Imports every worker needs before the first task, so the timings do not include them."""
    import distill.models.checkpoint  # noqa: F401
    import featstore.dask_extract  # noqa: F401

    return os.getpid()


def start_clusters(stack: contextlib.ExitStack) -> tuple[dict[int, str], dict[int, float]]:
    """A LocalCluster of 1 and one of 2 single-threaded worker processes: scheduler addresses, start-up times."""

    from distributed import Client, LocalCluster

    from featstore.dask_cluster import LOCAL_CLUSTER_OPTIONS

    addresses: dict[int, str] = {}
    startup: dict[int, float] = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster = stack.enter_context(LocalCluster(n_workers=workers, **LOCAL_CLUSTER_OPTIONS))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        client.run(_warm_worker)
        startup[workers] = time.perf_counter() - t0
        addresses[workers] = cluster.scheduler_address
    return addresses, startup


def bench_dask(ctx: Context) -> dict[str, Any]:
    from distill.models.checkpoint import load_teacher_source
    from featstore.dask_extract import extract_teacher_distributed

    s = ctx.sizes
    times: dict[int, list[float]] = {1: [], 2: []}
    with contextlib.ExitStack() as stack:
        addresses, startup = start_clusters(stack)
        for rep in range(s.dask_reps):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                t0 = time.perf_counter()
                extract_teacher_distributed(
                    (load_teacher_source, str(ctx.teacher_path)),
                    ctx.ext_dataset.spec,
                    "train",
                    str(ctx.work / f"dask{workers}.zarr"),
                    views=1,
                    dtype="float16",
                    chunk_rows=s.extract_chunk_rows,
                    batch_size=s.extract_batch,
                    device="cpu",
                    overwrite=True,
                    progress=False,
                    scheduler=addresses[workers],
                    chunks_per_task=1,
                )
                times[workers].append(time.perf_counter() - t0)
            log(f"  dask rep {rep + 1}: 1 worker {times[1][-1]:.1f} s, 2 workers {times[2][-1]:.1f} s")
    per_rep = [a / b for a, b in zip(times[1], times[2])]
    return {
        "samples": len(ctx.ext_dataset),
        "views": 1,
        "chunk_rows": s.extract_chunk_rows,
        "chunks_per_task": 1,
        "threads_per_worker": 1,
        "seconds_1_worker": times[1],
        "seconds_2_workers": times[2],
        "cluster_startup_seconds": startup,
        "speedup_2_vs_1": median(per_rep),
        "speedup_per_rep": per_rep,
    }


if __name__ == "__main__":
    from benchmarks.run import main

    main(sections=("extraction",))
