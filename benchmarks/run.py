"""fsd's throughput benchmarks: every figure a ratio against a baseline measured in the same run.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--out-dir DIR] [--sections a,b,...]

Writes ``RESULTS.md`` (the figures against their goals, machine, versions, date) and ``run.json`` (every
number) into ``--out-dir`` (default: this folder) and prints the same markdown. In ``RESULTS.md`` it
replaces only the block between its own markers; other sections (``benchmarks/tar_at_far.py`` writes
``## Exact TAR@FAR at N = 20,000``) are kept.

Sections (``--sections``, default all):

* ``training`` — one training step of resnet8x4 (the CIFAR student of PAPER.md) on 32×32 inputs through the
  trainer's own pieces (StoreStream → render_views → TeacherSide.embed → DistillStep → backward → SGD step →
  schedule → loss logging, as in ``distill.training.student``): vanilla (a plain CE step, no store), store-KD,
  store-TH-KD, store-CRD (RepDistiller's 16,384 negatives), online-KD and online-TH-KD (resnet32x4 run
  every step over the same views), and the bare teacher forward. All variants read the *same* batches (same
  sample ids and view parameters, checked every round); one step of each per round, the order rotated every
  round, after warm-up rounds; figures are medians of per-round ratios.
* ``stream`` — StoreStream's rate over a whole epoch against a numpy memmap read of the same rows (same
  batches, same order; warm page cache for both), and against the rate store-KD training consumes rows.
* ``extraction`` — ``extract_teacher`` against the bare teacher forward over the same rendered views at the
  same batch size; then ``extract_teacher_distributed`` on a LocalCluster of 2 worker processes against 1.
* ``amortisation`` — whole ``train_student`` runs: k students from one store (one extraction + k store runs)
  against k online-teacher runs; k = 1, 3, 10 composed from the measured extraction and run times.
* ``eval`` — ``distill.evaluation.report.retrieval_report`` against pytorch-metric-learning's AccuracyCalculator
  (P@1, R-precision, MAP@R, k = max_bin_count) on the same clustered embeddings; values must agree to 1e-6.

Data are synthetic (no download): uint8 noise images written in the cifar-100-python layout and read through
``cifar100:DIR`` (so dask workers load them like any dataset); the teacher is a randomly initialised
resnet32x4 whose BatchNorm statistics are calibrated on one batch; the training store holds random
non-negative 256-d embeddings (values do not change the cost of a step). ``--quick`` shrinks every size for
the smoke test (tests/test_benchmarks_smoke.py); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

START = "<!-- benchmarks/run.py:start (generated; re-run the script to regenerate) -->"
END = "<!-- benchmarks/run.py:end -->"
TAR_SECTION = "## Exact TAR@FAR at N = 20,000"
SECTIONS = ("training", "stream", "extraction", "amortisation", "eval")
TEACHER_ARCH, STUDENT_ARCH = "resnet32x4", "resnet8x4"


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
QUICK = Sizes(
    batch=8,
    train_samples=512,
    warmup_rounds=1,
    rounds=1,
    stream_reps=1,
    extract_samples=32,
    extract_chunk_rows=16,
    extract_batch=16,
    extract_reps=1,
    dask_reps=1,
    amort_epochs=1,
    eval_n=5_000,
    eval_dim=64,
    eval_classes=100,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# -- environment ---------------------------------------------------------------------------------------------
class Clock:
    """Wall-clock reads that wait for the device first, so CUDA work is counted where it is issued."""

    def __init__(self, device) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def autocast(device, enabled: bool):
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def machine_info(device) -> dict[str, Any]:
    import faiss
    import torch
    import zarr

    def version(name: str) -> str | None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    info = {
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
            "fsd": version("fsd"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "faiss": getattr(faiss, "__version__", None),
            "zarr": zarr.__version__,
            "dask": version("dask"),
            "distributed": version("distributed"),
            "pytorch-metric-learning": version("pytorch-metric-learning"),
        },
    }
    return info


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
    from featstore.extract import open_or_create_store
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


def endless(stream) -> Iterator:
    """The stream's batches epoch after epoch, as the trainer's epoch loop draws them."""
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from stream
        epoch += 1


# -- training step throughput --------------------------------------------------------------------------------
@dataclass
class StepResult:
    seconds: float
    phases: dict[str, float]
    indices: np.ndarray


class StoreTrainer:
    """A store (or online-teacher) variant: fsd's own student run object, ``StudentRun``, driven one step at a
    time. Nothing of the trainer is rebuilt here, so the benchmark measures the code ``fsd train-student``
    runs; ``chunk_rows`` lays the online baseline's views out like the store's, so every variant reads the
    same batches."""

    def __init__(self, config, dataset, device, amp: bool, chunk_rows: int, total_steps: int) -> None:
        from dataclasses import replace as _replace

        from distill.training.run import StudentRun

        del dataset, total_steps  # the run loads its own dataset and sizes its schedule from its config
        self.run = StudentRun.build(_replace(config, amp="bf16" if amp else None), chunk_rows=chunk_rows)
        self.run.step.train()
        self.criterion, self.teacher = self.run.criterion, self.run.teacher
        self.batches = endless(self.run.stream)
        self.clock = Clock(device)

    def step(self) -> StepResult:
        t0 = self.clock()
        batch = next(self.batches)
        t1 = self.clock()
        stats = self.run.train_step(batch, clock=self.clock)
        t2 = self.clock()
        return StepResult(t2 - t0, {"stream": t1 - t0, **stats.phases}, batch.indices)


class VanillaTrainer:
    """The baseline: a plain CE step of the student on the same batches (same ids, same rendered views), with
    no store, no teacher head and no distillation loss. Its batches come from GeneratedViews, i.e. the views
    an augmentation pipeline would draw."""

    def __init__(
        self, dataset, device, amp: bool, batch: int, views: int, seed: int, chunk_rows: int, total_steps: int
    ) -> None:
        import torch

        from distill.models import create_model
        from distill.training.common import OptimConfig, make_optimizer, seed_everything
        from featstore.stream import GeneratedViews, StoreStream

        seed_everything(seed)
        self.student = (
            create_model(STUDENT_ARCH, num_classes=dataset.num_classes, in_channels=3, embedding_dim=256)
            .to(device)
            .train()
        )
        self.optimizer, self.scheduler = make_optimizer(list(self.student.parameters()), OptimConfig(), total_steps)
        source = GeneratedViews(dataset, views, seed=seed, chunk_rows=chunk_rows)
        self.batches = endless(StoreStream(source, batch, seed=seed))
        self.dataset, self.device, self.amp = dataset, device, amp
        self.clock = Clock(device)
        self.loss_sum = 0.0
        self.F = torch.nn.functional

    def step(self) -> StepResult:
        from featstore.views import render_views

        clock, dataset, device = self.clock, self.dataset, self.device
        t0 = clock()
        batch = next(self.batches)
        t1 = clock()
        x = render_views(dataset.get_images(batch.indices), batch.view_params, dataset.view_policy).to(device)
        y = batch.labels.to(device)
        t2 = clock()
        with autocast(device, self.amp):
            z = self.student.forward_features(x)
            loss = self.F.cross_entropy(self.student.head.training_logits(z, y), y)
        t3 = clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = clock()
        self.optimizer.step()
        self.scheduler.step()
        self.loss_sum += float(loss.detach()) * len(y)
        t5 = clock()
        return StepResult(
            t5 - t0,
            {
                "stream": t1 - t0,
                "render": t2 - t1,
                "teacher": 0.0,
                "forward": t3 - t2,
                "backward": t4 - t3,
                "optimizer+log": t5 - t4,
            },
            batch.indices,
        )


class TeacherForward:
    """The bare teacher cost per batch: forward_features of the same rendered batch, no grad, eval mode."""

    def __init__(self, model, dataset, device, amp: bool, batch: int, views: int, seed: int, chunk_rows: int) -> None:
        from featstore.stream import GeneratedViews, StoreStream

        self.model = model
        source = GeneratedViews(dataset, views, seed=seed, chunk_rows=chunk_rows)
        self.batches = endless(StoreStream(source, batch, seed=seed))
        self.dataset, self.device, self.amp = dataset, device, amp
        self.clock = Clock(device)

    def step(self) -> StepResult:
        import torch

        from featstore.views import render_views

        batch = next(self.batches)
        x = render_views(self.dataset.get_images(batch.indices), batch.view_params, self.dataset.view_policy).to(
            self.device
        )
        t0 = self.clock()
        with torch.no_grad(), autocast(self.device, self.amp):
            self.model.forward_features(x)
        t1 = self.clock()
        return StepResult(t1 - t0, {"teacher": t1 - t0}, batch.indices)


def interleaved(variants: dict[str, Callable[[], StepResult]], warmup: int, rounds: int) -> dict[str, Any]:
    """One step of every variant per round, the order rotated each round; the batches must agree."""
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


def crd_loss_seconds(trainer: StoreTrainer, batch: int, device, amp: bool, reps: int) -> float:
    """Forward + backward of the CRD term alone on one batch's shapes: its share of a step, whatever the student."""
    import torch

    from distill.losses import DistillInputs

    loss = trainer.criterion.losses["crd"]
    dim, n = trainer.teacher.dim, trainer.teacher.source.shape.num_samples
    clock, times = Clock(device), []
    for _ in range(reps + 1):
        inputs = DistillInputs(
            student_embedding=torch.randn(batch, dim, device=device, requires_grad=True),
            student_logits=torch.zeros(batch, 1, device=device),
            labels=torch.zeros(batch, dtype=torch.long, device=device),
            teacher_embedding=torch.randn(batch, dim, device=device),
            indices=torch.randint(0, n, (batch,), device=device),
        )
        t0 = clock()
        with autocast(device, amp):
            value = loss(inputs)
        value.backward()
        times.append(clock() - t0)
    return median(times[1:])  # the first call warms up


