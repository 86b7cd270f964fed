"""Extraction: run the teacher once over a split and fill a store, chunk by chunk, resumably.

The unit of work is a store chunk: its view parameters are drawn from (seed, sample, view), the teacher
embeds every view of every row in fixed batches *inside* the chunk, the chunk is written, then flagged
done. Because nothing about a chunk depends on which other chunks were computed before, re-running after a
crash computes only the missing chunks and gives arrays bit-identical to an uninterrupted run.

Size (over the ~500-line guideline, knowingly): the lazy loader's batching and the content digests landed
here with the one extraction entry (``ExtractConfig``/``extract_store``); the entry and its configs are the
part to move into their own module next.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from featstore.codecs import DEFAULT_DTYPE, check_dtype
from featstore.datasets import Dataset
from featstore.datasets.lazy import chunk_digest
from featstore.errors import FsdError, Interrupted, InvalidInput, StoreError
from featstore.loader import chunk_batches, identity_batches
from featstore.lock import writer_lock
from featstore.memory import release_free_memory
from featstore.progress import progress as progress_bar
from featstore.store import (
    FeatureStore,
    StoreShape,
    create_store,
    default_chunk_rows,
    identity_of,
    local_path,
    open_store,
    remove_store,
    store_exists,
)
from featstore.views import PARAM_NAMES


class EmbeddingModel(Protocol):
    """What extraction needs of a teacher network: its embedding function."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TeacherSource:
    """A loaded teacher plus the provenance the store records about it."""

    model: Any  # an nn.Module implementing EmbeddingModel
    arch: str
    checkpoint_sha256: str
    embedding_dim: int  # None only until extraction's probe for a head-less teacher of unknown width
    input_shape: list[int] | None  # None: any input (teachers brought as code or TorchScript)
    head_type: str | None  # None with head_weight None: a head-less embedding model (ONNX, pooled timm)
    head_weight: np.ndarray | None  # (C, D)
    head_bias: np.ndarray | None
    head_scale: float | None = None
    head_margin: float | None = None

    @property
    def has_head(self) -> bool:
        return self.head_weight is not None

    def without_head(self) -> TeacherSource:
        """The same network as a head-less embedding model (its classifier left out of the store)."""
        return dataclasses.replace(
            self, head_type=None, head_weight=None, head_bias=None, head_scale=None, head_margin=None
        )


@dataclass
class ExtractSummary:
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
        action = "resumed" if self.resumed else "wrote"
        return (
            f"{action} {self.url}: {self.samples} samples × {self.views} views × {self.dim} dims ({self.dtype}), "
            f"{self.chunks_computed}/{self.chunks_total} chunks computed, {self.bytes_stored / 1e6:.2f} MB on disk, "
            f"compression {self.compression_ratio:.2f}× vs float32, {self.seconds:.1f} s"
        )


def _store_meta(teacher: TeacherSource, dataset: Dataset, views: int, seed: int) -> dict[str, Any]:
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
            "num_classes": int(teacher.head_weight.shape[0]),
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
    """The head a resumed store holds must be this teacher's, to the bit: the provenance hash alone cannot
    tell for every teacher source, and a mismatch would mix two teachers' chunks under one head."""
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
    same = same_bias and np.array_equal(store.head_weight(), teacher.head_weight)
    if not same:
        raise StoreError(
            f"store {url} holds another head than this teacher's (other weights); refusing to resume into it "
            "(use --overwrite to replace it)"
        )


def mark_complete(store: FeatureStore) -> None:
    """Set ``complete``; a full disk here leaves every chunk written and only the flag to set again."""
    try:
        store.mark_complete()
    except OSError as exc:
        raise StoreError(
            f"marking {store.url} complete failed ({exc.strerror or exc}); every chunk is written — fix the cause "
            "and re-run the same command to finish"
        ) from None


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


@dataclass
class _ChunkBuffer:
    """One chunk being filled batch by batch; rows never rendered (bad samples left out) keep zero
    embeddings and NaN parameters, which readers take as 'left out'."""

    chunk: int
    start: int
    embeddings: np.ndarray  # (rows, V, D) float32
    params: np.ndarray  # (rows, V, P) float32
    digests: list[bytes | None]
    left_out: int = 0

    @classmethod
    def empty(cls, chunk: int, start: int, stop: int, views: int, dim: int) -> _ChunkBuffer:
        params = np.full((stop - start, views, len(PARAM_NAMES)), np.nan, dtype=np.float32)
        return cls(chunk, start, np.zeros((stop - start, views, dim), np.float32), params, [None] * (stop - start))

    def content_digest(self) -> bytes | None:
        if all(d is None for d in self.digests):
            return None  # in-memory data: the fingerprint already covers every pixel
        return chunk_digest([d if d is not None else bytes(32) for d in self.digests])


