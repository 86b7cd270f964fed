"""Face pipeline figures (CPU): ONNX teacher extraction vs the same network in torch, and MobileFaceNet's
training step with and without mixed precision.

* **ONNX / torch extraction**: one MobileFaceNet teacher (random weights, eval mode) exported by
  ``fsd export``'s library call; ``extract_teacher`` over the same generated 112×112 dataset, once with the
  torch network and once with ``onnx:FILE`` (onnxruntime, as many threads as torch). Rounds alternate the two;
  the figure is the median of per-round ratios of images/s (goal ≥ 0.8).
* **MobileFaceNet step, --amp bf16 / fp32**: forward + CE on a linear head + backward + SGD step on a batch
  of 112×112 images, through :class:`distill.training.amp.Amp` (what ``train-student --amp`` uses); median
  per-round ratio of step times. CPUs without fast bf16 make it slower, not faster: the figure says which.

Run from the repository root: python -m benchmarks.face --rounds 3 (writes benchmarks/face.json and its section of RESULTS.md)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_md import publish
from distill.models import create_model
from distill.models.export import export_model
from distill.models.teachers import load_teacher, source_from_parts
from distill.training.amp import Amp
from featstore.datasets.base import ImageDataset
from featstore.extract import extract_teacher
from featstore.views import ViewPolicy

HEADING = "## Face pipeline (benchmarks/face.py)"
HERE = Path(__file__).resolve().parent


def _dataset(n: int) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 3, 112, 112)).astype(np.float32)
    policy = ViewPolicy(kind="resized_crop", source_size=(112, 112), pad=0, flip_p=0.5, scale=(0.35, 1.0))
    return ImageDataset("bench", "train", images, np.arange(n) % 8, 8, policy, normalisation=((0.5,) * 3, (0.5,) * 3))


def _extraction_rate(source, dataset: ImageDataset, workdir: Path, tag: str) -> float:
    url = str(workdir / f"{tag}-{time.perf_counter_ns()}.zarr")
    started = time.perf_counter()
    extract_teacher(source, dataset, url, batch_size=64, progress=False)
    return len(dataset) / (time.perf_counter() - started)


def extraction(rounds: int, n: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    net = create_model("mobilefacenet", num_classes=8).eval()
    dataset = _dataset(n)
    path = workdir / "teacher.onnx"
    export_model(net, path, dataset.get_images(np.arange(4)))
    torch_source = source_from_parts(net, None, "mobilefacenet", "bench", 512)
    onnx_source = load_teacher(f"onnx:{path}")
    ratios, rates = [], {"torch": [], "onnx": []}
    for _ in range(rounds):
        t = _extraction_rate(torch_source, dataset, workdir, "torch")
        o = _extraction_rate(onnx_source, dataset, workdir, "onnx")
        rates["torch"].append(t)
        rates["onnx"].append(o)
        ratios.append(o / t)
    return {
        "ratio": statistics.median(ratios),
        "torch_images_per_s": statistics.median(rates["torch"]),
        "onnx_images_per_s": statistics.median(rates["onnx"]),
        "rounds": rounds,
        "images": n,
    }


def _step_time(model, head, optimiser, amp: Amp, x, y, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        with amp.autocast():
            loss = torch.nn.functional.cross_entropy(head(model.forward_features(x)).float(), y)
        optimiser.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.step(optimiser, list(model.parameters()), None)
    return (time.perf_counter() - started) / steps


def amp_step(rounds: int, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = create_model("mobilefacenet", num_classes=16).train()
    head = model.head
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 112, 112), torch.arange(batch) % 16
    cpu = torch.device("cpu")
    plain, mixed = Amp.create(None, cpu), Amp.create("bf16", cpu)
    _step_time(model, head, optimiser, plain, x, y, 1)  # warm-up
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        times["fp32"].append(_step_time(model, head, optimiser, plain, x, y, steps))
        times["bf16"].append(_step_time(model, head, optimiser, mixed, x, y, steps))
    ratios = [b / f for f, b in zip(times["fp32"], times["bf16"], strict=True)]
    return {
        "bf16_over_fp32_step_time": statistics.median(ratios),
        "fp32_step_s": statistics.median(times["fp32"]),
        "bf16_step_s": statistics.median(times["bf16"]),
        "batch": batch,
        "rounds": rounds,
    }


def section(results: dict) -> str:
    e, a = results["extraction"], results["amp"]
    met = "met" if e["ratio"] >= 0.8 else "**not met**"
    return (
        f"{HEADING}\n\n"
        f"`python -m benchmarks.face` on {results['when']}, CPU, {results['threads']} torch thread(s), load average "
        f"{results['load']} at the start (a shared machine: ratios of interleaved rounds, absolute times are "
        "context only). Raw numbers: `face.json`.\n\n"
        "| figure | measured | goal | met |\n|---|---:|---:|:---:|\n"
        f"| ONNX / torch teacher extraction, images/s (MobileFaceNet, 112×112) | {e['ratio']:.2f} | ≥ 0.8 | {met} |\n"
        f"| MobileFaceNet step time, --amp bf16 / fp32 (batch {a['batch']}) | {a['bf16_over_fp32_step_time']:.2f} | — | — |\n\n"
        f"Extraction: torch {e['torch_images_per_s']:.1f} images/s, onnxruntime {e['onnx_images_per_s']:.1f} "
        f"images/s ({e['images']} images, median of {e['rounds']} rounds). Step: fp32 {a['fp32_step_s'] * 1e3:.0f} ms, "
        f"bf16 {a['bf16_step_s'] * 1e3:.0f} ms (a ratio above 1 means bf16 autocast is slower on this CPU).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes; writes nothing unless --out-dir.")
    parser.add_argument("--out-dir", type=Path, default=None, help="Where face.json/RESULTS.md go (default here).")
    args = parser.parse_args()
    rounds, images, batch = (1, 32, 8) if args.quick else (args.rounds, args.images, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "threads": torch.get_num_threads(),
            "load": [round(v, 2) for v in os.getloadavg()],
            "extraction": extraction(rounds, images, Path(tmp)),
            "amp": amp_step(rounds, batch, steps=2 if args.quick else 5),
        }
    out = args.out_dir or HERE
    publish(section(results), HEADING, results, out / "face.json", out / "RESULTS.md", not args.quick or args.out_dir)


if __name__ == "__main__":
    main()