def bench_training(ctx: Context) -> dict[str, Any]:
    from distill.training.student import StudentConfig

    s, device = ctx.sizes, ctx.device
    dataset, store = ctx.train_dataset, ctx.train_store
    total_steps = (s.warmup_rounds + s.rounds) * 10
    base = StudentConfig(
        store=store.url,
        dataset=dataset.spec,
        out=ctx.work / "unused.pt",
        arch=STUDENT_ARCH,
        batch_size=s.batch,
        device=device.type,
        eval_split=None,
        progress=False,
    )
    online = replace(base, store=None, online_teacher=ctx.teacher_path, views=s.views, view_seed=0)
    trainers: dict[str, Any] = {
        "vanilla": VanillaTrainer(dataset, device, ctx.amp, s.batch, s.views, 0, store.chunk_rows, total_steps),
        "store-KD": StoreTrainer(replace(base, recipe="kd"), dataset, device, ctx.amp, store.chunk_rows, total_steps),
        "store-TH-KD": StoreTrainer(
            replace(base, recipe="th-kd"), dataset, device, ctx.amp, store.chunk_rows, total_steps
        ),
        "store-CRD": StoreTrainer(replace(base, recipe="crd"), dataset, device, ctx.amp, store.chunk_rows, total_steps),
        "online-KD": StoreTrainer(
            replace(online, recipe="kd"), dataset, device, ctx.amp, store.chunk_rows, total_steps
        ),
        "online-TH-KD": StoreTrainer(
            replace(online, recipe="th-kd"), dataset, device, ctx.amp, store.chunk_rows, total_steps
        ),
    }
    trainers["teacher-forward"] = TeacherForward(
        trainers["online-KD"].teacher.model, dataset, device, ctx.amp, s.batch, s.views, 0, store.chunk_rows
    )
    crd_negatives = trainers["store-CRD"].criterion.losses["crd"].k
    log(f"training: {', '.join(trainers)}; batch {s.batch}, {s.warmup_rounds} warm-up + {s.rounds} rounds")
    raw = interleaved({name: t.step for name, t in trainers.items()}, s.warmup_rounds, s.rounds)
    t = raw["times"]
    rounds = range(s.rounds)

    def per_round(fn: Callable[[int], float]) -> list[float]:
        return [fn(i) for i in rounds]

    ratios = {
        "store_kd_vs_vanilla": per_round(lambda i: t["vanilla"][i] / t["store-KD"][i]),
        "store_thkd_vs_vanilla": per_round(lambda i: t["vanilla"][i] / t["store-TH-KD"][i]),
        "store_crd_vs_vanilla": per_round(lambda i: t["vanilla"][i] / t["store-CRD"][i]),
        "ideal_speedup": per_round(lambda i: (t["teacher-forward"][i] + t["vanilla"][i]) / t["vanilla"][i]),
        "online_kd_vs_store_kd": per_round(lambda i: t["online-KD"][i] / t["store-KD"][i]),
        "online_thkd_vs_store_thkd": per_round(lambda i: t["online-TH-KD"][i] / t["store-TH-KD"][i]),
    }
    ratios["kd_speedup_efficiency"] = [a / b for a, b in zip(ratios["online_kd_vs_store_kd"], ratios["ideal_speedup"])]
    ratios["thkd_speedup_efficiency"] = [
        a / b for a, b in zip(ratios["online_thkd_vs_store_thkd"], ratios["ideal_speedup"])
    ]
    phase_medians = {name: {k: median([p[k] for p in ph]) for k in ph[0]} for name, ph in raw["phases"].items()}
    crd_alone = crd_loss_seconds(trainers["store-CRD"], s.batch, device, ctx.amp, max(3, s.rounds))
    return {
        "batch": s.batch,
        "train_samples": s.train_samples,
        "views": s.views,
        "warmup_rounds": s.warmup_rounds,
        "rounds": s.rounds,
        "crd_negatives": crd_negatives,
        "amp": ctx.amp,
        "step_seconds": t,
        "step_seconds_median": {n: median(v) for n, v in t.items()},
        "samples_per_second": {n: s.batch / median(v) for n, v in t.items()},
        "phase_seconds_median": phase_medians,
        "crd_loss_alone_seconds": crd_alone,
        "ratios_per_round": ratios,
        "ratios": {k: median(v) for k, v in ratios.items()},
    }


