"""The image pipeline: views rendered by ``torch.utils.data.DataLoader`` workers, in the order asked for.

Why this shape: the order of samples is never the loader's to choose. Extraction walks the store's missing
chunks in fixed batches (so a resumed chunk equals an uninterrupted one), training follows the store
stream's chunk-shuffled, rank-sharded order (so a batch's images match its stored embeddings). So the
caller hands in an iterable of *requests* — per sample ``(row, seed, view ids, parameters or None)`` — one
list per batch, the DataLoader's ``batch_sampler``; workers decode and render (:meth:`Dataset.load_views`)
and the batches come back in that order, prefetched (``prefetch_factor`` batches per worker) and, on CUDA,
in pinned memory. Rendering is deterministic, so which worker renders a sample never changes a pixel.

In-memory datasets skip the workers: their views are slices of a tensor, rendered in-process in one
batched call per view index (:meth:`Dataset.render`), which a worker process could only slow down.

A sample that cannot be read is an error naming it (:class:`featstore.datasets.lazy.BadSample`), raised
in the main process as one line; with ``LoadOptions(skip_bad_samples=True)`` it is left out of its batch
and reported in :attr:`Rendered.bad`.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from featstore.datasets.base import Dataset, SampleViews
from featstore.datasets.lazy import BadSample, chunk_digest
from featstore.errors import FsdError, StoreError, suggest
from featstore.views import sample_view_params

Request = tuple[int, int, tuple[int, ...], np.ndarray | None]  # (row, seed, view ids, (V, P) params or None)


@dataclass
class Rendered:
    """One batch of rendered samples, in request order (bad samples left out when skipped).

    Attributes:
        rows: (n,) int64 rows of the samples rendered.
        x: (n, V, C, H, W) float32 views.
        params: (n, V, P) float32 view parameters.
        digests: per sample, the sha256 of the bytes it is read from (None for in-memory data).
        bad: ``(row, message)`` of each sample left out.
    """

    rows: np.ndarray  # (n,) int64
    x: torch.Tensor  # (n, V, C, H, W) float32
    params: np.ndarray  # (n, V, P) float32
    digests: list[bytes | None]
    bad: list[tuple[int, str]]  # (row, message) of samples left out


def default_workers() -> int:
    """Choose the loader worker processes when ``--loader-workers`` is not given.

    Returns:
        One per usable CPU but one (the main process feeds the model), at most 8; at least 1.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def workers_for(dataset: Dataset) -> int:
    """Say how many worker processes ``dataset`` is read with.

    Args:
        dataset: the dataset; its ``options.workers`` is None for the default.

    Returns:
        The worker count; 0 for in-memory sets, which use no workers.
    """
    if not dataset.lazy:
        return 0
    workers = dataset.options.workers
    return default_workers() if workers is None else int(workers)


