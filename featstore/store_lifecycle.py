"""An extraction's store lifecycle: create it or resume it, refuse one made from other inputs, finish it.

Shared by the single-process and the distributed entry points, which call it while holding the writer
lock. The store's identity (teacher hash, dataset fingerprint, views, dtype, layout) decides between
resuming and refusing; a store with no finished chunk is re-created, since nothing would be lost.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from featstore.datasets import Dataset
from featstore.errors import StoreError
from featstore.store import (
    FeatureStore,
    StoreShape,
    create_store,
    default_chunk_rows,
    identity_of,
    open_store,
    remove_store,
    store_exists,
)
from featstore.teacher import TeacherSource
from featstore.views import PARAM_NAMES


@dataclass
class ExtractSummary:
    """What one extraction run did, as ``extract-teacher`` prints it.

    Attributes:
        url: the store.
        samples: N, its rows.
        views: V, views per row.
        dim: D, the embedding width.
        dtype: the embeddings' storage dtype.
        chunks_total: the store's chunks.
        chunks_computed: the chunks this run computed (fewer than ``chunks_total`` on a resume).
        bytes_stored: the compressed bytes of all arrays.
        compression_ratio: float32 bytes of the embeddings over their stored bytes.
        seconds: the run's wall time.
        resumed: whether the run continued an existing store.
    """

    url: str
    samples: int
    views: int
    dim: int
    dtype: str
    chunks_total: int
    chunks_computed: int
    bytes_stored: int
    compression_ratio: float
    seconds: float
    resumed: bool

    def line(self) -> str:
        """Return the one line ``extract-teacher`` prints."""
        action = "resumed" if self.resumed else "wrote"
        return (
            f"{action} {self.url}: {self.samples} samples × {self.views} views × {self.dim} dims ({self.dtype}), "
            f"{self.chunks_computed}/{self.chunks_total} chunks computed, {self.bytes_stored / 1e6:.2f} MB on disk, "
            f"compression {self.compression_ratio:.2f}× vs float32, {self.seconds:.1f} s"
        )


def store_meta(teacher: TeacherSource, dataset: Dataset, views: int, seed: int) -> dict[str, Any]:
    """Return the provenance a store records: teacher, head (None: head-less), dataset and views.

    Args:
        teacher: the teacher.
        dataset: the dataset it runs over.
        views: views per sample.
        seed: the seed of the view parameters.

    Returns:
        The ``teacher``, ``head``, ``dataset`` and ``views`` attribute dicts.
    """
    return {
        "teacher": {
            "arch": teacher.arch,
            "checkpoint_sha256": teacher.checkpoint_sha256,
            "embedding_dim": teacher.embedding_dim,
            "input_shape": list(teacher.input_shape or dataset.image_shape),
        },
        "head": None
        if not teacher.has_head
        else {
            "type": teacher.head_type,
            "num_classes": teacher.head_classes,
            "scale": teacher.head_scale,
            "margin": teacher.head_margin,
        },
        "dataset": {
            "spec": dataset.spec,
            "split": dataset.split,
            "num_samples": len(dataset),
            "num_classes": int(dataset.num_classes),
            "fingerprint": dataset.fingerprint(),
        },
        "views": {
            "count": views,
            "kind": dataset.view_policy.kind,
            "params_names": list(PARAM_NAMES),
            "seed": seed,
            "policy": dataset.view_policy.to_dict(),
        },
    }


def _check_same_head(store: FeatureStore, teacher: TeacherSource, url: str) -> None:
    """Refuse to resume a store whose head is not this teacher's, to the bit.

    The provenance hash alone cannot tell for every teacher source, and a mismatch would mix two teachers'
    chunks under one head.
    """
    fitted = bool((store.meta.get("head") or {}).get("fitted"))  # fsd store fit-head, after extraction
    if fitted and not teacher.has_head:
        return
    if store.has_head != teacher.has_head:
        raise StoreError(
            f"store {url} was extracted {'with' if store.has_head else 'without'} a teacher head and this teacher "
            f"{'has' if teacher.has_head else 'has none'}; refusing to resume into it (use --overwrite to replace it)"
        )
    if not teacher.has_head:
        return
    stored_bias = store.head_bias()  # one read of the array, not one per comparison
    if stored_bias is None or teacher.head_bias is None:
        same_bias = stored_bias is None and teacher.head_bias is None
    else:
        same_bias = np.array_equal(stored_bias, teacher.head_bias)
    if not (same_bias and np.array_equal(store.head_weight(), teacher.head_weight)):
        raise StoreError(
            f"store {url} holds another head than this teacher's (other weights); refusing to resume into it "
            "(use --overwrite to replace it)"
        )


def _nothing_finished(url: str) -> bool:
    """True for a store whose every progress flag is false: re-creating it loses no work."""
    store = open_store(url, require_complete=False, check=False)
    return not store.done_chunks().any()


def _open_for_resume(url: str, wanted: dict[str, Any]) -> FeatureStore:
    store = open_store(url, require_complete=False, writable=True)
    if wanted["chunk_rows"] is None:  # not given on the command line: resume with the store's own layout
        wanted = {**wanted, "chunk_rows": store.inner_chunk_rows}
    have = identity_of(store.meta)
    if have != identity_of(wanted):
        differing = sorted(k for k in have if have[k] != identity_of(wanted)[k])
        raise StoreError(
            f"store {url} was made with a different {', '.join(differing)}; "
            "refusing to overwrite it (use --overwrite to replace it)"
        )
    return store


def _resume(url: str, meta: dict[str, Any], teacher: TeacherSource, dtype: str, chunk_rows: int | None):
    store = _open_for_resume(url, {**meta, "dtype": dtype, "chunk_rows": chunk_rows})
    _check_same_head(store, teacher, url)
    before, compute = store.meta.get("compute"), meta.get("compute")
    if compute is not None and before is not None and before != compute and store.missing_chunks():
        warnings.warn(
            f"resuming {url} with {compute} where its first chunks were computed with {before}: the new "
            "chunks may differ in their last bits from an uninterrupted run",
            RuntimeWarning,
            stacklevel=4,
        )
    return store


def open_or_create_store(
    teacher: TeacherSource,
    dataset: Dataset,
    url: str,
    *,
    views: int,
    dtype: str,
    chunk_rows: int | None,
    seed: int,
    overwrite: bool,
    compute: dict[str, Any] | None = None,
) -> tuple[FeatureStore, bool]:
    """Open the existing store when it is made from the same inputs, or create a new one.

    Call it while holding the writer lock. A store made from other inputs is refused unless ``overwrite``.
    Resuming with other ``compute`` values is allowed but warned about: float32 results depend on the batch
    and the device in their last bits, so the store would differ slightly from an uninterrupted run.

    Args:
        teacher: the teacher.
        dataset: the dataset it runs over.
        url: the store's local path or fsspec URL.
        views: views per sample.
        dtype: the embeddings' storage dtype.
        chunk_rows: rows per chunk (None: the default, or a resumed store's own).
        seed: the seed of the view parameters.
        overwrite: replace a store made from other inputs.
        compute: ``{"batch_size", "device"}``, recorded in the store.

    Returns:
        The store, open for writing, and whether it is resumed.

    Raises:
        StoreError: what is at ``url`` is not a store, or a store made from other inputs or holding another
            head (without ``overwrite``).
    """
    meta = store_meta(teacher, dataset, views, seed)
    if compute is not None:
        meta["compute"] = dict(compute)
    if store_exists(url) and overwrite:
        remove_store(url)
    if store_exists(url) and not overwrite and _nothing_finished(url):
        # an earlier run failed before its first chunk (e.g. a teacher that output NaN): nothing to keep
        warnings.warn(f"store {url} holds no finished chunk: re-initialising it", RuntimeWarning, stacklevel=3)
        remove_store(url)
    if store_exists(url):
        return _resume(url, meta, teacher, dtype, chunk_rows), True
    classes = teacher.head_classes or int(dataset.num_classes)
    shape = StoreShape(len(dataset), views, teacher.embedding_dim, len(PARAM_NAMES), classes)
    rows_per_chunk = chunk_rows or default_chunk_rows(len(dataset), views, teacher.embedding_dim, dtype)
    store = create_store(
        url,
        shape=shape,
        dtype=dtype,
        chunk_rows=rows_per_chunk,
        labels=dataset.labels,
        head_weight=teacher.head_weight,
        head_bias=teacher.head_bias,
        meta=meta,
    )
    return store, False


def left_out_rows(store: FeatureStore) -> np.ndarray:
    """Find the rows whose sample is left out at extraction (``--skip-bad-samples``): NaN view parameters.

    Args:
        store: the store.

    Returns:
        The row indices, ascending.
    """
    rows = [
        np.flatnonzero(np.isnan(store.read_rows(*store.chunk_bounds(c))[2]).all(axis=(1, 2))) + store.chunk_bounds(c)[0]
        for c in range(store.num_chunks)
    ]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def finish(store: FeatureStore) -> None:
    """Record the samples left out (``dataset.left_out``) and set ``complete``, unless already complete.

    Args:
        store: the store, every chunk written.

    Raises:
        StoreError: the flag cannot be written (disk full); every chunk stays written.
    """
    if store.complete:
        return
    rows = left_out_rows(store)
    if len(rows):
        store.meta.setdefault("dataset", {})["left_out"] = {"count": int(len(rows)), "rows": rows[:100].tolist()}
    try:
        store.mark_complete()
    except OSError as exc:  # a full disk here leaves every chunk written and only the flag to set again
        raise StoreError(
            f"marking {store.url} complete failed ({exc.strerror or exc}); every chunk is written — fix the cause "
            "and re-run the same command to finish"
        ) from None


def summarise(store: FeatureStore, *, computed: int, seconds: float, resumed: bool) -> ExtractSummary:
    """Summarise a finished run over ``store``.

    Args:
        store: the finished store.
        computed: the chunks this run computed.
        seconds: the run's wall time.
        resumed: whether the run continued an existing store.

    Returns:
        The run's :class:`ExtractSummary`.
    """
    raw, stored = store.nbytes_embeddings()
    return ExtractSummary(
        url=store.url,
        samples=store.shape.num_samples,
        views=store.shape.num_views,
        dim=store.shape.dim,
        dtype=store.dtype,
        chunks_total=store.num_chunks,
        chunks_computed=computed,
        bytes_stored=store.nbytes_stored(),
        compression_ratio=raw / max(stored, 1),
        seconds=seconds,
        resumed=resumed,
    )
