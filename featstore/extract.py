"""Extraction's entry points: run the teacher once over a split and fill a store, resumably.

:func:`extract_store` is the one entry the CLI, the demo and the benchmarks call (an
:class:`ExtractConfig`, a teacher binder and optionally a :class:`DaskExecutor`); :func:`extract_teacher`
is the single-process run over an already bound teacher. The parts live by concern:
:mod:`featstore.teacher` (the teacher contract and its binding to a dataset), :mod:`featstore.extract_checks`
(request checks), :mod:`featstore.store_lifecycle` (create, resume, finish) and
:mod:`featstore.chunk_engine` (compute and write chunks); :mod:`featstore.dask_extract` runs the same
chunks on dask workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from featstore.chunk_engine import extract_chunks
from featstore.codecs import DEFAULT_DTYPE
from featstore.datasets import Dataset
from featstore.errors import Interrupted, InvalidInput
from featstore.extract_checks import validate_request
from featstore.lock import writer_lock
from featstore.progress import progress as progress_bar
from featstore.store import local_path
from featstore.store_lifecycle import ExtractSummary, finish, open_or_create_store, summarise
from featstore.teacher import (
    DatasetRequest,
    TeacherBinder,
    TeacherBinding,
    TeacherLoader,
    TeacherSource,
    as_binder,
    bind_source,
    check_head_classes,
    resolve_image_size,
)

__all__ = [
    "DaskExecutor",
    "ExtractConfig",
    "ExtractSummary",
    "TeacherSource",
    "check_head_classes",
    "extract_store",
    "extract_teacher",
]


def extract_teacher(
    teacher: TeacherBinding | TeacherSource,
    dataset: Dataset | None,
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
    """Create (or resume) the store at ``url`` holding the teacher's embeddings of its dataset.

    Args:
        teacher: a :class:`TeacherBinding` (``dataset`` None), or a :class:`TeacherSource` that is bound to
            ``dataset`` here (:func:`featstore.teacher.bind_source`).
        dataset: the dataset a :class:`TeacherSource` runs over; None with a binding.
        url: the store's local path or fsspec URL.
        views: views per sample; view 0 is the identity view.
        dtype: the embeddings' storage dtype (featstore.codecs).
        chunk_rows: rows per chunk (None: a few MB per chunk, or a resumed store's own).
        batch_size: the teacher's batch size.
        seed: the seed every view's parameters are drawn from.
        device: where the teacher runs.
        overwrite: replace a store at ``url`` made from other inputs.
        progress: show a progress bar.

    Returns:
        What the run did (:class:`ExtractSummary`).

    Raises:
        InvalidInput: a bad argument, or a teacher that does not fit the dataset.
        StoreError: ``url`` holds something that is not a store, or a store made from other inputs (without
            ``overwrite``), or a write fails.
        StoreLocked: another process is writing the store.
        Interrupted: Ctrl-C; the chunks written so far are kept and a re-run resumes.
    """
    if not isinstance(teacher, TeacherBinding):
        if dataset is None:
            raise InvalidInput("extract_teacher needs the dataset a TeacherSource is run over")
        teacher = bind_source(teacher, dataset)
    validate_request(teacher, views=views, dtype=dtype, chunk_rows=chunk_rows, batch_size=batch_size)
    started = time.perf_counter()
    device = torch.device(device)
    teacher.to(device)
    with writer_lock(local_path(url)):
        store, resumed = open_or_create_store(
            teacher.source,
            teacher.dataset,
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
        finish(store)
    return summarise(store, computed=len(missing), seconds=time.perf_counter() - started, resumed=resumed)


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract: the one set of options (and their defaults) every extraction caller shares.

    Attributes:
        dataset: a dataset spec (``digits``, ``folder:DIR``, ...), so dask workers can load it themselves.
        out: the store's path or fsspec URL.
        split: the split to extract.
        views: views per sample; view 0 is the identity view.
        dtype: the embeddings' storage dtype (featstore.codecs).
        chunk_rows: rows per chunk (None: a few MB per chunk, :func:`featstore.store.default_chunk_rows`).
        batch_size: the teacher's batch size.
        seed: the seed every view's parameters are drawn from.
        device: where the teacher runs.
        overwrite: replace a store made from other inputs.
        progress: show a progress bar.
        image_size: render views at this size (datasets read from files; None: the teacher's).
        loader_workers: DataLoader processes decoding images (None: from the CPU count).
        skip_bad_samples: leave unreadable samples out (counted in the store) instead of stopping.
    """

    dataset: str
    out: str
    split: str = "train"
    views: int = 1
    dtype: str = DEFAULT_DTYPE
    chunk_rows: int | None = None
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True
    image_size: int | None = None
    loader_workers: int | None = None
    skip_bad_samples: bool = False

    def request(self) -> DatasetRequest:
        """Return the dataset request this extraction binds its teacher to."""
        return DatasetRequest(
            self.dataset,
            self.split,
            image_size=self.image_size,
            loader_workers=self.loader_workers,
            skip_bad_samples=self.skip_bad_samples,
        )


@dataclass(frozen=True)
class DaskExecutor:
    """Run extraction's chunks on dask workers: a LocalCluster of ``workers`` processes, or ``scheduler``.

    Attributes:
        workers: processes of a LocalCluster started for the run (None: from the CPU count).
        scheduler: the address of a running dask scheduler, used instead of a LocalCluster.
        chunks_per_task: store chunks one dask task computes.
    """

    workers: int | None = None
    scheduler: str | None = None
    chunks_per_task: int = 4


def extract_store(
    config: ExtractConfig, teacher: TeacherBinder | TeacherLoader, executor: DaskExecutor | None = None
) -> ExtractSummary:
    """Fill (or resume) ``config.out`` with the teacher's embeddings: the one extraction entry.

    The teacher is loaded and bound once in this process; with an executor each dask worker binds its own
    copy. Both give the same bytes.

    Args:
        config: what to extract.
        teacher: a picklable :class:`~featstore.teacher.TeacherBinder` (``distill.models.binding.ModelSpec``
            for any model spec), a zero-argument loader or a ``(function, argument)`` pair returning a
            :class:`TeacherSource` (featstore never imports distill, so the caller says how to load it).
        executor: run the chunks on dask workers; None for this process.

    Returns:
        What the run did (:class:`ExtractSummary`).

    Raises:
        FsdError: every refusal of :func:`extract_teacher`; with an executor, also those of
            :func:`featstore.dask_extract.extract_teacher_distributed`.
    """
    binder = as_binder(teacher)
    request = config.request()
    bound = binder.bind(request)
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
    if executor is None:
        return extract_teacher(bound, None, config.out, **options)
    from featstore.dask_extract import extract_teacher_distributed

    return extract_teacher_distributed(
        binder,
        config.dataset,
        config.split,
        config.out,
        workers=executor.workers,
        scheduler=executor.scheduler,
        chunks_per_task=executor.chunks_per_task,
        image_size=resolve_image_size(bound.source, request),
        skip_bad_samples=config.skip_bad_samples,
        bound=bound,
        **options,
    )