class _Samples(torch.utils.data.Dataset):
    """What runs in a worker: one request → (row, SampleViews) or (row, error message)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request: Request) -> tuple[int, SampleViews | str]:
        row, seed, view_ids, params = request
        try:
            return row, self.dataset.load_views(row, params, seed, view_ids)
        except FsdError as err:  # returned, not raised: a worker's exception would arrive with a traceback
            return row, str(err)


def _collate(items: list[tuple[int, SampleViews | str]]) -> Rendered:
    good = [(row, s) for row, s in items if isinstance(s, SampleViews)]
    bad = [(row, s) for row, s in items if isinstance(s, str)]
    if good:
        # default_collate stacks straight into shared memory inside a worker: no second copy on the way out
        x = torch.utils.data.default_collate([s.x for _, s in good])
        params = np.stack([s.params for _, s in good])
    else:
        x, params = torch.zeros((0, 0)), np.zeros((0, 0, 0), np.float32)
    return Rendered(np.array([r for r, _ in good], np.int64), x, params, [s.digest for _, s in good], bad)


def _in_process(dataset: Dataset, requests: list[Request]) -> Rendered:
    """The in-memory path: every view of the batch rendered in one call per view index."""
    rows = np.array([r for r, *_ in requests], dtype=np.int64)
    params = np.stack(
        [
            p if p is not None else np.stack([sample_view_params(dataset.view_policy, seed, row, v) for v in ids])
            for row, seed, ids, p in requests
        ]
    ).astype(np.float32)
    x = torch.stack([dataset.render(rows, params[:, v]) for v in range(params.shape[1])], dim=1)
    return Rendered(rows, x, params, [None] * len(rows), [])


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism


def render_batches(
    dataset: Dataset, requests: Iterable[list[Request]], device: torch.device | None = None
) -> Iterator[Rendered]:
    """Render each list of requests, in order (see the module docstring).

    Args:
        dataset: the dataset to render.
        requests: one list per batch of ``(row, seed, view ids, (V, P) parameters or None)``; parameters
            None are drawn from (seed, row, view).
        device: the device the batches go to; CUDA puts them in pinned memory.

    Yields:
        One :class:`Rendered` per list, in order.

    Raises:
        BadSample: a sample cannot be read and the dataset does not skip bad samples.
    """
    skip = dataset.options.skip_bad_samples
    workers = workers_for(dataset)
    if not dataset.lazy:
        source: Iterable[Rendered] = (_in_process(dataset, batch) for batch in requests)
    else:
        source = torch.utils.data.DataLoader(
            _Samples(dataset),
            batch_sampler=_Once(requests),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device is not None and device.type == "cuda",
            prefetch_factor=4 if workers else None,
            worker_init_fn=_init_worker if workers else None,
        )
    for rendered in source:
        if rendered.bad and not skip:
            advice = "or leave such samples out with --skip-bad-samples"
            raise suggest(BadSample(rendered.bad[0][1]), "--skip-bad-samples", advice)
        for row, message in rendered.bad:
            warnings.warn(f"{message}; left out (--skip-bad-samples)", RuntimeWarning, stacklevel=2)
        yield rendered


class _Once:
    """A batch sampler over a one-shot iterable of request lists (the DataLoader calls ``iter`` once)."""

    def __init__(self, requests: Iterable[list[Request]]) -> None:
        self.requests = requests

    def __iter__(self) -> Iterator[list[Request]]:
        return iter(self.requests)


# -- training -------------------------------------------------------------------------------------------


class DigestCheck:
    """Compare the bytes a training epoch reads with the content digests extraction stored, chunk by chunk.

    A file changed since extraction would pair the stored embedding with other pixels.

    Args:
        store: the store the stream reads (anything without ``content_digests`` checks nothing).
        dataset: the dataset rendered; in-memory datasets are not checked.
    """

    def __init__(self, store: object, dataset: Dataset) -> None:
        digests = getattr(store, "content_digests", lambda: None)() if dataset.lazy else None
        self.store, self.expected = store, digests
        self.seen: dict[int, dict[int, bytes]] = {}

    def add(self, rows: np.ndarray, digests: list[bytes | None]) -> None:
        """Record the digests of rendered ``rows``; each chunk is compared once all its rows are seen.

        Raises:
            StoreError: a complete chunk's digest differs from the stored one.
        """
        if self.expected is None:
            return
        chunk_rows = self.store.chunk_rows
        for row, digest in zip(rows.tolist(), digests):
            chunk = row // chunk_rows
            part = self.seen.setdefault(chunk, {})
            part[row] = digest
            start, stop = self.store.chunk_bounds(chunk)
            if len(part) == stop - start:
                self._compare(chunk, [part[r] for r in range(start, stop)])
                del self.seen[chunk]

    def _compare(self, chunk: int, digests: list[bytes]) -> None:
        want = bytes(self.expected[chunk])
        if want != bytes(32) and chunk_digest(digests) != want:
            start, stop = self.store.chunk_bounds(chunk)
            raise StoreError(
                f"the dataset's files for rows {start}…{stop - 1} (chunk {chunk}) changed since the store "
                f"{getattr(self.store, 'url', '')} was extracted: its embeddings no longer describe these images; "
                "re-extract the store (fsd store verify --teacher names the chunks)"
            )


def stream_views(
    dataset: Dataset, stream: Iterable, *, limit: int | None = None, device: torch.device | None = None
) -> Iterator[tuple[object, torch.Tensor]]:
    """Render the stored views of each of the first ``limit`` batches of a store stream, in its order.

    Rows a store marks as left out at extraction (NaN parameters) are dropped from their batch.

    Args:
        dataset: the dataset the store is extracted from.
        stream: a :class:`~featstore.stream.StoreStream` (or any iterable of its batches).
        limit: the batches to render (None: all).
        device: the device the images go to.

    Yields:
        ``(batch, student input (B, C, H, W))``, the batch reduced to the rows rendered.

    Raises:
        StoreError: a file's bytes changed since extraction.
        BadSample: a sample cannot be read and the dataset does not skip bad samples.
    """
    pending: deque = deque()
    check = DigestCheck(getattr(stream, "store", None), dataset)

    def requests() -> Iterator[list[Request]]:
        for batch in itertools.islice(stream, limit):
            keep = np.isfinite(batch.view_params).all(axis=1)
            if not keep.all():
                batch = _subset(batch, keep)
            if not len(batch.indices):
                continue
            pending.append(batch)
            yield [(int(i), 0, (int(v),), p[None]) for i, v, p in zip(batch.indices, batch.view_ids, batch.view_params)]

    for rendered in render_batches(dataset, requests(), device):
        batch = pending.popleft()
        if len(rendered.rows) != len(batch.indices):
            batch = _subset(batch, np.isin(batch.indices, rendered.rows))
        check.add(rendered.rows, rendered.digests)
        if len(rendered.rows):
            yield batch, rendered.x[:, 0]


def _subset(batch: object, keep: np.ndarray) -> object:
    mask = torch.from_numpy(keep)
    return replace(
        batch,
        indices=batch.indices[keep],
        view_ids=batch.view_ids[keep],
        embeddings=batch.embeddings[mask],
        labels=batch.labels[mask],
        view_params=batch.view_params[keep],
    )


# -- fixed orders: extraction, evaluation ---------------------------------------------------------------


def chunk_batches(
    dataset: Dataset,
    bounds: Iterable[tuple[int, int, int]],
    *,
    num_views: int,
    seed: int,
    batch_size: int,
    device: torch.device | None = None,
) -> Iterator[tuple[int, int, Rendered]]:
    """Render every view of every row of each chunk, ``batch_size`` rows at a time.

    Args:
        dataset: the dataset.
        bounds: ``(chunk, start, stop)`` of each chunk, in order.
        num_views: V, views per row.
        seed: the seed the parameters are drawn from, with (row, view).
        batch_size: rows per batch; a chunk's last batch may be shorter.
        device: the device the images go to.

    Yields:
        ``(chunk, first row of the batch, rendered batch)``.
    """
    pending: deque = deque()
    views = tuple(range(num_views))

    def requests() -> Iterator[list[Request]]:
        for chunk, start, stop in bounds:
            for first in range(start, stop, batch_size):
                pending.append((chunk, first))
                yield [(row, seed, views, None) for row in range(first, min(first + batch_size, stop))]

    for rendered in render_batches(dataset, requests(), device):
        chunk, first = pending.popleft()
        yield chunk, first, rendered


def identity_batches(
    dataset: Dataset, rows: np.ndarray, batch_size: int, device: torch.device | None = None
) -> Iterator[Rendered]:
    """Render view 0 of ``rows``, in order, ``batch_size`` at a time (evaluation, accuracy).

    Args:
        dataset: the dataset.
        rows: the rows to render.
        batch_size: rows per batch.
        device: the device the images go to.

    Returns:
        An iterator of :class:`Rendered` batches.
    """
    rows = np.asarray(rows, dtype=np.int64)
    batches = ([(int(r), 0, (0,), None) for r in rows[i : i + batch_size]] for i in range(0, len(rows), batch_size))
    return render_batches(dataset, batches, device)


def rows_batches(
    dataset: Dataset, rows: np.ndarray, params: np.ndarray, batch_size: int, device: torch.device | None = None
) -> Iterator[Rendered]:
    """Render one given view per row, in order, ``batch_size`` at a time (verify, training the teacher).

    Args:
        dataset: the dataset.
        rows: the rows to render.
        params: (n, P) view parameters, one row per row of ``rows``.
        batch_size: rows per batch.
        device: the device the images go to.

    Returns:
        An iterator of :class:`Rendered` batches.
    """
    rows = np.asarray(rows, dtype=np.int64)
    batches = (
        [(int(r), 0, (0,), params[j][None]) for j, r in zip(range(i, i + batch_size), rows[i : i + batch_size])]
        for i in range(0, len(rows), batch_size)
    )
    return render_batches(dataset, batches, device)


def drawn_batches(
    dataset: Dataset, rows: np.ndarray, batch_size: int, *, seed: int, view: int, device: torch.device | None = None
) -> Iterator[Rendered]:
    """Render view ``view`` of each row, drawn from (seed, row, view) where the image is decoded.

    In order, ``batch_size`` at a time (online training of a teacher: fresh views every epoch).

    Args:
        dataset: the dataset.
        rows: the rows to render.
        batch_size: rows per batch.
        seed: the seed the parameters are drawn from.
        view: the view index the parameters are drawn for.
        device: the device the images go to.

    Returns:
        An iterator of :class:`Rendered` batches.
    """
    rows = np.asarray(rows, dtype=np.int64)
    batches = (
        [(int(r), seed, (view,), None) for r in rows[i : i + batch_size]] for i in range(0, len(rows), batch_size)
    )
    return render_batches(dataset, batches, device)
