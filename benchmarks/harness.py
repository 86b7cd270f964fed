"""What every throughput benchmark shares: sizes, timing, interleaving, machine info and synthetic data.

Why one module: each figure is a ratio of two timings taken in the same run on the same inputs, so the
subject scripts (``training``, ``stream``, ``extraction``, ``eval``) must time, interleave and build their
data the same way. Nothing here knows which sections exist; :mod:`benchmarks.run` does.

Data are synthetic (nothing is downloaded): uint8 noise images in the cifar-100-python layout, read back
through ``cifar100:DIR`` (so dask workers load them like any dataset); a randomly initialised teacher whose
BatchNorm statistics are calibrated on one batch; a store of random non-negative embeddings (the values do
not change the cost of a step); clustered, L2-normalised embeddings for retrieval.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

TEACHER_ARCH, STUDENT_ARCH = "resnet32x4", "resnet8x4"  # the CIFAR pair of docs/methods.md


@dataclass(frozen=True)
class Sizes:
    batch: int = 64  # RepDistiller's CIFAR batch
    train_samples: int = 50_000  # CIFAR-100 train size: the training/stream store
    views: int = 2
    warmup_rounds: int = 2
    rounds: int = 10
    stream_reps: int = 3
    extract_samples: int = 256  # extraction, dask and amortisation dataset
    extract_chunk_rows: int = 128  # = the extraction batch, so every teacher batch is full
    extract_batch: int = 128
    extract_reps: int = 3
    dask_reps: int = 3
    amort_epochs: int = 2
    amort_reps: int = 1
    eval_n: int = 40_000
    eval_dim: int = 512
    eval_classes: int = 1_000
    eval_reps: int = 1


FULL = Sizes()
# The smoke test's sizes: the smallest that still run every code path (two chunks, so dask has a task per
# worker; two training steps per epoch). The numbers mean nothing.
QUICK = Sizes(
    batch=8,
    train_samples=512,
    warmup_rounds=1,
    rounds=1,
    stream_reps=1,
    extract_samples=16,
    extract_chunk_rows=8,
    extract_batch=8,
    extract_reps=1,
    dask_reps=1,
    amort_epochs=1,
    eval_n=5_000,
    eval_dim=64,
    eval_classes=100,
)


@dataclass
class Context:
    """What the sections of one run share: the sizes, the device, the work folder and the synthetic inputs."""

    sizes: Sizes
    device: Any
    amp: bool
    work: Path
    teacher_path: Path | None = None
    teacher: Any = None
    train_dataset: Any = None
    train_store: Any = None
    ext_dataset: Any = None
    ext_store_url: str | None = None  # written by the extraction section, read by amortisation
    extract_seconds: float | None = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# -- timing --------------------------------------------------------------------------------------------------
class Clock:
    """Wall-clock reads that wait for the device first, so CUDA work is counted where it is issued."""

    def __init__(self, device) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def autocast(device, enabled: bool):
    """bf16 autocast on ``device`` when enabled (the baselines' equivalent of a run's ``--amp bf16``)."""
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class StepResult:
    seconds: float
    phases: dict[str, float]
    indices: np.ndarray  # the batch's sample ids: interleaved() checks every variant read the same rows


def interleaved(variants: dict[str, Callable[[], StepResult]], warmup: int, rounds: int) -> dict[str, Any]:
    """One step of every variant per round, the order rotated each round; the batches must agree.

    Rotating the order and taking per-round ratios cancels most of a shared machine's drifting load.
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    phases: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        seen: dict[str, np.ndarray] = {}
        for name in order:
            result = variants[name]()
            seen[name] = result.indices
            if r >= warmup:
                times[name].append(result.seconds)
                phases[name].append(result.phases)
        first = next(iter(seen.values()))
        if not all(np.array_equal(first, ids) for ids in seen.values()):
            raise RuntimeError(f"round {r}: the variants did not read the same batch")
        log(
            f"  round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''}: "
            + ", ".join(f"{n} {1e3 * times[n][-1] if r >= warmup else float('nan'):.0f} ms" for n in names)
        )
    return {"times": times, "phases": phases}


