"""Dask clusters for distributed extraction: how many workers, their GPUs, and the cluster's lifecycle.

Each worker of a LocalCluster on CUDA is pinned to one GPU. A LocalCluster is started and shut down here; a
client of an existing scheduler never shuts that scheduler down. See :mod:`featstore.dask_extract` for what
runs on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from featstore.errors import InvalidInput

__all__ = ["connect", "local_cluster", "plan_workers", "visible_gpus"]


LOCAL_CLUSTER_OPTIONS: dict = {
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": None,
    "silence_logs": logging.CRITICAL,
    "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
}
"""How fsd starts a LocalCluster: one thread per worker process, on the loopback, no dashboard, quiet logs."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """List the GPU ids a worker can be pinned to.

    Returns:
        CUDA_VISIBLE_DEVICES' entries if set, else ``"0"`` .. ``"count-1"``; empty without CUDA.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def plan_workers(
    workers: int | None, scheduler: str | None, device: torch.device
) -> tuple[int | None, tuple[str, ...] | None]:
    """Decide the LocalCluster's size and the GPUs its workers are pinned to.

    Every argument check happens here, before anything is loaded or created.

    Args:
        workers: the processes asked for (None: one per visible GPU on CUDA, else one per usable CPU).
        scheduler: the address of an existing scheduler, or None.
        device: where the teachers run.

    Returns:
        The LocalCluster size (None with an external scheduler) and the GPU ids to pin its workers to
        (None unless ``device`` is ``cuda`` without an index).

    Raises:
        InvalidInput: both ``workers`` and ``scheduler``, a non-positive ``workers``, an empty address, or
            CUDA asked for with no CUDA device visible.
    """
    if workers is not None and scheduler is not None:
        raise InvalidInput(
            "give either --workers (start a local cluster) or --scheduler (use an existing one), not both"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0):
        raise InvalidInput(f"workers must be a positive number of worker processes, got {workers!r}")
    if scheduler is not None:
        if not str(scheduler).strip():
            raise InvalidInput("scheduler address is empty")
        return None, None
    gpus = None
    if device.type == "cuda" and device.index is None:
        gpus = tuple(visible_gpus())
        if not gpus:
            raise InvalidInput("device cuda was asked for but no CUDA device is visible")
    if workers is None:
        workers = len(gpus) if gpus else _usable_cpus()
    return workers, gpus


@contextlib.contextmanager
def connect(scheduler: str, timeout_s: float) -> Iterator[Any]:
    """Connect a client to an existing cluster; on exit close the client only, never the cluster.

    Args:
        scheduler: the scheduler's address, e.g. ``tcp://host:8786``.
        timeout_s: seconds to wait for it.

    Yields:
        The client.

    Raises:
        InvalidInput: the scheduler cannot be reached in time, or the address is malformed.
    """
    from distributed import Client

    try:
        client = Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, ValueError, TypeError) as exc:  # timeout / refused, malformed address
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"cannot reach the dask scheduler at {scheduler} within {timeout_s:g} s ({first})") from None
    with client:
        yield client


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (an ignored signal stays ignored in a child), then restore.

    Why: Ctrl-C goes to the whole process group, and every worker would print its own KeyboardInterrupt
    traceback. Only the driver handles it, and says how to resume.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Any]:
    """Start a LocalCluster of ``n_workers`` single-threaded processes; it and its client shut down on exit.

    Args:
        n_workers: the worker processes.

    Yields:
        The cluster's client.
    """
    from distributed import Client, LocalCluster

    with (
        _workers_ignore_ctrl_c(),
        LocalCluster(n_workers=n_workers, **LOCAL_CLUSTER_OPTIONS) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client
