"""One command that proves every GPU path of fsd on a lent CUDA machine: ``python -m benchmarks.gpu_check``.

On a machine with CUDA it runs each check below end to end on small generated data (about 8 minutes in all),
each in its own child process with its own time limit, so that one failure (an exception, a crash, a hang)
is recorded and the others still run; the results go to ``gpu_check.json`` (rewritten after every check, so
a run cut short keeps what it measured). On a machine without CUDA it prints its plan — each check, and the
wheels it would install with their total size — and exits 0.

The GPU machine has torch (CUDA), onnxruntime, numpy, h5py, click, tqdm, timm and torchvision but no zarr,
numcodecs, dask, distributed or faiss, and no network: ``make gpu-wheels`` downloads those wheels (CPython
3.12, manylinux x86_64) into ``.whl/`` here, they travel with the working tree, and this script installs the
missing ones into a temporary folder (``pip install --no-deps --target``) that every check puts first on its
``sys.path``. faiss: faiss-cpu by default; the faiss-gpu-cu12 wheel (46 MiB) fits the 64 MiB with the rest
instead of faiss-cpu (``make gpu-wheels FAISS_WHEEL=faiss-gpu-cu12``) but needs the CUDA libraries of torch's
nvidia-* wheels, so the search check measures faiss-gpu where it imports, faiss-cpu and torch on the GPU.

Figures: store-KD / vanilla step time on the GPU (the store must not slow a GPU step), the stream's
samples/s against the samples/s the GPU step consumes, extraction throughput (one process and a dask worker
pinned to the GPU), exact verification / the torch triangle-GEMM floor, and search time faiss-gpu vs faiss-cpu
vs torch.

Example: python -m benchmarks.gpu_check                  # on the GPU machine: all checks, gpu_check.json
         python -m benchmarks.gpu_check --plan           # print the plan only (what a CPU machine does)
         python -m benchmarks.gpu_check --only search,verification
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
BUDGET_S = 480

MISSING_ON_GPU = ("zarr", "numcodecs", "dask", "distributed", "faiss")
"""Modules the GPU machine lacks (importable names); each comes from a wheel in ``.whl/``."""

WHEEL_REQUIREMENTS = (
    # the store and its codecs
    "zarr",
    "numcodecs",
    "donfig",
    "crc32c",
    # dask's cluster for --workers (GPU pinning)
    "dask",
    "distributed",
    "cloudpickle",
    "partd",
    "locket",
    "toolz",
    "msgpack",
    "psutil",
    "sortedcontainers",
    "tblib",
    "tornado",
    "zict",
    # search (faiss-gpu-cu12 instead: see the Makefile)
    "faiss-cpu",
    # the gpu-marked tests
    "pytest",
    "pluggy",
    "iniconfig",
)
"""What ``make gpu-wheels`` downloads (``--no-deps``: the GPU machine has numpy, torch and their own deps)."""


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    timeout_s: int


CHECKS = (
    Check("prepare", "generate 1,536 JPEGs and train a small teacher on cuda (fsd train-teacher, 1 epoch)", 60),
    Check("extract_cuda", "fsd extract-teacher --device cuda, 2 views: images/s", 45),
    Check("extract_dask_gpu", "fsd extract-teacher --workers 1 --device cuda (dask worker pinned to a GPU)", 75),
    Check("train_fp16", "fsd train-student --amp fp16 (autocast + GradScaler) on cuda, 1 epoch", 45),
    Check("train_bf16", "fsd train-student --amp bf16 on cuda, 1 epoch", 45),
    Check("step_time", "store-KD vs vanilla epoch time on cuda (same student, batches, data)", 60),
    Check("stream", "StoreStream samples/s against the samples/s the GPU KD step consumes", 20),
    Check("ddp_nccl", "DistributedDataParallel over nccl (1 process) + torchrun train-student on cuda", 45),
    Check("onnx_cuda", "onnxruntime CUDAExecutionProvider (if present) vs CPU on an exported student", 30),
    Check("search", "k-NN: faiss-gpu (if installed) vs faiss-cpu vs torch on cuda", 30),
    Check("verification", "exact all-pairs verification, torch on cuda (TF32 off) / torch triangle GEMM", 45),
    Check("pytest_gpu", "the tests marked gpu (python -m pytest -m gpu)", 60),
)


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA install: plan mode
        return False


def wheel_files() -> list[Path]:
    return sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []


def plan() -> str:
    lines = ["gpu_check plan (no CUDA here: nothing is run):", ""]
    lines += [f"  {i + 1:2d}. {c.name:<17} {c.what}  [<= {c.timeout_s} s]" for i, c in enumerate(CHECKS)]
    lines.append(f"      total time limit {BUDGET_S} s; results to gpu_check.json")
    files = wheel_files()
    lines.append("")
    if files:
        total = sum(f.stat().st_size for f in files) / 2**20
        lines.append(f"wheels in {WHEELS.relative_to(ROOT)}/ ({len(files)} files, {total:.1f} MiB in all):")
        lines += [f"  {f.name}  {f.stat().st_size / 2**20:.2f} MiB" for f in files]
    else:
        lines.append(f"wheels: none in {WHEELS.relative_to(ROOT)}/ yet: run `make gpu-wheels` (needs PyPI) to fetch")
        lines.append("  " + ", ".join(WHEEL_REQUIREMENTS) + " for CPython 3.12 manylinux x86_64")
    lines.append("installed on the GPU machine only where missing: " + ", ".join(MISSING_ON_GPU))
    lines.append(
        "faiss: faiss-cpu by default (24 MiB in all); faiss-gpu-cu12 (46 MiB, 52 MiB in all) fits with "
        "`make gpu-wheels FAISS_WHEEL=faiss-gpu-cu12` where the machine has torch's nvidia-* CUDA wheels"
    )
    return "\n".join(lines)


def install_missing(target: Path) -> dict[str, Any]:
    """Install the wheels of ``.whl/`` into ``target`` when one of :data:`MISSING_ON_GPU` does not import."""
    import importlib.util

    missing = [m for m in MISSING_ON_GPU if importlib.util.find_spec(m) is None]
    files = wheel_files()
    out: dict[str, Any] = {"missing": missing, "wheels": [f.name for f in files]}
    if not missing:
        return out
    if not files:
        out["error"] = "modules missing and no wheels in .whl/ (run make gpu-wheels before lending)"
        return out
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target)]
    done = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, check=False)
    out["pip_rc"] = done.returncode
    if done.returncode != 0:
        out["error"] = done.stderr[-2000:]
    return out


def run_checks(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fsd-gpu-check-"))
    site = work / "site"
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checks": {}}
    results["install"] = install_missing(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["FSD_GPU_CHECK_WORK"] = str(work)
    results["machine"] = _machine()
    wanted = set(args.only.split(",")) if args.only else None
    for check in CHECKS:
        if wanted is not None and check.name not in wanted and check.name != "prepare":
            continue
        left = BUDGET_S - (time.perf_counter() - started)
        if left < 5:
            results["checks"][check.name] = {"ok": False, "error": "skipped: the time budget is spent"}
            continue
        results["checks"][check.name] = _child(check, min(check.timeout_s, int(left)), env)
        status = "ok" if results["checks"][check.name].get("ok") else "FAILED"
        print(f"[{time.perf_counter() - started:6.1f} s] {check.name}: {status}", flush=True)
        _write(args.out, results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["figures"] = _figures(results["checks"])
    _write(args.out, results)
    return results


def _child(check: Check, timeout: int, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", check.name]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:]
        return {"ok": False, "error": f"timed out after {timeout} s", "stderr": _text(tail)}
    seconds = round(time.perf_counter() - t0, 2)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"ok": False, "seconds": seconds, "rc": done.returncode, "stderr": done.stderr[-2500:]}
    return {"ok": True, "seconds": seconds, **json.loads(lines[-1])}


def _text(b: Any) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def _write(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _machine() -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
    }


def _figures(checks: dict[str, Any]) -> dict[str, Any]:
    """The ratios the issue asks for, from the checks that succeeded (None where a check failed)."""

    def get(name: str, key: str) -> Any:
        return checks.get(name, {}).get(key)

    kd, vanilla = get("step_time", "kd_step_s"), get("step_time", "vanilla_step_s")
    stream, demand = get("stream", "samples_per_s"), get("step_time", "kd_samples_per_s")
    return {
        "store_kd_over_vanilla_step": kd / vanilla if kd and vanilla else None,
        "stream_over_gpu_demand": stream / demand if stream and demand else None,
        "extraction_images_per_s": get("extract_cuda", "images_per_s"),
        "verification_over_torch_gemm_floor": get("verification", "ratio"),
        "search_s": get("search", "seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="Print the plan and exit (the default without CUDA).")
    parser.add_argument("--only", help="Comma-separated check names (prepare always runs).")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_check.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from benchmarks import gpu_check_steps

        print(json.dumps(gpu_check_steps.run(args.child, Path(os.environ["FSD_GPU_CHECK_WORK"]))), flush=True)
        return
    if args.plan or not cuda_available():
        print(plan())
        return
    results = run_checks(args)
    print(json.dumps(results["figures"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