@torch.no_grad()
def extract_chunks(
    store: FeatureStore,
    chunks: list[int],
    teacher: TeacherSource,
    dataset: Dataset,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    on_written: Callable[[int], None] | None = None,
) -> None:
    """Compute and write ``chunks`` (every view of their rows), each flagged done once written: the unit of
    work and of resume, shared by the single-process loop and distributed workers.

    Images come from :func:`featstore.loader.chunk_batches` in fixed ``batch_size`` slices of each chunk,
    so results never depend on what else ran (a resumed chunk equals an uninterrupted one)."""
    bounds = [(c, *store.chunk_bounds(c)) for c in chunks]
    views, dim = store.shape.num_views, teacher.embedding_dim
    buffers = {c: _ChunkBuffer.empty(c, start, stop, views, dim) for c, start, stop in bounds[:1]}
    order = iter(bounds)
    current = next(order, None)
    batches = chunk_batches(dataset, bounds, num_views=views, seed=seed, batch_size=batch_size, device=device)
    for chunk, first, rendered in itertools.chain(batches, [(None, None, None)]):
        while current is not None and chunk != current[0]:  # the current chunk is complete: write it
            done = buffers.pop(current[0])
            _write(store, done, dataset)
            release_free_memory()  # freed pages back to the OS after each chunk: resident memory does not grow with N
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
            buffer.embeddings[local, view] = teacher.model.forward_features(x).float().cpu().numpy()
        buffer.params[local] = rendered.params
        for row, digest in zip(local.tolist(), rendered.digests):
            buffer.digests[row] = digest


def _write(store: FeatureStore, buffer: _ChunkBuffer, dataset: Dataset) -> None:
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


def extract_chunk(
    store: FeatureStore,
    chunk: int,
    teacher: TeacherSource,
    dataset: Dataset,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
) -> None:
    """Compute and write one chunk (see :func:`extract_chunks`)."""
    extract_chunks(store, [chunk], teacher, dataset, seed=seed, batch_size=batch_size, device=device)


def left_out_rows(store: FeatureStore) -> np.ndarray:
    """Rows whose sample was left out at extraction (--skip-bad-samples): NaN view parameters."""
    rows = [
        np.flatnonzero(np.isnan(store.read_rows(*store.chunk_bounds(c))[2]).all(axis=(1, 2))) + store.chunk_bounds(c)[0]
        for c in range(store.num_chunks)
    ]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def record_left_out(store: FeatureStore) -> None:
    """Count the samples left out in the store's provenance (``dataset.left_out``), before completion."""
    rows = left_out_rows(store)
    if len(rows):
        store.meta.setdefault("dataset", {})["left_out"] = {"count": int(len(rows)), "rows": rows[:100].tolist()}


def validate_request(
    teacher: TeacherSource, dataset: Dataset, *, views: int, dtype: str, chunk_rows: int | None, batch_size: int
) -> None:
    """Every argument check, before anything is created or loaded onto a device."""
    check_dtype(dtype)
    for name, value in (("views", views), ("batch-size", batch_size)):
        if value <= 0:
            raise InvalidInput(f"{name} must be positive, got {value}")
    if chunk_rows is not None and chunk_rows <= 0:
        raise InvalidInput(f"chunk-rows must be positive, got {chunk_rows}")
    if chunk_rows is not None and chunk_rows > len(dataset):
        raise InvalidInput(
            f"chunk-rows {chunk_rows} exceeds the split's {len(dataset)} samples (one chunk would hold them all; "
            f"use at most {len(dataset)}, or leave it out for the default)"
        )
    check_head_classes(teacher, dataset.num_classes, dataset.spec)
    adapt = getattr(teacher.model, "adapt_to_dataset", None)
    if adapt is not None:  # e.g. an ONNX teacher converting this dataset's normalisation to its own
        adapt(dataset)
    if teacher.input_shape is not None and list(teacher.input_shape) != list(dataset.image_shape):
        raise InvalidInput(
            f"teacher expects input {teacher.input_shape}, dataset {dataset.spec} gives {list(dataset.image_shape)}"
        )
    classes = int(np.asarray(teacher.head_weight).shape[0]) if teacher.has_head else dataset.num_classes
    if classes < dataset.num_classes:  # the stored head would score labels it has no row for: training crashes
        raise InvalidInput(
            f"teacher {teacher.arch!r} has a head over {classes} classes, but dataset {dataset.spec} has "
            f"{dataset.num_classes}: its logits cannot cover the dataset's labels"
        )
    _probe_embedding_width(teacher, dataset)


