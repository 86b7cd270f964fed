"""The CUDA paths (marked ``gpu``: skipped without a CUDA device; ``python -m benchmarks.gpu_check`` runs them on a
lent GPU), and gpu_check's plan mode, which runs everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install means: no CUDA here
        return False


def exact_rows(n: int, seed: int) -> np.ndarray:
    """Rows of ±1 (normalised ±1/4): float32 cosines exact in any summation order, on any device."""
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, 16)).astype(np.float32)


def test_gpu_check_without_cuda_prints_its_plan_and_exits_0() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU machine
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    from benchmarks.gpu_check import CHECKS

    for check in CHECKS:
        assert check.name in done.stdout
    assert "wheels" in done.stdout and "MiB" in done.stdout or "make gpu-wheels" in done.stdout
    assert not (ROOT / "gpu_check.json.tmp").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_torch_verification_on_cuda_equals_numpy() -> None:
    from distill.evaluation.verification import streaming_verification

    x = exact_rows(1500, seed=0)
    y = np.random.default_rng(0).integers(0, 30, size=1500)
    gpu = streaming_verification(x, y, block=512, use_gpu=True)
    cpu = streaming_verification(x, y, block=512, use_gpu=False)
    assert gpu[0] == cpu[0]
    assert np.array_equal(gpu[1][0], cpu[1][0]) and np.array_equal(gpu[1][1], cpu[1][1])


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_amp_fp16_uses_a_grad_scaler_and_steps() -> None:
    import torch

    from distill.training.amp import Amp

    amp = Amp.create("fp16", torch.device("cuda"))
    assert amp.enabled and amp.scaler is not None
    model = torch.nn.Linear(8, 2).cuda()
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with amp.autocast():
        out = model(torch.randn(4, 8, device="cuda"))
        assert out.dtype == torch.float16
        loss = out.float().square().mean()
    amp.backward(loss)
    amp.step(opt, list(model.parameters()), None)
    assert not torch.equal(before, model.weight.detach())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_amp_bf16_autocast_on_cuda() -> None:
    import torch

    from distill.training.amp import Amp

    amp = Amp.create("bf16", torch.device("cuda"))
    assert amp.enabled and amp.scaler is None
    with amp.autocast():
        out = torch.nn.Linear(8, 2).cuda()(torch.randn(4, 8, device="cuda"))
    assert out.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_nccl_process_group_of_one(tmp_path) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        t = torch.full((3,), 2.0, device="cuda")
        dist.all_reduce(t)
        assert dist.get_backend() == "nccl" and t.tolist() == [2.0, 2.0, 2.0]
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_faiss_gpu_search_equals_cpu() -> None:
    faiss = pytest.importorskip("faiss")
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        pytest.skip("faiss without GPU support")
    x = exact_rows(2000, seed=1)
    cpu = faiss.IndexFlatIP(16)
    cpu.add(x)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    assert np.array_equal(cpu.search(x[:50], 5)[0], gpu.search(x[:50], 5)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_onnxruntime_cuda_provider_matches_cpu(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider")
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"])
    outs = []
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=[provider])
        assert session.get_providers()[0] == provider
        outs.append(session.run(None, {"x": x.numpy()})[0])
    assert np.allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_dask_plans_one_pinned_worker_per_gpu() -> None:
    import torch

    from featstore import dask_extract

    gpus = dask_extract.visible_gpus()
    assert len(gpus) == torch.cuda.device_count() >= 1
    workers, pins = dask_extract.plan_workers(None, None, torch.device("cuda"))
    assert workers == len(gpus) and pins is not None and set(pins) == set(gpus)