# -- stream --------------------------------------------------------------------------------------------------
def bench_stream(ctx: Context, training: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    from featstore.stream import StoreStream

    s, store = ctx.sizes, ctx.train_store
    n, v, d = store.shape.num_samples, store.shape.num_views, store.shape.dim
    # the memmap baseline holds the same rows uncompressed (float16 as stored, float32 views, int64 labels)
    mm_dir = ctx.work / "memmap"
    mm_dir.mkdir(exist_ok=True)
    emb = np.lib.format.open_memmap(mm_dir / "emb.npy", mode="w+", dtype=np.float16, shape=(n, v, d))
    par = np.lib.format.open_memmap(
        mm_dir / "views.npy", mode="w+", dtype=np.float32, shape=(n, v, store.shape.num_params)
    )
    lab = np.lib.format.open_memmap(mm_dir / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
    for chunk in range(store.num_chunks):
        a, b = store.chunk_bounds(chunk)
        e, y, p = store.read_chunk(chunk)
        emb[a:b], lab[a:b], par[a:b] = e.astype(np.float16), y, p
    for m in (emb, par, lab):
        m.flush()
    del emb, par, lab
    emb, par, lab = (np.load(mm_dir / f"{name}.npy", mmap_mode="r") for name in ("emb", "views", "labels"))

    stream = StoreStream(store, s.batch, seed=0)
    order: list[tuple[np.ndarray, np.ndarray]] = []

    def stream_epoch(record: bool = False) -> int:
        stream.set_epoch(0)  # every repetition reads epoch 0: exactly the recorded batches
        rows = 0
        for batch in stream:
            rows += len(batch.indices)
            if record:
                order.append((batch.indices, batch.view_ids))
        return rows

    def memmap_epoch() -> int:
        rows = 0
        for ids, views in order:
            torch.from_numpy(np.ascontiguousarray(emb[ids, views], dtype=np.float32))
            torch.from_numpy(np.asarray(lab[ids], dtype=np.int64))
            np.asarray(par[ids, views])
            rows += len(ids)
        return rows

    stream_epoch(record=True)  # records the batch order, warms the page cache
    memmap_epoch()
    stream_t, memmap_t = [], []
    for rep in range(s.stream_reps):
        for name in ("stream", "memmap") if rep % 2 == 0 else ("memmap", "stream"):
            started = time.perf_counter()
            rows = stream_epoch() if name == "stream" else memmap_epoch()
            (stream_t if name == "stream" else memmap_t).append(time.perf_counter() - started)
            assert rows == n
    per_rep = [m / st for st, m in zip(stream_t, memmap_t)]
    stream_rate = n / median(stream_t)
    out = {
        "rows": n,
        "views": v,
        "dim": d,
        "dtype": store.dtype,
        "chunk_rows": store.chunk_rows,
        "batch": s.batch,
        "stream_seconds": stream_t,
        "memmap_seconds": memmap_t,
        "stream_rows_per_s": stream_rate,
        "memmap_rows_per_s": n / median(memmap_t),
        "stream_vs_memmap": median(per_rep),
        "stream_vs_memmap_per_rep": per_rep,
    }
    if training is not None:
        consumed = training["samples_per_second"]["store-KD"]
        out["training_rows_per_s"] = consumed
        out["stream_vs_training"] = stream_rate / consumed
    log(f"stream: {stream_rate:,.0f} rows/s, memmap {out['memmap_rows_per_s']:,.0f} rows/s")
    return out


# -- extraction ----------------------------------------------------------------------------------------------
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
    ctx.ext_store_url = url
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


def bench_dask(ctx: Context) -> dict[str, Any]:
    import logging

    from distributed import Client, LocalCluster

    from distill.models.checkpoint import load_teacher_source
    from featstore.dask_extract import extract_teacher_distributed

    s = ctx.sizes
    times: dict[int, list[float]] = {1: [], 2: []}
    startup: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        addresses = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                )
            )
            client = stack.enter_context(Client(cluster, set_as_default=False))
            client.run(_warm_worker)
            startup[workers] = time.perf_counter() - t0
            addresses[workers] = cluster.scheduler_address
        for rep in range(s.dask_reps):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                url = str(ctx.work / f"dask{workers}.zarr")
                t0 = time.perf_counter()
                extract_teacher_distributed(
                    (load_teacher_source, str(ctx.teacher_path)),
                    ctx.ext_dataset.spec,
                    "train",
                    url,
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


# -- amortisation --------------------------------------------------------------------------------------------
def bench_amortisation(ctx: Context) -> dict[str, Any]:
    from distill.training.student import StudentConfig, train_student

    s = ctx.sizes
    if ctx.ext_store_url is None:
        raise RuntimeError("amortisation needs the extraction section's store")
    base = StudentConfig(
        store=ctx.ext_store_url,
        dataset=ctx.ext_dataset.spec,
        out=ctx.work / "amort.pt",
        arch=STUDENT_ARCH,
        recipe="kd",
        epochs=s.amort_epochs,
        batch_size=s.batch,
        eval_split=None,
        device=ctx.device.type,
        overwrite=True,
        progress=False,
    )
    online = replace(base, store=None, online_teacher=ctx.teacher_path, views=s.views, view_seed=0)
    times: dict[str, list[float]] = {"store": [], "online": []}
    for rep in range(s.amort_reps):
        for name in ("store", "online") if rep % 2 == 0 else ("online", "store"):
            clock = Clock(ctx.device)
            t0 = clock()
            train_student(base if name == "store" else online)
            times[name].append(clock() - t0)
        log(
            f"  amortisation rep {rep + 1}: store run {times['store'][-1]:.1f} s, online run {times['online'][-1]:.1f} s"
        )
    extract, store_run, online_run = ctx.extract_seconds, median(times["store"]), median(times["online"])
    ks = (1, 3, 10)
    return {
        "samples": len(ctx.ext_dataset),
        "views": s.views,
        "epochs": s.amort_epochs,
        "batch": s.batch,
        "recipe": "kd",
        "extract_seconds": extract,
        "store_run_seconds": times["store"],
        "online_run_seconds": times["online"],
        "total_seconds": {str(k): {"store": extract + k * store_run, "online": k * online_run} for k in ks},
        "speedup": {str(k): k * online_run / (extract + k * store_run) for k in ks},
    }


# -- eval vs pytorch-metric-learning -------------------------------------------------------------------------
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


def bench_eval(ctx: Context) -> dict[str, Any]:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from distill.evaluation import EmbeddingSet, retrieval_report
    from distill.evaluation.search import faiss_gpu_available

    s = ctx.sizes
    x, y = clustered_embeddings(s.eval_n, s.eval_dim, s.eval_classes, seed=0)
    use_gpu = ctx.device.type == "cuda" and faiss_gpu_available()
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"), k="max_bin_count", device=ctx.device
    )
    times: dict[str, list[float]] = {"fsd": [], "pml": []}
    values: dict[str, dict[str, float]] = {}
    for rep in range(s.eval_reps):
        for name in ("fsd", "pml") if rep % 2 == 0 else ("pml", "fsd"):
            t0 = time.perf_counter()
            if name == "fsd":
                r = retrieval_report(EmbeddingSet(x, y), use_gpu=use_gpu)
                values["fsd"] = {
                    "precision_at_1": r["precision_at_1"],
                    "r_precision": r["r_precision"],
                    "map_at_r": r["map_at_r"],
                }
            else:
                query = torch.from_numpy(x).to(ctx.device) if ctx.device.type == "cuda" else x
                r = calc.get_accuracy(query, y)
                values["pml"] = {
                    "precision_at_1": float(r["precision_at_1"]),
                    "r_precision": float(r["r_precision"]),
                    "map_at_r": float(r["mean_average_precision_at_r"]),
                }
            times[name].append(time.perf_counter() - t0)
        log(f"  eval rep {rep + 1}: fsd {times['fsd'][-1]:.1f} s, pml {times['pml'][-1]:.1f} s")
    diff = max(abs(values["fsd"][k] - values["pml"][k]) for k in values["fsd"])
    if diff > 1e-6:
        raise RuntimeError(f"fsd and pytorch-metric-learning disagree by {diff:.2e}: {values}")
    per_rep = [f / p for f, p in zip(times["fsd"], times["pml"])]
    return {
        "n": s.eval_n,
        "dim": s.eval_dim,
        "classes": s.eval_classes,
        "faiss_gpu": use_gpu,
        "fsd_seconds": times["fsd"],
        "pml_seconds": times["pml"],
        "fsd_vs_pml": median(per_rep),
        "values": values,
        "max_abs_difference": diff,
        "values_equal": True,
    }


