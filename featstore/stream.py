"""Streaming reads of a store for training: chunk-shuffled, one stored view per sample, rank-sharded.

Why chunk-shuffled: a compressed store is read efficiently a whole chunk at a time, never row by row, and
the whole array must never be loaded. So each epoch permutes the chunk order, reads a few chunks into a
shuffle buffer, shuffles the rows inside it and yields batches; the next group of chunks is read in a
background thread while the current one is consumed. Every sample appears exactly once per epoch.

Class-balanced batches (``samples_per_class=K``, for losses that mine pairs inside a batch, such as the
triplet loss) keep that reading pattern: the rows of each group of chunks, already shuffled, are cut per
class into blocks of K, and each batch takes one block from each of batch_size / K distinct classes
(:func:`balanced_order`). Rows that do not make a batch yet — under K of a class, or blocks of classes the
group holds too few of — carry over into the next group; the last group packs what is left, so every sample
still appears exactly once per epoch and an epoch has as many batches as the plain stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from featstore import codecs
from featstore.datasets import Dataset
from featstore.errors import InvalidInput, StoreError
from featstore.store import ChunkGeometry, FeatureStore, StoreShape
from featstore.views import PARAM_NAMES, sample_views

VIEW_SAMPLING = ("random", "cycle")


def balanced_order(
    labels: np.ndarray, batch_size: int, per_class: int, rng: np.random.Generator, *, carry_limit: int, final: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Arrange rows into class-balanced batches.

    Each class's rows are cut into blocks of ``per_class``; a batch takes one block from each of
    ``batch_size // per_class`` distinct classes, drawn with probability proportional to the blocks a class
    has left (so no class is used up early). When the rows left over exceed ``carry_limit`` — or ``final``,
    at the end of an epoch — the remaining blocks are packed into batches in a random order that may repeat a
    class (each class in such a batch still has ``per_class`` rows, so every anchor has a positive); with
    ``final`` the rows under a block (fewer than ``per_class`` of a class) go last, grouped by class.
    The rows are grouped by class with one stable sort, so the work grows with rows · log(rows) whatever
    the number of classes (a face store's window holds tens of thousands of identities).

    Args:
        labels: The rows' classes, in their shuffled order.
        batch_size: Rows per batch, a multiple of ``per_class``.
        per_class: Rows of one class in a batch (K).
        rng: The generator that draws the classes of each batch.
        carry_limit: Leftover rows beyond which the remaining blocks are packed anyway.
        final: Whether this is the last group of the epoch (everything is packed).

    Returns:
        The positions of the full batches, batch after batch, and the positions carried over to the next
        group: under ``carry_limit`` + one batch + the rows under a block (at most ``per_class`` − 1 of
        each class), or under one batch when ``final``.
    """
    classes_per_batch = batch_size // per_class
    by_class = np.argsort(labels, kind="stable").astype(np.int64)  # each class's positions, ascending
    _, starts, counts = np.unique(labels[by_class], return_index=True, return_counts=True)
    left = counts // per_class  # blocks each class has left; block j of class c: by_class[starts[c] + j·K …]
    whole = left * per_class
    loose = np.concatenate([by_class[a + w : a + n] for a, w, n in zip(starts, whole, counts)] + [by_class[:0]])

    def block(c: int, j: int) -> np.ndarray:
        first = starts[c] + j * per_class
        return by_class[first : first + per_class]

    batches: list[np.ndarray] = []
    while True:
        open_classes = np.flatnonzero(left)
        if len(open_classes) < classes_per_batch:
            break
        weights = left[open_classes].astype(np.float64)
        picks = rng.choice(len(open_classes), classes_per_batch, replace=False, p=weights / weights.sum())
        chosen = open_classes[picks]
        left[chosen] -= 1
        batches.append(np.concatenate([block(c, j) for c, j in zip(chosen, left[chosen])]))
    rest_class = np.repeat(np.arange(len(left)), left)
    rest_block = np.arange(len(rest_class)) - np.repeat(np.cumsum(left) - left, left)
    shuffled = rng.permutation(len(rest_class))
    rest = [block(c, j) for c, j in zip(rest_class[shuffled], rest_block[shuffled])]
    rows_left = len(rest) * per_class + len(loose)
    empty = np.zeros(0, np.int64)
    if final or rows_left > carry_limit:  # pack the leftover blocks (and, at the end, the loose rows) too
        tail = np.concatenate([*rest, *([loose] if final else []), empty]).astype(np.int64)
        full = len(tail) // batch_size * batch_size
        batches += list(tail[:full].reshape(-1, batch_size))
        carried = np.concatenate([tail[full:], *([] if final else [loose]), empty])
    else:
        carried = np.concatenate([*rest, loose, empty])
    order = np.concatenate([*batches, empty]).astype(np.int64)
    return order, carried.astype(np.int64)


