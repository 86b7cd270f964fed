"""The chunk engine: compute and write store chunks, the unit of extraction's work and of its resume.

A chunk's view parameters are drawn from (seed, sample, view), the teacher embeds every view of every row
in fixed batches *inside* the chunk, the chunk is written, then flagged done. Nothing about a chunk
depends on which other chunks were computed before, so a resumed run computes only the missing chunks
and gives arrays bit-identical to an uninterrupted one. The single-process loop and dask workers both
call :func:`extract_chunks`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from featstore.datasets.lazy import chunk_digest
from featstore.errors import StoreError
from featstore.loader import chunk_batches
from featstore.memory import release_free_memory
from featstore.store import FeatureStore
from featstore.teacher import TeacherBinding
from featstore.views import PARAM_NAMES


@dataclass
class _ChunkBuffer:
    """One chunk being filled batch by batch.

    Rows never rendered (bad samples left out) keep zero embeddings and NaN parameters, which readers take
    as 'left out'.
    """

    chunk: int
    start: int
    embeddings: np.ndarray  # (rows, V, D) float32
    params: np.ndarray  # (rows, V, P) float32
    digests: list[bytes | None]

    @classmethod
    def empty(cls, chunk: int, start: int, stop: int, views: int, dim: int) -> _ChunkBuffer:
        """Return a buffer for rows ``[start, stop)`` of ``chunk`` in which no row is rendered yet."""
        params = np.full((stop - start, views, len(PARAM_NAMES)), np.nan, dtype=np.float32)
        return cls(chunk, start, np.zeros((stop - start, views, dim), np.float32), params, [None] * (stop - start))

    def content_digest(self) -> bytes | None:
        """Return the digest of the bytes the chunk's images are read from; None for in-memory data."""
        if all(d is None for d in self.digests):
            return None  # in-memory data: the fingerprint already covers every pixel
        return chunk_digest([d if d is not None else bytes(32) for d in self.digests])


@torch.no_grad()
def extract_chunks(
    store: FeatureStore,
    chunks: list[int],
    teacher: TeacherBinding,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    on_written: Callable[[int], None] | None = None,
) -> None:
    """Compute and write ``chunks`` (every view of their rows) with a bound teacher, each flagged done once written.

    Images come from :func:`featstore.loader.chunk_batches` in fixed ``batch_size`` slices of each chunk,
    so results never depend on what else ran (a resumed chunk equals an uninterrupted one).

    Args:
        store: the store being written (open for writing).
        chunks: the chunk indices to compute, in order.
        teacher: the teacher bound to the store's dataset.
        seed: the store's seed, from which every view's parameters are drawn.
        batch_size: the teacher's batch size.
        device: where the teacher runs.
        on_written: called with each chunk index once it is written and flagged done.

    Raises:
        StoreError: writing a chunk fails (disk full, I/O error); the chunks written before it stay done.
    """
    bounds = [(c, *store.chunk_bounds(c)) for c in chunks]
    views, dim = store.shape.num_views, store.shape.dim
    buffers = {c: _ChunkBuffer.empty(c, start, stop, views, dim) for c, start, stop in bounds[:1]}
    order = iter(bounds)
    current = next(order, None)
    batches = chunk_batches(teacher.dataset, bounds, num_views=views, seed=seed, batch_size=batch_size, device=device)
    for chunk, _, rendered in itertools.chain(batches, [(None, None, None)]):
        while current is not None and chunk != current[0]:  # the current chunk is complete: write it
            done = buffers.pop(current[0])
            _write(store, done)
            release_free_memory()  # freed chunk buffers go back to the OS, so resident memory does not creep
            if on_written is not None:
                on_written(done.chunk)
            current = next(order, None)
            if current is not None:
                buffers[current[0]] = _ChunkBuffer.empty(*current, views, dim)
        if rendered is None or not len(rendered.rows):
            continue
        buffer = buffers[chunk]
        local = rendered.rows - buffer.start
        for view in range(views):
            x = rendered.x[:, view].to(device, non_blocking=True)
            buffer.embeddings[local, view] = teacher.embed(x).float().cpu().numpy()
        buffer.params[local] = rendered.params
        for row, digest in zip(local.tolist(), rendered.digests):
            buffer.digests[row] = digest


def _write(store: FeatureStore, buffer: _ChunkBuffer) -> None:
    try:
        digest = buffer.content_digest()
        extra = {} if digest is None else {"content_digest": digest}
        store.write_chunk(buffer.chunk, buffer.embeddings, buffer.params, **extra)
    except OSError as exc:  # disk full, quota, I/O error: finished chunks stay, the run resumes
        done = int(store.done_chunks().sum())
        raise StoreError(
            f"writing chunk {buffer.chunk} of {store.url} failed ({exc.strerror or exc}); {done}/"
            f"{store.num_chunks} chunks are safely written — fix the cause and re-run the "
            "same command to resume"
        ) from None