# -- report --------------------------------------------------------------------------------------------------
@dataclass
class Figure:
    key: str
    name: str
    value: float | None
    goal: str  # "≥ 0.9", "≤ 0.5", or "—" (context, no goal)
    definition: str

    @property
    def met(self) -> bool | None:
        if self.value is None or self.goal == "—":
            return None
        op, bound = self.goal.split()
        return self.value >= float(bound) if op == "≥" else self.value <= float(bound)


def figures(r: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    tr, st, ex, dk, am, ev = (r.get(k) for k in ("training", "stream", "extraction", "dask", "amortisation", "eval"))
    if tr:
        q = tr["ratios"]
        out += [
            Figure(
                "store_kd_vs_vanilla",
                "store-KD / vanilla step throughput",
                q["store_kd_vs_vanilla"],
                "≥ 0.9",
                "t(vanilla step) / t(store-KD step), same batches",
            ),
            Figure(
                "kd_speedup_efficiency",
                "online-KD / store-KD, as a share of the ideal",
                q["kd_speedup_efficiency"],
                "≥ 0.95",
                "[t(online-KD)/t(store-KD)] / [(t(teacher fwd) + t(vanilla))/t(vanilla)]",
            ),
            Figure(
                "store_thkd_vs_vanilla",
                "store-TH-KD / vanilla step throughput",
                q["store_thkd_vs_vanilla"],
                "≥ 0.9",
                "t(vanilla) / t(store-TH-KD)",
            ),
            Figure(
                "thkd_speedup_efficiency",
                "online-TH-KD / store-TH-KD, as a share of the ideal",
                q["thkd_speedup_efficiency"],
                "≥ 0.95",
                "[t(online-TH-KD)/t(store-TH-KD)] / [(t(teacher fwd) + t(vanilla))/t(vanilla)]",
            ),
            Figure(
                "store_crd_vs_vanilla",
                f"store-CRD ({tr['crd_negatives']:,} negatives) / vanilla step throughput",
                q["store_crd_vs_vanilla"],
                "≥ 0.85",
                "t(vanilla) / t(store-CRD)",
            ),
        ]
    if ex:
        out.append(
            Figure(
                "extract_vs_bare",
                "extraction / bare teacher forward throughput",
                ex["extract_vs_bare"],
                "≥ 0.9",
                "t(bare forward of the same views, same batch) / t(extract_teacher)",
            )
        )
    if dk:
        out.append(
            Figure(
                "dask_2_vs_1",
                "dask extraction, 2 workers / 1 worker throughput",
                dk["speedup_2_vs_1"],
                "—",
                "t(1 worker) / t(2 workers), LocalCluster, 1 thread per worker",
            )
        )
    if st:
        out.append(
            Figure(
                "stream_vs_memmap",
                "StoreStream / numpy memmap read rate (same rows)",
                st["stream_vs_memmap"],
                "≥ 0.5",
                "t(memmap read of the epoch's batches) / t(stream epoch)",
            )
        )
        if "stream_vs_training" in st:
            out.append(
                Figure(
                    "stream_vs_training",
                    "StoreStream rate / rows store-KD training consumes per s",
                    st["stream_vs_training"],
                    "≥ 20",
                    "stream rows/s / (batch / t(store-KD step))",
                )
            )
    if ev:
        out.append(
            Figure(
                "eval_vs_pml",
                f"eval time / PML AccuracyCalculator ({ev['n']:,} × {ev['dim']})",
                ev["fsd_vs_pml"],
                "≤ 0.5",
                f"t(retrieval_report) / t(AccuracyCalculator); values equal (max |Δ| {ev['max_abs_difference']:.1e})",
            )
        )
    if am:
        for k, v in am["speedup"].items():
            out.append(
                Figure(
                    f"amortisation_k{k}",
                    f"amortisation, k = {k}: k online runs / (extraction + k store runs)",
                    v,
                    "—",
                    "total wall time, whole train_student runs",
                )
            )
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def limits_text(r: dict[str, Any]) -> list[str]:
    """'What limits each ratio': this run's phase breakdown, then the mechanism found by profiling (NOTES)."""
    lines: list[str] = []
    tr = r.get("training")
    if tr:
        ph = tr["phase_seconds_median"]
        van, kd, crd = ph["vanilla"], ph["store-KD"], ph["store-CRD"]

        def ms(p: dict[str, float], *keys: str) -> str:
            return f"{1e3 * sum(p[k] for k in keys):.1f}"

        own = ", ".join(f"{k} {ms(van, k)} vs {ms(kd, k)}" for k in ("stream", "render", "optimizer+log"))
        lines.append(
            f"- **store-KD (and TH-KD) / vanilla** — median phases of a step in this run (ms, vanilla vs "
            f"store-KD): forward+backward {ms(van, 'forward', 'backward')} vs {ms(kd, 'forward', 'backward')}, "
            f"{own}. " + NOTES["store"]
        )
        lines.append(
            f"- **online / store efficiency** — the teacher forward inside the online-KD step took "
            f"{1e3 * ph['online-KD']['teacher']:.0f} ms, the bare forward {1e3 * ph['teacher-forward']['teacher']:.0f}"
            " ms. " + NOTES["online"]
        )
        share = tr["crd_loss_alone_seconds"] / tr["step_seconds_median"]["vanilla"]
        lines.append(
            f"- **store-CRD / vanilla** — CRD's forward+backward {ms(crd, 'forward', 'backward')} ms vs "
            f"{ms(van, 'forward', 'backward')} ms vanilla; the CRD term alone ({tr['crd_negatives']:,} negatives, "
            f"forward + backward, timed separately) {1e3 * tr['crd_loss_alone_seconds']:.0f} ms = "
            f"{100 * share:.0f} % of a vanilla step. " + NOTES["crd"]
        )
    for key, title in (
        ("extraction", "extraction / bare forward"),
        ("dask", "dask 2 / 1 workers"),
        ("stream", "stream / memmap"),
        ("eval", "eval / PML"),
        ("amortisation", "amortisation"),
    ):
        if r.get(key):
            extra = ""
            if key == "dask":
                d = r["dask"]["cluster_startup_seconds"]
                extra = f"Cluster start-up, paid once and excluded: {fmt(d[1], 1)} s (1 worker), {fmt(d[2], 1)} s (2). "
            lines.append(f"- **{title}** — {extra}{NOTES[key]}")
    return lines


# The mechanism behind each ratio, from profiling the same code paths with cProfile and micro-benchmarks
# (batch 64, one thread, this 2-core machine under load); not re-measured by this script.
NOTES = {
    "store": "Profile: ≈ 98 % of both steps is the student's conv2d / batch_norm forward and the autograd backward. "
    "The store path's own work — the batch slice out of the prefetched buffer (chunks are read by a "
    "background thread, the chosen view of each row decoded per buffer group), the frozen teacher head on the stored embedding (64×256 @ 256×100) and "
    "the KD/TH terms — is about 1 % together. What is left of the gap is the shared machine's noise, which "
    "the per-round medians cancel only in part; there is nothing in fsd to fix for this ratio.",
    "online": "The online step is the store step plus that forward, so the efficiency equals t(vanilla)/t(store) "
    "up to noise: it inherits the store path's ~1 % and nothing else.",
    "crd": "Micro-profile of the term at K = 16,384 (negatives projected under torch.no_grad(), as CRD's memory "
    "bank — the fix the first profile of this script proposed, now in distill/losses/crd.py; it made the "
    "term ~30 % cheaper): gathering K float16 bank rows (~15 %), projecting them (K×256 @ 256×128, ~25 %), "
    "the two B×K similarity matrices and the mask (~35 %), the backward through the anchors (~25 %). All of "
    "it scales with K, not with the batch, and is inherent to projecting an exact bank every step; only a "
    "stale, cached projection would cut it further, which is what the exact bank exists to avoid — no "
    "further fix proposed. On a GPU the student step shrinks far more than this term, so its share grows.",
    "extraction": "Profile: 99.5 % of extract_teacher is the teacher's conv2d / batch_norm; view sampling, rendering, "
    "float16 encoding, the Blosc/zstd chunk write and the done-flag are the rest. Note that extraction's "
    "effective batch is min(batch size, chunk rows) because batches never cross a chunk: small stores "
    "get the default of N/16 rows per chunk and so small teacher batches (here chunk rows = batch).",
    "dask": "Two single-threaded workers against one on 2 cores that other jobs also use: the ideal is 2 and the "
    "cores' availability caps it. Workers load the teacher once (per-process cache) and write their chunks "
    "directly; the driver only validates, schedules and marks the store complete.",
    "stream": "The stream decodes only the view each row gets, checks finiteness on the stored bits and, on a "
    "local store, reads each chunk file and Blosc-decompresses it directly on up to four threads instead of "
    "through zarr's read pipeline (featstore.store._ChunkFiles; bit-identical, tested). Profile of an "
    "epoch of this store: chunk reads ≈ 55–65 ms through zarr (one concurrent call per buffer group) "
    "against ≈ 35–40 ms direct, of which Blosc/zstd decompression of the float16 chunks is ≈ 21 ms; view "
    "selection, shuffle and batching ≈ 25 ms. History of the ratio: 0.17 with one zarr call per chunk "
    "and array, 0.32–0.60 with the grouped zarr call (0.48 on a loaded machine), then the direct read. "
    "The prefetch thread overlaps reads with the consumer only when a second core is free, so the ratio "
    "still moves with the machine's load. Next step if needed: lz4 instead of zstd (12 vs 21 ms of "
    "decompression per epoch, compression 1.11 vs 1.17 on these values). The ratio that matters for "
    "training, stream rate over consumption, is in the thousands on this CPU.",
    "eval": "Profile at 10,000 × 512: FAISS' exact search is 88 % of fsd's time (the float64 norm in "
    "knn.l2_normalize most of the rest) and 66 % of PML's (which adds torch.allclose checks and mask "
    "building); the search's share grows with N, so the ratio tends to ~0.9–1 — both do the same "
    "N×N×D brute-force GEMM, which runs near this CPU's float32 peak. ≤ 0.5 needs less arithmetic or "
    "cheaper arithmetic with the same exact neighbours. Tried and measured (`benchmarks/eval_floor.py`, "
    'section "Exact retrieval: the floor on this machine" below): a symmetric upper-triangle search '
    "(each block of X·Xᵀ once, merged into the FAISS heaps of its rows and of its columns), with bfloat16 "
    "candidates and a certified exact float32 rerank. The bf16 half GEMM alone takes about a third of "
    "PML's time, but feeding every score to two heaps costs about as much again and the rerank adds "
    "~0.1, so the design's floor measured there is close to today's fused FAISS search (before the "
    "exact fallback for the ~1 % of queries its certificate does not cover): not worth a second, "
    "precision-dependent search path. float32 symmetric and a torch.topk merge were slower still. Not "
    "adopted on the CPU; on a GPU (tensor-core low precision, HBM gathers) the same design should pay, "
    "but no GPU was lent to this task. "
    "(At the issue's 100,000 × 512, `--sections eval --eval-n 100000` on this machine gave 1.00.)",
    "amortisation": "A store run costs a student step per batch, an online run a student step plus a teacher forward; "
    "the store side pays the extraction (views × N teacher forwards) once, so it wins once k × epochs "
    "exceeds the number of stored views. The runs include each run's start-up (dataset load, "
    "checkpoint and log writes).",
}


def markdown(r: dict[str, Any], figs: list[Figure]) -> str:
    m = r["meta"]
    mach = m["machine"]
    v = mach["versions"]
    device = (
        mach["gpu"]
        or f"CPU ({mach['cpu']}, {mach['usable_cores']} usable cores, {mach['torch_threads']} torch threads)"
    )
    lines = [
        START,
        "",
        "## Throughput figures (benchmarks/run.py)",
        "",
        (
            f"`python benchmarks/run.py{''.join(' ' + a for a in m['argv'])}` "
            f"on {mach['date_utc']}, device: **{device}**. Every figure is a median of per-round ratios measured in "
            "this one run against its baseline on the same batches; absolute times are context only. "
            + ("**The machine was shared with other jobs** " if mach["loadavg_start"][0] > 0.5 else "Machine load: ")
            + f"(load average {mach['loadavg_start']} at the start, {m['loadavg_end']} at the end, on "
            f"{mach['usable_cores']} cores), so single timings are noisy; the "
            "variants were interleaved round by round to cancel that noise in the ratios. Raw numbers: "
            "`run.json` beside this file."
        ),
        "",
    ]
    if m["quick"]:
        lines += ["**--quick run: tiny sizes, the numbers mean nothing (smoke test only).**", ""]
    lines += ["| figure | measured | goal | met |", "|---|---:|---:|:---:|"]
    for f in figs:
        met = {True: "met", False: "**not met**", None: "—"}[f.met]
        lines.append(f"| {f.name} | {fmt(f.value)} | {f.goal} | {met} |")
    tar = HERE / "tar_at_far.py"
    lines += [
        "",
        (
            f'Exact TAR@FAR at N = 20,000 (time and peak RSS): see the section "{TAR_SECTION[3:]}" below, '
            f"written by `benchmarks/tar_at_far.py`{'' if tar.exists() else ' (not present in this checkout)'}; "
            "this script does not duplicate it."
        ),
        "",
    ]
    lines += ["### Definitions", ""]
    lines += [f"- *{f.name}*: {f.definition}." for f in figs]
    lines += [
        (
            "- The online-teacher goal: an online step costs teacher + student, a store step ideally the student "
            "alone, so the ideal speed-up of store-KD over online-KD is (t_teacher + t_student) / t_student "
            "(t_student = the vanilla step, t_teacher = the bare teacher forward on the same batch, both from the "
            "same round). The figure is the measured speed-up t(online)/t(store) divided by that ideal: 1.0 "
            "means the store removed the teacher's whole cost and added nothing."
        ),
        "",
    ]
    tr = r.get("training")
    lines += ["### Sizes", ""]
    if tr:
        lines.append(
            f"- training: {TEACHER_ARCH} → {STUDENT_ARCH}, 32×32 inputs, batch {tr['batch']}, store of "
            f"{tr['train_samples']:,} samples × {tr['views']} views × 256 dims (float16, default chunk layout), "
            f"{tr['warmup_rounds']} warm-up + {tr['rounds']} timed rounds of one step per variant; CRD with "
            f"{tr['crd_negatives']:,} negatives; mixed precision {'on (bf16 autocast)' if tr['amp'] else 'off'}."
        )
    if r.get("stream"):
        st = r["stream"]
        lines.append(
            f"- stream: one epoch of that store ({st['rows']:,} rows, {st['chunk_rows']:,} rows per chunk), "
            f"batch {st['batch']}, {len(st['stream_seconds'])} alternating repetitions."
        )
    if r.get("extraction"):
        ex = r["extraction"]
        lines.append(
            f"- extraction: {ex['samples']:,} samples × {ex['views']} views, batch {ex['batch']}, "
            f"{ex['chunk_rows']} rows per chunk, {len(ex['extract_seconds'])} alternating repetitions."
        )
    if r.get("dask"):
        d = r["dask"]
        lines.append(
            f"- dask: {d['samples']:,} samples × 1 view on the CPU, {d['chunk_rows']} rows per chunk, one chunk per task, "
            f"clusters started (and worker imports warmed) before timing; {len(d['seconds_1_worker'])} "
            "alternating repetitions."
        )
    if r.get("amortisation"):
        a = r["amortisation"]
        lines.append(
            f"- amortisation: `train_student` (recipe kd, {a['epochs']} epoch(s), batch {a['batch']}) on "
            f"{a['samples']:,} samples; the store has {a['views']} views; k = 3 and 10 are composed from the "
            "measured extraction and run times (k × run + one extraction)."
        )
    if r.get("eval"):
        e = r["eval"]
        lines.append(
            f"- eval: {e['n']:,} × {e['dim']} float32, {e['classes']:,} classes, L2-normalised; FAISS "
            f"{'GPU' if e['faiss_gpu'] else 'CPU'} on both sides."
        )
        if e["n"] != 100_000:
            scale = (100_000 / e["n"]) ** 2 * (512 / e["dim"])
            lines.append(
                f"  The issue's size is 100,000 × 512 (the CUDA default). Both sides are O(N²·D): scaled "
                f"from this run, that size would take ≈ {fmt(scale * median(e['fsd_seconds']), 0)} s per side "
                "here, and several times that when the shared cores are busy, so the CPU default is "
                f"N = {e['n']:,} (`--eval-n 100000` runs the issue's size)."
            )
    lines += ["", "### Absolute times (context)", ""]
    if tr:
        lines += ["| variant | median step (ms) | samples/s |", "|---|---:|---:|"]
        for n, sec in tr["step_seconds_median"].items():
            lines.append(f"| {n} | {1e3 * sec:.0f} | {fmt(tr['samples_per_second'][n], 1)} |")
        lines.append("")
    ctx_lines = []
    if r.get("stream"):
        st = r["stream"]
        ctx_lines.append(
            f"- stream {fmt(st['stream_rows_per_s'])} rows/s, memmap {fmt(st['memmap_rows_per_s'])} rows/s"
            + (
                f", store-KD training consumes {fmt(st['training_rows_per_s'], 1)} rows/s"
                if "training_rows_per_s" in st
                else ""
            )
        )
    if r.get("extraction"):
        ex = r["extraction"]
        ctx_lines.append(
            f"- extraction {fmt(median(ex['extract_seconds']), 1)} s, bare forward "
            f"{fmt(median(ex['bare_forward_seconds']), 1)} s ({fmt(ex['teacher_forwards_per_s'], 1)} "
            "teacher forwards/s)"
        )
    if r.get("dask"):
        d = r["dask"]
        ctx_lines.append(
            f"- dask: 1 worker {fmt(median(d['seconds_1_worker']), 1)} s, 2 workers "
            f"{fmt(median(d['seconds_2_workers']), 1)} s"
        )
    if r.get("amortisation"):
        a = r["amortisation"]
        ctx_lines.append(
            f"- amortisation: extraction {fmt(a['extract_seconds'], 1)} s, store run "
            f"{fmt(median(a['store_run_seconds']), 1)} s, online run {fmt(median(a['online_run_seconds']), 1)} s; "
            "totals (store / online): "
            + ", ".join(
                f"k={k}: {fmt(t['store'], 0)} s / {fmt(t['online'], 0)} s" for k, t in a["total_seconds"].items()
            )
        )
    if r.get("eval"):
        e = r["eval"]
        vals = e["values"]["fsd"]
        ctx_lines.append(
            f"- eval: fsd {fmt(median(e['fsd_seconds']), 1)} s, PML {fmt(median(e['pml_seconds']), 1)} s; "
            f"P@1 {vals['precision_at_1']:.6f}, R-precision {vals['r_precision']:.6f}, MAP@R "
            f"{vals['map_at_r']:.6f} (both)"
        )
    lines += ctx_lines + ["", "### What limits each ratio", ""] + limits_text(r)
    lines += [
        "",
        "### Machine and versions",
        "",
        f"- {mach['platform']}, Python {mach['python']}, CPU {mach['cpu']} ({mach['usable_cores']} usable "
        f"cores), {mach['memory_gib']} GiB RAM" + (f", GPU {mach['gpu']}" if mach["gpu"] else ""),
        "- " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- total benchmark wall time {fmt(m['seconds'], 0)} s; sections: {', '.join(m['sections'])}",
        "",
        END,
    ]
    return "\n".join(lines)


def write_results_md(path: Path, block: str) -> None:
    """Replace our marked block; keep everything else (e.g. tar_at_far.py's section, which stays after ours)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        lines = text.split("\n")
        cut = 1 if lines and lines[0].startswith("# ") else 0
        text = "\n".join(lines[:cut] + [""] + block.split("\n") + [""] + lines[cut:])
    path.write_text(text.rstrip("\n") + "\n")


# -- driver --------------------------------------------------------------------------------------------------
@dataclass
class Context:
    sizes: Sizes
    device: Any
    amp: bool
    work: Path
    teacher_path: Path | None = None
    teacher: Any = None
    train_dataset: Any = None
    train_store: Any = None
    ext_dataset: Any = None
    ext_store_url: str | None = None
    extract_seconds: float | None = None


def prepare(ctx: Context, sections: list[str]) -> None:
    from distill.models.checkpoint import load_teacher_source
    from featstore.datasets import load_dataset

    s = ctx.sizes
    need_train = bool({"training", "stream"} & set(sections))
    need_ext = bool({"extraction", "amortisation"} & set(sections))
    if not (need_train or need_ext):
        return
    t0 = time.perf_counter()
    ext_spec = write_cifar_like(ctx.work / "cifar_small", s.extract_samples, 100, seed=1)
    ctx.ext_dataset = load_dataset(ext_spec, "train")
    ctx.teacher_path = ctx.work / "teacher.pt"
    make_teacher(ctx.teacher_path, ctx.ext_dataset, seed=0, calibration_batch=s.batch)
    ctx.teacher = load_teacher_source(ctx.teacher_path)
    if need_train:
        spec = write_cifar_like(ctx.work / "cifar_train", s.train_samples, 100, seed=0)
        ctx.train_dataset = load_dataset(spec, "train")
        ctx.train_store = write_random_store(
            str(ctx.work / "train.zarr"), ctx.teacher, ctx.train_dataset, s.views, seed=0
        )
    log(f"prepared synthetic data, teacher and store in {time.perf_counter() - t0:.1f} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from distill.models.inference import select_device

    started = time.perf_counter()
    device = select_device(args.device)
    sizes = QUICK if args.quick else FULL
    if args.eval_n:
        sizes = replace(sizes, eval_n=args.eval_n)
    elif device.type == "cuda" and not args.quick:
        sizes = replace(sizes, eval_n=100_000)
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = set(sections) - set(SECTIONS) - {"dask"}
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    if "extraction" in sections and "dask" not in sections and not args.no_dask:
        sections.insert(sections.index("extraction") + 1, "dask")
    amp = device.type == "cuda" and not args.no_amp
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "meta": {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "argv": sys.argv[1:],
            "machine": machine_info(device),
            "sections": sections,
        }
    }
    work = Path(tempfile.mkdtemp(prefix="fsd-bench-", dir=args.workdir))
    try:
        ctx = Context(sizes, device, amp, work)
        prepare(ctx, sections)
        for name in sections:
            log(f"section {name} ...")
            t0 = time.perf_counter()
            if name == "training":
                results["training"] = bench_training(ctx)
            elif name == "stream":
                results["stream"] = bench_stream(ctx, results.get("training"))
            elif name == "extraction":
                results["extraction"] = bench_extraction(ctx)
            elif name == "dask":
                results["dask"] = bench_dask(ctx)
            elif name == "amortisation":
                if ctx.ext_store_url is None:
                    results["extraction"] = bench_extraction(ctx)
                results["amortisation"] = bench_amortisation(ctx)
            elif name == "eval":
                results["eval"] = bench_eval(ctx)
            log(f"section {name}: {time.perf_counter() - t0:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; the numbers mean nothing)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md and run.json go")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask 2-vs-1 worker comparison")
    parser.add_argument("--no-amp", action="store_true", help="on CUDA, train in float32 instead of bf16 autocast")
    parser.add_argument("--eval-n", type=int, default=None, help="eval embeddings (default 40,000 CPU, 100,000 CUDA)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds of the training section")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in this process (default: 1 on the CPU, torch's on CUDA)",
    )
    parser.add_argument("--workdir", default=None, help="parent of the temporary work folder")
    args = parser.parse_args(argv)
    results = run(args)
    figs = figures(results)
    results["figures"] = [{**asdict(f), "met": f.met} for f in figs]
    block = markdown(results, figs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "run.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    write_results_md(args.out_dir / "RESULTS.md", block)
    print(block)
    log(f"wrote {args.out_dir / 'RESULTS.md'} and {args.out_dir / 'run.json'}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
