"""Distributed extraction: the same chunks as :func:`featstore.extract.extract_teacher`, computed by dask workers.

The driver (this process) loads the teacher and the dataset once to validate the request and to create
(or resume) the store under the writer lock, exactly as the single-process path does. It then submits
one task per group of ``chunks_per_task`` missing chunks. A task runs in a worker process: it loads the
teacher and the dataset through a per-process cache (so each worker loads them once, however many tasks
it runs), opens the store and calls :func:`featstore.chunk_engine.extract_chunks` for its chunks, which writes
them straight to the store and flags each one done. Nothing about a chunk depends on where or when it
was computed, so the store is bit-identical to a single-process run; a retried task or a task that dask
re-runs after losing a worker rewrites the same bytes. At the end the driver checks that no chunk is
missing and marks the store complete.

Clusters (:mod:`featstore.dask_cluster`):

* ``workers=N`` starts a :class:`distributed.LocalCluster` of N worker *processes* with one thread each
  (torch is also set to one intra-op thread per worker, so N workers use about N cores) and shuts it down
  at the end, also on errors. Its scheduler listens on 127.0.0.1 only, with no dashboard, and its log
  output is silenced: a task's error reaches the caller as the task's own exception (an ``FsdError`` stays
  one), a dead worker as a :class:`StoreError` saying the store can be resumed.
* ``scheduler=ADDR`` connects to an existing scheduler (e.g. ``tcp://host:8786``) and never shuts it
  down. Its workers must be able to import ``fsd``, read the teacher checkpoint and the dataset, and
  write the store: a local path works for a LocalCluster on this machine; for a remote cluster use a
  shared filesystem (absolute paths) or an fsspec URL for the store. The writer lock only guards local
  stores (see :mod:`featstore.lock`).
* GPU: with a CUDA ``device`` and neither option, one worker per visible GPU is started; every worker
  of a LocalCluster started for a CUDA device (``cuda`` without an index) is pinned to one GPU by
  setting ``CUDA_VISIBLE_DEVICES`` in its process before CUDA is initialised (round-robin when there are
  more workers than GPUs). Workers of an external cluster are not pinned (use dask-cuda for that).

The teacher is given by the caller (``featstore`` never imports ``distill``) as a
:class:`~featstore.teacher.TeacherBinder` — ``distill.models.binding.ModelSpec`` for any model spec — or as a
loader of a :class:`~featstore.teacher.TeacherSource` (a zero-argument callable, or a ``(function,
argument)`` pair such as ``(distill.models.checkpoint.load_teacher_source, "/abs/teacher.pt")``). It is
pickled to the workers, so it must be picklable: a module-level function plus plain arguments is the safe
choice. The driver binds the teacher once (or takes the binding its caller made); each worker binds its own
copy and checks that it has the checkpoint hash, and the dataset the fingerprint, that the driver put in
the store.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featstore.chunk_engine import extract_chunks
from featstore.codecs import DEFAULT_DTYPE
from featstore.dask_cluster import connect, local_cluster, plan_workers, visible_gpus
from featstore.datasets import Dataset, LoadOptions, load_dataset
from featstore.errors import ENVIRONMENT_ERRNOS, Interrupted, InvalidInput, StoreError
from featstore.extract_checks import validate_request
from featstore.lock import writer_lock
from featstore.progress import progress as progress_bar
from featstore.store import FeatureStore, local_path, open_store
from featstore.store_lifecycle import ExtractSummary, finish, open_or_create_store, summarise
from featstore.teacher import (
    DatasetRequest,
    TeacherBinder,
    TeacherBinding,
    TeacherLoader,
    as_binder,
    bind_source,
    resolve_image_size,
)

TASK_RETRIES = 2  # a failed task is tried this many more times before the run fails
CONNECT_TIMEOUT_S = 5.0  # how long to wait for an external scheduler before refusing


@dataclass(frozen=True)
class _Job:
    """Everything a worker task needs, picklable (no model, no dataset, no open store)."""

    binder: TeacherBinder  # loads the teacher and binds it to ``request`` in the worker
    binder_token: str  # identifies the binder in the per-process cache
    request: DatasetRequest  # the dataset, at the size the driver bound it to, decoded in-process
    teacher_sha256: str  # what the store records; a worker's teacher must match it
    dataset_fingerprint: str
    url: str  # absolute for local stores: workers need not share the driver's working directory
    seed: int
    batch_size: int
    device: str
    gpus: tuple[str, ...] | None  # pin worker k to gpus[k % len(gpus)] (LocalCluster on CUDA only)


# -- per-process worker state ---------------------------------------------------------------------------
# One entry each: a worker keeps the bound teacher of its current job and its dataset, and a long-lived
# external worker that moves on to another job drops the old ones instead of accumulating them.
_CACHE_LOCK = threading.Lock()
_BOUND: tuple[tuple, TeacherBinding] | None = None
_DATASET: tuple[tuple, Dataset] | None = None
_PREPARED: tuple | None = None
LOADS: Counter = Counter()  # loads done by this process, by kind ("teacher", "dataset"): for tests/diagnostics


def load_counts() -> dict[str, int]:
    """Count the teachers and datasets this process loads (``client.run(load_counts)`` asks every worker).

    Returns:
        ``{"teacher": n, "dataset": m}`` (kinds never loaded are absent).
    """
    return dict(LOADS)


def _worker_index() -> int:
    from distributed import get_worker

    name = get_worker().name
    try:
        return int(name)
    except (TypeError, ValueError):  # a named worker of someone else's cluster: any stable spread will do
        return sum(str(name).encode())


def _prepare_process(gpus: tuple[str, ...] | None) -> None:
    """Once per worker process: one torch thread (workers are the parallelism) and, on CUDA, the GPU pin."""
    global _PREPARED
    if _PREPARED == (gpus,):
        return
    torch.set_num_threads(1)
    if gpus:
        if torch.cuda.is_initialized():  # pragma: no cover - needs a GPU; too late to pin by environment
            raise StoreError("cannot pin this worker to a GPU: CUDA was initialised before the first task")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[_worker_index() % len(gpus)]
    _PREPARED = (gpus,)


def _cached_binding(job: _Job) -> TeacherBinding:
    """Return this worker's teacher bound to the job's dataset.

    The teacher is loaded once per job and process, the dataset once per dataset, and both are checked
    against the provenance the driver put in the store.
    """
    global _BOUND
    key = (job.binder_token, job.teacher_sha256, job.dataset_fingerprint, job.device)
    if _BOUND is None or _BOUND[0] != key:
        _BOUND = None  # free the previous one before loading the next
        source = job.binder.load()
        LOADS["teacher"] += 1
        if source.checkpoint_sha256 != job.teacher_sha256:
            raise StoreError(
                f"a worker loaded a teacher with checkpoint sha256 {source.checkpoint_sha256[:12]}…, "
                f"the store was made from {job.teacher_sha256[:12]}… (did the checkpoint change?)"
            )
        dataset = _cached_dataset(job, resolve_image_size(source, job.request))
        _BOUND = (key, bind_source(source, dataset).to(job.device))
    return _BOUND[1]


def _cached_dataset(job: _Job, image_size: int | None) -> Dataset:
    """Return the job's dataset, decoded in this worker and kept across jobs over the same data.

    Decoded in the worker itself: the dask workers are the parallelism and, being daemons, cannot start
    DataLoader processes.
    """
    global _DATASET
    request = job.request
    key = (request.spec, request.split, image_size, request.skip_bad_samples, job.dataset_fingerprint)
    if _DATASET is None or _DATASET[0] != key:
        _DATASET = None
        options = LoadOptions(workers=0, skip_bad_samples=request.skip_bad_samples)
        dataset = load_dataset(request.spec, request.split, image_size=image_size, options=options)
        LOADS["dataset"] += 1
        if dataset.fingerprint() != job.dataset_fingerprint:
            raise StoreError(
                f"a worker sees dataset {request.spec!r} ({request.split}) with another fingerprint "
                "than the driver: workers must read the same data"
            )
        _DATASET = (key, dataset)
    return _DATASET[1]


def _extract_task(job: _Job, chunks: list[int]) -> int:
    """Worker side: compute and write ``chunks`` (each flagged done after it is written); returns their count."""
    with _CACHE_LOCK:
        _prepare_process(job.gpus)
        bound = _cached_binding(job)
    store = open_store(job.url, require_complete=False, writable=True)
    device = torch.device(job.device)
    extract_chunks(store, chunks, bound, seed=job.seed, batch_size=job.batch_size, device=device)
    return len(chunks)


# -- driver side ----------------------------------------------------------------------------------------
def _run_tasks(client: Any, job: _Job, missing: list[int], chunks_per_task: int, progress: bool) -> None:
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    run_id = uuid.uuid4().hex[:12]
    groups = [missing[i : i + chunks_per_task] for i in range(0, len(missing), chunks_per_task)]
    futures = [
        client.submit(_extract_task, job, group, key=f"fsd-extract-{run_id}-{k}", retries=TASK_RETRIES, pure=False)
        for k, group in enumerate(groups)
    ]
    try:
        with progress_bar(total=len(missing), desc="extract-teacher", unit="chunk", enabled=progress) as bar:
            for future in as_completed(futures, loop=client.loop):
                bar.update(future.result())  # re-raises the task's own exception (an FsdError stays one)
    except (KilledWorker, CancelledError) as exc:
        raise StoreError(
            f"distributed extraction of {job.url} failed: {type(exc).__name__}: {exc}; the chunks "
            "written so far are kept, re-run the same command to resume"
        ) from None
    except OSError as exc:  # a worker's disk full / read-only store, re-raised here after its retries
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        raise StoreError(
            f"a worker writing {job.url} failed ({exc.strerror or exc}); the chunks written so far are kept — fix "
            "the cause and re-run the same command to resume"
        ) from None
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the chunks of {job.url} written so far are kept: re-run the same command to resume"
        ) from None
    finally:
        client.cancel(futures)  # nothing of this run keeps going on a shared cluster after we stop


def extract_teacher_distributed(
    teacher_loader: TeacherBinder | TeacherLoader,
    dataset_spec: str,
    split: str,
    url: str | Path,
    *,
    views: int = 1,
    dtype: str = DEFAULT_DTYPE,
    chunk_rows: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    chunks_per_task: int = 4,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    image_size: int | tuple[int, int] | None = None,
    skip_bad_samples: bool = False,
    bound: TeacherBinding | None = None,
) -> ExtractSummary:
    """Create (or resume) the store at ``url`` like :func:`featstore.extract.extract_teacher`, on dask workers.

    The chunks are computed by a LocalCluster of ``workers`` processes, or the cluster at ``scheduler``. The
    result is bit-identical to the single-process run.

    Args:
        teacher_loader: a :class:`~featstore.teacher.TeacherBinder` or a loader of a
            :class:`~featstore.teacher.TeacherSource`; it is pickled to the workers.
        dataset_spec: the dataset spec, which every worker loads itself.
        split: the split to extract.
        url: the store's local path or fsspec URL (the workers must reach it).
        views: views per sample; view 0 is the identity view.
        dtype: the embeddings' storage dtype.
        chunk_rows: rows per chunk (None: the default, or a resumed store's own).
        batch_size: the teacher's batch size.
        seed: the seed every view's parameters are drawn from.
        device: where the teachers run; CUDA pins each worker of a LocalCluster to one GPU.
        overwrite: replace a store made from other inputs.
        progress: show a progress bar.
        workers: processes of a LocalCluster started for the run (None: from the device and CPU count).
        scheduler: the address of a running dask scheduler, used instead of a LocalCluster.
        chunks_per_task: store chunks one dask task computes.
        connect_timeout: seconds to wait for ``scheduler``.
        image_size: the size views of a dataset read from files render at.
        skip_bad_samples: leave unreadable samples out rather than stop.
        bound: the driver's binding when the caller has made one already.

    Returns:
        What the run did (:class:`~featstore.store_lifecycle.ExtractSummary`).

    Raises:
        InvalidInput: bad options (``workers <= 0``, both ``workers`` and ``scheduler``, an unreachable
            scheduler), before anything is created; or a teacher that does not fit the dataset.
        StoreError: a store made from other inputs, a dead worker or a failed write (the chunks written are
            kept and a re-run resumes), or a worker whose teacher or dataset differs from the driver's.
        Interrupted: Ctrl-C; the chunks written so far are kept.
    """
    started = time.perf_counter()
    device = torch.device(device)
    n_workers, gpus = plan_workers(workers, scheduler, device)
    if isinstance(chunks_per_task, bool) or not isinstance(chunks_per_task, int) or chunks_per_task <= 0:
        raise InvalidInput(f"chunks-per-task must be positive, got {chunks_per_task!r}")
    binder = as_binder(teacher_loader)
    request = DatasetRequest(dataset_spec, split, image_size=image_size, skip_bad_samples=skip_bad_samples)
    teacher = bound if bound is not None else binder.bind(request)  # loaded once in this process
    validate_request(teacher, views=views, dtype=dtype, chunk_rows=chunk_rows, batch_size=batch_size)
    from dask.base import tokenize

    local = local_path(str(url))
    job = _Job(
        binder=binder,
        binder_token=tokenize(binder),
        request=request.in_process(),
        teacher_sha256=teacher.source.checkpoint_sha256,
        dataset_fingerprint=teacher.dataset.fingerprint(),
        url=str(local.absolute()) if local is not None else str(url),
        seed=seed,
        batch_size=batch_size,
        device=str(device),
        gpus=gpus,
    )
    plan = _Plan(str(url), n_workers, scheduler, connect_timeout, chunks_per_task, progress)
    layout = {"views": views, "dtype": dtype, "chunk_rows": chunk_rows, "seed": seed, "overwrite": overwrite}
    store, resumed, computed = _run_job(job, teacher, plan, layout)
    return summarise(store, computed=computed, seconds=time.perf_counter() - started, resumed=resumed)


@dataclass(frozen=True)
class _Plan:
    """Where and how the tasks of one distributed run go."""

    url: str  # as the caller gave it (the store is created and finished here)
    n_workers: int | None  # LocalCluster size; None with an external scheduler
    scheduler: str | None
    connect_timeout: float
    chunks_per_task: int
    progress: bool


def _run_job(job: _Job, teacher: TeacherBinding, plan: _Plan, layout: dict[str, Any]) -> tuple[FeatureStore, bool, int]:
    """Create or resume the store under the writer lock, run the missing chunks on the cluster, finish it.

    Returns the store, whether it is resumed, and the chunks computed. The lock, the store and the cluster
    share one ExitStack, so their order is kept in one place.
    """
    url = plan.url
    with contextlib.ExitStack() as stack:
        # An external scheduler is reached before the store is touched, so an unreachable one changes nothing.
        client = None
        if plan.scheduler is not None:
            client = stack.enter_context(connect(plan.scheduler, plan.connect_timeout))
        with writer_lock(local_path(url)):
            compute = {"batch_size": job.batch_size, "device": torch.device(job.device).type}
            store, resumed = open_or_create_store(teacher.source, teacher.dataset, url, **layout, compute=compute)
            del teacher  # the workers bind their own; the driver needed only the metadata
            missing = store.missing_chunks()
            if missing:
                if client is None:  # started only when there is work to do
                    client = stack.enter_context(local_cluster(plan.n_workers))
                _run_tasks(client, job, missing, plan.chunks_per_task, plan.progress)
            store = open_store(url, require_complete=False, writable=True)  # what the workers wrote
            still_missing = store.missing_chunks()
            if still_missing:
                raise StoreError(
                    f"distributed extraction left chunks {still_missing[:10]} of {url} unwritten; "
                    "re-run the same command to resume"
                )
            finish(store)
    return store, resumed, len(missing)


__all__ = ["extract_teacher_distributed", "load_counts", "plan_workers", "visible_gpus"]
