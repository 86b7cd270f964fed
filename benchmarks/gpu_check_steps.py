"""The checks of :mod:`benchmarks.gpu_check`, one function each, run in a child process on a CUDA machine.

Each function takes the shared work folder (the data and models that ``prepare`` wrote) and returns a small
dict of figures; raising is a failed check (the parent records the traceback and goes on). The CLI is driven
as a user drives it (``python -m cli.main …``), so what is proven is the shipped path, not a test double.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGES, SIZE, CLASSES = 1536, 32, 16


def fsd(*args: str, env: dict[str, str] | None = None) -> float:
    """Run one fsd command; its wall time (s). A failing command raises with its stderr."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"fsd {args[0]} failed ({done.returncode}): {done.stderr[-1500:]}")
    return time.perf_counter() - t0


def spec(work: Path) -> str:
    return f"folder:{work / 'jpegs'}?size={SIZE}"


def prepare(work: Path) -> dict[str, Any]:
    from benchmarks.data_pipeline import make_jpegs

    make_jpegs(work / "jpegs", IMAGES, classes=CLASSES, low=32, high=64)
    seconds = fsd("train-teacher", "--dataset", spec(work), "--out", str(work / "teacher.pt"), "--epochs", "1")
    return {"images": IMAGES, "teacher_s": round(seconds, 2)}


def _extract(work: Path, out: str, *extra: str) -> float:
    return _extract_with(work, str(work / "teacher.pt"), out, *extra)


def _extract_with(work: Path, teacher: str, out: str, *extra: str) -> float:
    args = ["extract-teacher", "--teacher", teacher, "--dataset", spec(work), "--out", out]
    return fsd(*args, "--views", "2", "--device", "cuda", "--overwrite", "--quiet", *extra)


def extract_cuda(work: Path) -> dict[str, Any]:
    seconds = _extract(work, str(work / "store.zarr"))
    return {"seconds": round(seconds, 2), "images_per_s": round(2 * IMAGES / seconds, 1), "views": 2}


def extract_dask_gpu(work: Path) -> dict[str, Any]:
    seconds = _extract(work, str(work / "store_dask.zarr"), "--workers", "1")
    import featstore

    a = featstore.open_store(str(work / "store.zarr")).read_rows(0, 64)[0]
    b = featstore.open_store(str(work / "store_dask.zarr")).read_rows(0, 64)[0]
    return {"seconds": round(seconds, 2), "same_bytes_as_one_process": bool(np.array_equal(a, b))}


def _train(work: Path, name: str, *extra: str, epochs: int = 1) -> dict[str, Any]:
    out = work / f"{name}.pt"
    args = ["train-student", "--dataset", spec(work), "--out", str(out), "--epochs", str(epochs)]
    args += ["--batch-size", "128", "--eval-split", "none", "--device", "cuda", "--overwrite", "--quiet", *extra]
    seconds = fsd(*args)
    log = json.loads(out.with_suffix(".log.json").read_text()) if out.with_suffix(".log.json").exists() else {}
    epochs_log = log.get("epochs", log if isinstance(log, list) else [])
    return {"seconds": round(seconds, 2), "epoch_s": [e.get("seconds") for e in epochs_log if isinstance(e, dict)]}


def train_fp16(work: Path) -> dict[str, Any]:
    return _train(work, "student_fp16", "--store", str(work / "store.zarr"), "--recipe", "th-kd", "--amp", "fp16")


def train_bf16(work: Path) -> dict[str, Any]:
    return _train(work, "student_bf16", "--store", str(work / "store.zarr"), "--recipe", "kd", "--amp", "bf16")


def step_time(work: Path) -> dict[str, Any]:
    """Per-step time of store-KD and of vanilla CE training, from the last of 2 epochs (warm)."""
    steps = -(-IMAGES // 128)
    kd = _train(work, "student_kd", "--store", str(work / "store.zarr"), "--recipe", "kd", epochs=2)
    vanilla = _train(work, "student_vanilla", "--store", str(work / "store.zarr"), "--recipe", "vanilla", epochs=2)
    kd_s, van_s = kd["epoch_s"][-1] / steps, vanilla["epoch_s"][-1] / steps
    return {"kd_step_s": kd_s, "vanilla_step_s": van_s, "kd_samples_per_s": 128 / kd_s, "batch": 128}


def stream(work: Path) -> dict[str, Any]:
    import featstore

    store = featstore.open_store(str(work / "store.zarr"))
    s = featstore.StoreStream(store, batch_size=128, shuffle=True, seed=0)
    t0, rows = time.perf_counter(), 0
    for epoch in range(3):
        s.set_epoch(epoch)
        for batch in s:
            rows += len(batch.indices) if hasattr(batch, "indices") else 128
    seconds = time.perf_counter() - t0
    return {"samples_per_s": rows / seconds, "rows": rows}


def ddp_nccl(work: Path) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = torch.nn.Linear(64, 16).cuda()
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            ddp(torch.randn(32, 64, device="cuda")).square().mean().backward()
            opt.step()
        total = torch.ones(1, device="cuda")
        dist.all_reduce(total)
        backend = dist.get_backend()
    finally:
        dist.destroy_process_group()
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    out = work / "student_ddp.pt"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "cli.main"]
    cmd += ["train-student", "--store", str(work / "store.zarr"), "--dataset", spec(work), "--out", str(out)]
    cmd += ["--epochs", "1", "--recipe", "kd", "--eval-split", "none", "--device", "cuda", "--quiet", "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun train-student failed: {done.stderr[-1500:]}")
    return {"backend": backend, "all_reduce": float(total.item()), "torchrun_s": round(time.perf_counter() - t0, 2)}