def check_head_classes(teacher: TeacherSource, num_classes: int, where: str) -> None:
    """A teacher head over another number of classes than the dataset's cannot teach it (TH-KD would crash
    mid-training on the logits' shape): refuse it with the ways out."""
    if teacher.has_head and int(teacher.head_weight.shape[0]) != int(num_classes):
        raise InvalidInput(
            f"teacher {teacher.arch!r} has a head over {int(teacher.head_weight.shape[0])} classes but dataset "
            f"{where} has {num_classes}: extract without it (--drop-head) and fit one on the stored embeddings "
            "with fsd store fit-head"
        )


@torch.no_grad()
def _probe_embedding_width(teacher: TeacherSource, dataset: Dataset) -> None:
    """Embed one sample on the CPU: a teacher brought as code or TorchScript declares its width only through
    its head, and a mismatch would otherwise fail mid-extraction with a half-written store."""
    x = _first_readable_sample(dataset)
    if x is None:
        return
    try:
        out = teacher.model.eval().forward_features(x.to(_model_device(teacher.model)))
    except FsdError:  # the teacher's own one-line account of what went wrong
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the user's model raises on this input
        raise InvalidInput(
            f"teacher {teacher.arch!r} fails on one {list(x.shape[1:])} input of dataset {dataset.spec}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    width = int(out.shape[-1]) if out.ndim == 2 else None
    if teacher.embedding_dim is None and width is not None:  # a head-less teacher declares no width
        teacher.embedding_dim = width
    if width != teacher.embedding_dim:
        expects = "its head expects" if teacher.has_head else "it declares"
        raise InvalidInput(
            f"teacher {teacher.arch!r} returns embeddings of shape {tuple(out.shape)} but {expects} "
            f"(batch, {teacher.embedding_dim})"
        )


def _first_readable_sample(dataset: Dataset) -> torch.Tensor | None:
    """View 0 of sample 0, read in process (for a one-sample probe, workers cost more than they save); with
    ``skip_bad_samples``, of the first sample that reads (None when none does: extraction then reports them)."""
    import copy

    quick = copy.copy(dataset)
    quick.options = dataclasses.replace(dataset.options, workers=0)
    with warnings.catch_warnings():  # a skipped sample is reported by the extraction itself, once
        warnings.simplefilter("ignore", RuntimeWarning)
        for rendered in identity_batches(quick, np.arange(len(dataset)), 1):
            if len(rendered.rows):
                return rendered.x[:, 0]
    return None


def _model_device(model: Any) -> torch.device:
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


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
    """(store, resumed): the existing store when it was made from the same inputs, a new one otherwise.

    Call it while holding the writer lock. A store made from other inputs is refused unless ``overwrite``.
    ``compute`` (``{"batch_size", "device"}``) is recorded; resuming with other values is allowed but
    warned about: float32 results depend on the batch and the device in their last bits, so the store would
    differ slightly from an uninterrupted run.
    """
    meta = _store_meta(teacher, dataset, views, seed)
    if compute is not None:
        meta["compute"] = dict(compute)
    if store_exists(url) and overwrite:
        remove_store(url)
    if store_exists(url) and not overwrite and _nothing_finished(url):
        # an earlier run failed before its first chunk (e.g. a teacher that output NaN): nothing to keep
        warnings.warn(f"store {url} holds no finished chunk: re-initialising it", RuntimeWarning, stacklevel=3)
        remove_store(url)
    if store_exists(url):
        store = _open_for_resume(url, {**meta, "dtype": dtype, "chunk_rows": chunk_rows})
        _check_same_head(store, teacher, url)
        before = store.meta.get("compute")
        if compute is not None and before is not None and before != compute and store.missing_chunks():
            warnings.warn(
                f"resuming {url} with {compute} where its first chunks were computed with {before}: the new "
                "chunks may differ in their last bits from an uninterrupted run",
                RuntimeWarning,
                stacklevel=3,
            )
        return store, True
    classes = int(teacher.head_weight.shape[0]) if teacher.has_head else int(dataset.num_classes)
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


def summarise(store: FeatureStore, *, computed: int, seconds: float, resumed: bool) -> ExtractSummary:
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


def extract_teacher(
    teacher: TeacherSource,
    dataset: Dataset,
    url: str,
    *,
    views: int = 1,
    dtype: str = DEFAULT_DTYPE,
    chunk_rows: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractSummary:
    """Create (or resume) the store at ``url`` holding ``teacher``'s embeddings of ``dataset``."""
    validate_request(teacher, dataset, views=views, dtype=dtype, chunk_rows=chunk_rows, batch_size=batch_size)
    started = time.perf_counter()
    device = torch.device(device)
    teacher.model.eval().to(device)
    with writer_lock(local_path(url)):
        store, resumed = open_or_create_store(
            teacher,
            dataset,
            url,
            views=views,
            dtype=dtype,
            chunk_rows=chunk_rows,
            seed=seed,
            overwrite=overwrite,
            compute={"batch_size": batch_size, "device": device.type},
        )
        missing = store.missing_chunks()
        try:
            with progress_bar(total=len(missing), desc="extract-teacher", unit="chunk", enabled=progress) as bar:
                extract_chunks(
                    store,
                    missing,
                    teacher,
                    dataset,
                    seed=seed,
                    batch_size=batch_size,
                    device=device,
                    on_written=lambda _: bar.update(),
                )
        except KeyboardInterrupt:
            done = int(store.done_chunks().sum())
            raise Interrupted(
                f"interrupted; {done}/{store.num_chunks} chunks of {url} are safely written: re-run the same "
                "command to resume"
            ) from None
        if not store.complete:
            record_left_out(store)
            mark_complete(store)
    return summarise(store, computed=len(missing), seconds=time.perf_counter() - started, resumed=resumed)


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract: the one set of options (and their defaults) every extraction caller shares."""

    dataset: str  # a dataset spec (digits, folder:DIR, …), so dask workers can load it themselves
    out: str  # store path or fsspec URL
    split: str = "train"
    views: int = 1  # views per sample; view 0 is the identity view
    dtype: str = DEFAULT_DTYPE
    chunk_rows: int | None = None  # None: a few MB per chunk (featstore.store.default_chunk_rows)
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True
    image_size: int | None = None  # render views at this size (datasets read from files; None: the teacher's)
    loader_workers: int | None = None  # DataLoader processes decoding images (None: from the CPU count)
    skip_bad_samples: bool = False  # leave unreadable samples out (counted in the store) instead of stopping


@dataclass(frozen=True)
class DaskExecutor:
    """Run extraction's chunks on dask workers: a LocalCluster of ``workers`` processes, or ``scheduler``."""

    workers: int | None = None
    scheduler: str | None = None
    chunks_per_task: int = 4


def extract_store(config: ExtractConfig, teacher: Any, executor: DaskExecutor | None = None) -> ExtractSummary:
    """The one extraction entry: fill (or resume) ``config.out`` with the teacher's embeddings.

    ``teacher`` is a zero-argument loader, or a picklable ``(function, argument)`` pair, returning a
    :class:`TeacherSource` (featstore never imports distill, so the caller says how to load it). Without an
    executor the teacher runs in this process; with one, each dask worker loads its own copy. Both give the
    same bytes.
    """
    options = {
        "views": config.views,
        "dtype": config.dtype,
        "chunk_rows": config.chunk_rows,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "device": config.device,
        "overwrite": config.overwrite,
        "progress": config.progress,
    }
    from featstore.datasets import LoadOptions, load_dataset
    from featstore.datasets.base import renders_any_size

    loaded = None
    image_size = config.image_size
    if image_size is None and renders_any_size(config.dataset):  # render at the teacher's own input size
        loaded = teacher[0](teacher[1]) if isinstance(teacher, tuple) else teacher()
        image_size = tuple(loaded.input_shape[1:]) if loaded.input_shape else None  # (H, W)
    if executor is not None:
        from featstore.dask_extract import extract_teacher_distributed

        return extract_teacher_distributed(
            teacher,
            config.dataset,
            config.split,
            config.out,
            workers=executor.workers,
            scheduler=executor.scheduler,
            chunks_per_task=executor.chunks_per_task,
            image_size=image_size,
            skip_bad_samples=config.skip_bad_samples,
            **options,
        )
    if loaded is None:
        loaded = teacher[0](teacher[1]) if isinstance(teacher, tuple) else teacher()
    load = LoadOptions(workers=config.loader_workers, skip_bad_samples=config.skip_bad_samples)
    dataset = load_dataset(config.dataset, config.split, image_size=image_size, options=load)
    return extract_teacher(loaded, dataset, config.out, **options)