@dataclass
class StreamBatch:
    """One training batch of teacher outputs; rows are store (= dataset) sample indices."""

    indices: np.ndarray  # (B,) int64 sample ids
    view_ids: np.ndarray  # (B,) int64 which stored view of each sample
    embeddings: torch.Tensor  # (B, D) float32 teacher embeddings of that view
    labels: torch.Tensor  # (B,) int64
    view_params: np.ndarray  # (B, P) float32 parameters to render the same view for the student


class GeneratedViews(ChunkGeometry):
    """A store-shaped source of view parameters *without* teacher embeddings (D = 0).

    The online-teacher baseline streams this instead of a store: the same chunk order, the same views
    drawn from (seed, sample, view) as extraction would draw them, the same rendering — only the teacher's
    embedding is computed at every step instead of read.

    Args:
        dataset: The dataset whose samples and view policy the views come from.
        num_views: Views per sample (V).
        seed: The seed views are drawn from, as an extraction's store seed.
        chunk_rows: Samples per chunk, which sets the chunk-shuffled reading order.

    Raises:
        InvalidInput: ``num_views`` or ``chunk_rows`` is not positive.
    """

    def __init__(self, dataset: Dataset, num_views: int, seed: int = 0, chunk_rows: int = 256) -> None:
        if num_views <= 0 or chunk_rows <= 0:
            raise InvalidInput(f"views and chunk rows must be positive, got {num_views}, {chunk_rows}")
        self.dataset, self.seed, self.chunk_rows = dataset, seed, chunk_rows
        self.shape = StoreShape(len(dataset), num_views, 0, len(PARAM_NAMES), dataset.num_classes)

    dtype = "float32"

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunk ``chunk`` as (empty embeddings, labels, view parameters), the views drawn as extraction draws them."""
        rows = np.arange(*self.chunk_bounds(chunk))
        policy = self.dataset.view_policy
        sizes = self.dataset.source_sizes(rows) if policy.original else None  # boxes drawn on the originals
        views = sample_views(policy, self.seed, rows, self.shape.num_views, sizes)
        return np.zeros((len(rows), self.shape.num_views, 0), np.float32), self.dataset.labels[rows], views

    def read_chunks_raw(self, chunks: list[int]) -> list[tuple[np.ndarray, None, np.ndarray, np.ndarray]]:
        """Several chunks in the store's raw form (embeddings, no scales, labels, views)."""
        return [(e, None, labels, views) for e, labels, views in map(self.read_chunk, chunks)]

    def decode(self, stored: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
        """The embeddings unchanged: there is nothing to decode."""
        return stored


class StoreStream:
    """Iterate a complete store in batches; call :meth:`set_epoch` before each epoch.

    Memory is bounded by the buffer, whatever the store's size: at most two groups of ``buffer_chunks``
    chunks (the one being consumed and the one prefetched) plus a carry of under one batch, i.e. about
    3 × buffer_chunks × chunk_rows × V × D × 4 bytes of decoded float32.

    Args:
        store: A complete feature store, or :class:`GeneratedViews` for an online teacher.
        batch_size: Samples per batch.
        seed: Seeds the chunk order, the shuffle and the view choice of every epoch.
        view_sampling: ``"random"`` draws a stored view per sample per epoch; ``"cycle"`` takes view
            (epoch + sample) mod V, so every view is used equally often.
        buffer_chunks: Chunks read and shuffled together (the shuffle buffer).
        rank: This worker's rank; ranks read disjoint shards of the chunk list.
        world_size: The number of workers sharing the store.
        drop_last: Whether to drop the last, short batch of an epoch.
        prefetch: Whether to read the next group of chunks in a background thread.
        skip_bad_chunks: Whether an unreadable or non-finite chunk is skipped with a warning instead of
            raising :class:`StoreError`.
        samples_per_class: K, for class-balanced batches of batch_size / K classes × K samples (the module
            docstring); their carry is bounded by one group of chunks or batch_size / K + 1 chunks,
            whichever is larger, plus one batch and fewer than K rows of each class (on a store of many
            classes with few rows each, that last part dominates: up to (K − 1) × classes rows). None:
            plain shuffled batches.

    Raises:
        InvalidInput: A batch size, view sampling, rank or class balance that cannot work.
    """

    def __init__(
        self,
        store: FeatureStore | GeneratedViews,
        batch_size: int,
        *,
        seed: int = 0,
        view_sampling: str = "random",
        buffer_chunks: int = 4,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        prefetch: bool = True,
        skip_bad_chunks: bool = False,
        samples_per_class: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise InvalidInput(f"batch-size must be positive, got {batch_size}")
        if samples_per_class is not None:
            check_balanced(batch_size, samples_per_class, store.shape.num_classes)
        if view_sampling not in VIEW_SAMPLING:
            raise InvalidInput(f"unknown view sampling {view_sampling!r}; valid: {', '.join(VIEW_SAMPLING)}")
        if not 0 <= rank < world_size:
            raise InvalidInput(f"rank {rank} outside world size {world_size}")
        self.store = store
        self.batch_size = batch_size
        self.seed = seed
        self.view_sampling = view_sampling
        self.buffer_chunks = max(1, buffer_chunks)
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.skip_bad_chunks = skip_bad_chunks
        self.samples_per_class = samples_per_class
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose chunk order, shuffle and views the next iteration yields."""
        self.epoch = epoch

    def _chunks(self) -> list[int]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0]))
        order = rng.permutation(self.store.num_chunks)
        return [int(c) for c in order[self.rank :: self.world_size]]

    def num_samples(self) -> int:
        """Samples this rank reads in the current epoch."""
        return sum(self.store.chunk_bounds(c)[1] - self.store.chunk_bounds(c)[0] for c in self._chunks())

    def batches_per_rank(self) -> int:
        """Batches every rank can run in any epoch (all of them when world_size is 1).

        Ranks read disjoint chunk lists whose sizes differ with the epoch's permutation; distributed
        training must run the same number of steps on every rank, so each stops after this many. The bound
        assumes the worst case — a rank with the fewest chunks, one of them the short last chunk — so it
        holds for every epoch; the few rows beyond it are skipped that epoch only.
        """
        if self.world_size == 1:
            return len(self)
        store = self.store
        fewest_chunks = store.num_chunks // self.world_size
        last_rows = store.shape.num_samples - (store.num_chunks - 1) * store.chunk_rows
        rows = fewest_chunks * store.chunk_rows - (store.chunk_rows - last_rows)
        return max(0, rows) // self.batch_size

    def __len__(self) -> int:
        n = self.num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _checked(self, chunk: int, result: tuple | BaseException) -> tuple[np.ndarray, ...] | None:
        """One chunk as stored, validated, or None when it is bad and ``skip_bad_chunks`` is set.

        The chunk is not yet decoded (only the view each row gets is decoded later). A chunk that cannot be
        decompressed or holds non-finite embeddings is never trained on: it raises :class:`StoreError`
        naming the chunk, or with ``skip_bad_chunks`` is skipped with a warning.
        """
        if isinstance(result, BaseException):  # a corrupt or truncated chunk file surfaces as many types
            problem = f"unreadable ({type(result).__name__}: {result})"
        else:
            stored, scales, labels, views = result
            problem = None if codecs.finite_rows(stored, self.store.dtype, scales) else "non-finite teacher embeddings"
        if problem is not None:
            message = (
                f"chunk {chunk} of store {getattr(self.store, 'url', '')} is bad: {problem}; "
                "run `fsd store verify` and re-extract it"
            )
            if not self.skip_bad_chunks:
                raise StoreError(message + " (or train with --skip-bad-chunks)")
            warnings.warn(message + "; skipped", RuntimeWarning, stacklevel=2)
            return None
        if scales is None:
            scales = np.ones(stored.shape[:2], np.float32)  # a placeholder so every chunk has five parts
        return np.arange(*self.store.chunk_bounds(chunk)), stored, scales, labels, views

    def _read_group(self, chunks: list[int]) -> tuple[np.ndarray, ...]:
        results = self.store.read_chunks_raw(chunks)  # one concurrent fetch for the whole group
        parts = [part for part in map(self._checked, chunks, results) if part is not None]
        if not parts:  # every chunk of the group was skipped
            shape = self.store.shape
            stored_dtype = codecs.STORAGE_DTYPE.get(self.store.dtype, "float32")
            return (
                np.zeros(0, np.int64),
                np.zeros((0, shape.num_views, shape.dim), stored_dtype),
                np.zeros((0, shape.num_views), np.float32),
                np.zeros(0, np.int64),
                np.zeros((0, shape.num_views, shape.num_params), np.float32),
            )
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))

    def __iter__(self) -> Iterator[StreamBatch]:
        chunks = self._chunks()
        groups = [chunks[i : i + self.buffer_chunks] for i in range(0, len(chunks), self.buffer_chunks)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 1]))
        num_views = self.store.shape.num_views
        carry: tuple[np.ndarray, ...] | None = None
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read_group, groups[0]) if groups and self.prefetch else None
            for g, group in enumerate(groups):
                if self.prefetch:
                    rows, stored, scales, labels, views = pending.result()
                    if g + 1 < len(groups):
                        pending = pool.submit(self._read_group, groups[g + 1])
                else:
                    rows, stored, scales, labels, views = self._read_group(group)
                if self.view_sampling == "random":
                    view_ids = rng.integers(0, num_views, size=len(rows))
                else:
                    view_ids = (self.epoch + rows) % num_views
                # one gather per array: shuffle and view choice together, decoding only the chosen view
                shuffle = rng.permutation(len(rows))
                vid = view_ids[shuffle]
                embeddings = self.store.decode(stored[shuffle, vid], scales[shuffle, vid])
                selected = (rows[shuffle], vid, embeddings, labels[shuffle], views[shuffle, vid])
                if carry is not None:
                    selected = tuple(np.concatenate([c, s]) for c, s in zip(carry, selected))
                if self.samples_per_class is not None:
                    order, kept = balanced_order(
                        selected[3],
                        self.batch_size,
                        self.samples_per_class,
                        rng,
                        carry_limit=self._carry_limit(len(rows)),
                        final=g == len(groups) - 1,
                    )
                    selected, carry_part = tuple(a[order] for a in selected), tuple(a[kept] for a in selected)
                full = len(selected[0]) // self.batch_size * self.batch_size
                for start in range(0, full, self.batch_size):
                    yield self._batch(selected, slice(start, start + self.batch_size))
                carry = carry_part if self.samples_per_class is not None else tuple(a[full:] for a in selected)
        if carry is not None and len(carry[0]) and not self.drop_last:
            yield self._batch(carry, slice(0, len(carry[0])))

    def _carry_limit(self, group_rows: int) -> int:
        """Rows balanced batching may carry between groups, bounded whatever the store.

        The limit is a group, or P + 1 chunks where chunks hold one class each (a store in class order), so
        P distinct classes can meet.
        """
        classes_per_batch = self.batch_size // self.samples_per_class
        return max(group_rows, (classes_per_batch + 1) * self.store.chunk_rows, self.batch_size)

    @staticmethod
    def _batch(arrays: tuple[np.ndarray, ...], part: slice) -> StreamBatch:
        rows, view_ids, embeddings, labels, views = (a[part] for a in arrays)
        return StreamBatch(
            indices=rows.astype(np.int64),
            view_ids=view_ids.astype(np.int64),
            embeddings=torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)),
            labels=torch.from_numpy(labels.astype(np.int64)),
            view_params=views,
        )


def check_balanced(batch_size: int, samples_per_class: int, num_classes: int) -> None:
    """Refuse a class balance that cannot make batches.

    Class-balanced batches need K ≥ 2 (a positive), B a multiple of K, and 2 ≤ B / K ≤ the classes.

    Args:
        batch_size: B, samples per batch.
        samples_per_class: K, samples of one class per batch.
        num_classes: The classes the store holds.

    Raises:
        InvalidInput: One of the three conditions fails.
    """
    k = samples_per_class
    if k < 2:
        raise InvalidInput(f"--samples-per-class must be at least 2 (a sample and a positive), got {k}")
    if batch_size % k:
        raise InvalidInput(f"--batch-size {batch_size} is not a multiple of --samples-per-class {k}")
    if not 2 <= batch_size // k <= num_classes:
        raise InvalidInput(
            f"--batch-size {batch_size} / --samples-per-class {k} = {batch_size // k} classes per batch; it must "
            f"lie between 2 (a negative) and the store's {num_classes} classes"
        )