def endless(stream, steps_per_epoch: int | None = None) -> Iterator:
    """The stream's batches epoch after epoch, as a run's epoch loop draws them (``steps_per_epoch`` of each)."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from islice(stream, steps_per_epoch)
        epoch += 1


# -- machine -------------------------------------------------------------------------------------------------
def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_and_memory() -> tuple[str, float | None]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return cpu, mem_gib


def machine_info(device) -> dict[str, Any]:
    """Where and with what the figures were measured (RESULTS.md's "Machine and versions")."""
    import faiss
    import torch
    import zarr

    cpu, mem_gib = _cpu_and_memory()
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {
            "fsd": _version("fsd"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "faiss": getattr(faiss, "__version__", None),
            "zarr": zarr.__version__,
            "dask": _version("dask"),
            "distributed": _version("distributed"),
            "pytorch-metric-learning": _version("pytorch-metric-learning"),
        },
    }


# -- synthetic inputs ----------------------------------------------------------------------------------------
def write_cifar_like(root: Path, train: int, test: int, seed: int) -> str:
    """uint8 noise in the cifar-100-python layout (protocol-2 pickles, as the real files); returns the spec."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = (np.arange(n) % 100).astype(np.int64)
        with open(root / split, "wb") as handle:
            pickle.dump({b"data": data, b"fine_labels": labels}, handle, protocol=2)
    return f"cifar100:{root}"


def make_teacher(path: Path, dataset, seed: int, calibration_batch: int) -> None:
    """A random resnet32x4 teacher checkpoint; BN running statistics from one batch of identity views, so its
    embeddings have the scale of a trained network's (no float16 overflow in a store)."""
    import torch

    from distill.models import create_model
    from distill.models.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(seed)
    model_config = {"num_classes": dataset.num_classes, "in_channels": 3}
    model = create_model(TEACHER_ARCH, **model_config)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model.forward_features(dataset.get_images(np.arange(min(calibration_batch, len(dataset)))))
    model.eval()
    save_checkpoint(
        Checkpoint(
            kind="teacher",
            arch=TEACHER_ARCH,
            model_config=model_config,
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
            head_type="linear",
            embedding_dim=int(model.embedding_dim),
            num_classes=dataset.num_classes,
            dataset={
                "spec": dataset.spec,
                "split": dataset.split,
                "fingerprint": dataset.fingerprint(),
                "image_shape": list(dataset.image_shape),
            },
            extra={"note": "benchmark teacher: random weights, BN statistics from one batch"},
        ),
        path,
        overwrite=True,
    )


def write_random_store(url: str, teacher, dataset, views: int, seed: int):
    """A complete float16 store in extraction's default layout, with the views extraction would draw and random
    non-negative embeddings in place of the teacher's (a step costs the same whatever the values)."""
    from featstore.store_lifecycle import open_or_create_store
    from featstore.views import sample_views

    store, _ = open_or_create_store(
        teacher, dataset, url, views=views, dtype="float16", chunk_rows=None, seed=seed, overwrite=True
    )
    rng = np.random.default_rng(seed)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        rows = np.arange(start, stop)
        emb = np.abs(rng.standard_normal((len(rows), views, store.shape.dim), dtype=np.float32))
        store.write_chunk(chunk, emb, sample_views(dataset.view_policy, seed, rows, views))
    store.mark_complete()
    return store


def clustered_embeddings(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class centres N(0, I), samples centre + N(0, σ² I), L2-normalised (so PML's L2 search and fsd's cosine
    search rank identically)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = np.arange(n, dtype=np.int64) % classes
    sigma = 1.5 * (dim / 64) ** 0.3  # wider with D, so P@1 stays well inside (0, 1) at 64 and 512 dims
    x = centres[labels] + sigma * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def prepare(ctx: Context, train_data: bool, extract_data: bool) -> None:
    """Write the synthetic inputs the chosen sections need into ``ctx.work`` and load them into ``ctx``.

    The teacher is calibrated on the small extraction dataset whichever sections run, so the training store
    and the extraction store come from the same teacher.
    """
    from distill.models.checkpoint import load_teacher_source
    from featstore.datasets import load_dataset

    s = ctx.sizes
    if not (train_data or extract_data):
        return
    t0 = time.perf_counter()
    ext_spec = write_cifar_like(ctx.work / "cifar_small", s.extract_samples, 100, seed=1)
    ctx.ext_dataset = load_dataset(ext_spec, "train")
    ctx.teacher_path = ctx.work / "teacher.pt"
    make_teacher(ctx.teacher_path, ctx.ext_dataset, seed=0, calibration_batch=s.batch)
    ctx.teacher = load_teacher_source(ctx.teacher_path)
    if train_data:
        spec = write_cifar_like(ctx.work / "cifar_train", s.train_samples, 100, seed=0)
        ctx.train_dataset = load_dataset(spec, "train")
        ctx.train_store = write_random_store(
            str(ctx.work / "train.zarr"), ctx.teacher, ctx.train_dataset, s.views, seed=0
        )
    log(f"prepared synthetic data, teacher and store in {time.perf_counter() - t0:.1f} s")