def onnx_cuda(work: Path) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from distill.models.checkpoint import load_teacher_source

    net = load_teacher_source(work / "teacher.pt").model.eval()

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_features(x)

    path = work / "teacher.onnx"
    x = torch.randn(64, 3, SIZE, SIZE)
    torch.onnx.export(Embed(), (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    out: dict[str, Any] = {"available": ort.get_available_providers()}
    for name, providers in (("cpu", ["CPUExecutionProvider"]), ("cuda", ["CUDAExecutionProvider"])):
        if providers[0] not in out["available"]:
            out[name] = "provider absent"
            continue
        session = ort.InferenceSession(str(path), providers=providers)
        session.run(None, {"x": x.numpy()})
        t0 = time.perf_counter()
        for _ in range(20):
            session.run(None, {"x": x.numpy()})
        out[name] = {"batch_s": (time.perf_counter() - t0) / 20, "providers": session.get_providers()}
    # the shipped path: an onnx: teacher extracting on cuda (distill/models/teacher_onnx.py picks the provider)
    out["fsd_extract_onnx_s"] = round(
        _extract_with(work, f"onnx:{path}?size={SIZE}&mean=0&std=1", str(work / "store_onnx.zarr")), 2
    )
    return out


def _timed(fn: Callable[[], Any], repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def search(work: Path) -> dict[str, Any]:
    import faiss
    import torch

    rng = np.random.default_rng(0)
    base = rng.standard_normal((200_000, 128), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:4096]
    cpu = faiss.IndexFlatIP(128)
    cpu.add(base)
    seconds: dict[str, Any] = {"faiss_cpu": _timed(lambda: cpu.search(queries, 10), 1)}
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
        seconds["faiss_gpu"] = _timed(lambda: gpu.search(queries, 10))
    else:
        seconds["faiss_gpu"] = "not installed (make gpu-wheels FAISS_WHEEL=faiss-gpu-cu12 ships it)"
    b, q = torch.from_numpy(base).cuda(), torch.from_numpy(queries).cuda()

    def torch_knn() -> Any:
        top = torch.topk(q @ b.T, 10, dim=1)
        torch.cuda.synchronize()
        return top

    seconds["torch_cuda"] = _timed(torch_knn)
    ids_cpu = cpu.search(queries, 10)[1]
    agree = float((torch_knn().indices.cpu().numpy() == ids_cpu).mean())
    return {"seconds": seconds, "queries": 4096, "base": 200_000, "dim": 128, "top10_agreement_torch_vs_faiss": agree}


def verification(work: Path) -> dict[str, Any]:
    import torch

    from benchmarks.tar_at_far import make_data
    from distill.evaluation.pair_tiles import tiles
    from distill.evaluation.search import l2_normalize
    from distill.evaluation.verification import streaming_verification

    torch.backends.cuda.matmul.allow_tf32 = False
    x, y = make_data(20_000, 512, 1000, seed=0)
    xt = torch.from_numpy(l2_normalize(x)).cuda()

    def floor() -> None:
        for i0, i1, j0, j1 in tiles(xt.shape[0], 2048):
            s = xt[i0:i1] @ xt[j0:j1].T
            del s
        torch.cuda.synchronize()

    floor_s = _timed(floor)
    gpu_s = _timed(lambda: streaming_verification(x, y, use_gpu=True), 2)
    # exactness against the numpy backend where float32 products are exact in any order (entries ±1/4)
    rng = np.random.default_rng(1)
    e = rng.choice([-1.0, 1.0], size=(3000, 16)).astype(np.float32)
    labels = rng.integers(0, 40, size=3000)
    same = streaming_verification(e, labels, use_gpu=True)[0] == streaming_verification(e, labels, use_gpu=False)[0]
    return {"floor_s": floor_s, "streaming_s": gpu_s, "ratio": gpu_s / floor_s, "same_report_as_numpy": same}


def pytest_gpu(work: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu_paths.py"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-500:])
    return {"summary": done.stdout.strip().splitlines()[-1]}


STEPS: dict[str, Callable[[Path], dict[str, Any]]] = {
    f.__name__: f
    for f in (
        prepare,
        extract_cuda,
        extract_dask_gpu,
        train_fp16,
        train_bf16,
        step_time,
        stream,
        ddp_nccl,
        onnx_cuda,
        search,
        verification,
        pytest_gpu,
    )
}


def run(name: str, work: Path) -> dict[str, Any]:
    return STEPS[name](work)
