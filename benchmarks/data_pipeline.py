"""Real-scale data: fsd's lazy image pipeline against torchvision, memory against N, index fingerprints.

Run ``python -m benchmarks.data_pipeline`` from the repository root (``--quick`` for a small smoke run); it prints its section and
writes it into ``benchmarks/RESULTS.md`` (section "Real-scale data") and ``data_pipeline.json``. Figures:

* **loader speed** — images/s of fsd's pipeline (:func:`featstore.loader.drawn_batches` over ``folder:``: a
  DataLoader whose workers read a JPEG, RandomResizedCrop + flip from the original, normalise) against
  torchvision ``ImageFolder`` + ``DataLoader`` with the same workers, batch size, decode and crop
  (RandomResizedCrop(S, scale=(0.35, 1)) + RandomHorizontalFlip + ToTensor + Normalize); goal ≥ 0.9;
* **extraction** — ``extract_teacher`` over the folder (1 view: resize + center crop) against the same
  torchvision DataLoader (Resize + CenterCrop) feeding a bare teacher forward; goal ≥ 0.9;
* **training** — one epoch of ``StudentRun`` (KD from the store, lazy images) against vanilla training (CE)
  of the same student on the torchvision DataLoader; goal ≥ 0.9;
* **memory independent of N** — peak RSS of the ``fsd extract-teacher`` and ``fsd train-student`` processes
  on 5,000 vs 40,000 generated JPEGs; goal: differ by < 25 %;
* **fingerprint** — :func:`featstore.datasets.lazy.index_fingerprint` over 1,000,000 generated index
  entries; goal ≤ 10 s.

``--memory-only SMALL,LARGE`` measures only the memory figure, at two sizes of one's choosing (the same
8× ratio at smaller sizes is quicker on a loaded machine).

Rounds of each pair are interleaved and the median of per-round ratios is reported, because the machine is
shared. torchvision (``torchvision==0.28.0``, the release for torch 2.13, installed by ``make test``) is the
baseline: the PyPI wheel's compiled ops do not load on the CPU build of torch, and ImageFolder and the
transforms do not need them, so the script imports torchvision without its operator registrations (as
fsd's own timm/torchvision models do, distill/models/hub.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_md import publish

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SECTION = "## Real-scale data (benchmarks/data_pipeline.py)"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_modules() -> tuple[Any, Any]:
    """(datasets, transforms) of torchvision, imported without its compiled-operator registrations."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchvision import datasets, transforms
    return datasets, transforms


def make_jpegs(root: Path, n: int, classes: int, low: int, high: int, seed: int = 0) -> Path:
    """``n`` JPEGs of random sizes in [low, high) under ``root/train/<class>/`` (smooth noise, so they
    compress like photographs rather than like white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(low, high, size=2))
        tile = Image.fromarray(np.roll(base, i, axis=(0, 1))).resize((w, h), Image.Resampling.BILINEAR)
        path = root / "train" / f"c{i % classes:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        tile.save(path, quality=85)
    return root


def random_crop_folder(root: Path, size: int) -> Any:
    """torchvision's ImageFolder over ``root/train`` with the training views fsd's loader renders:
    RandomResizedCrop(size, scale=(0.35, 1)) + flip + ToTensor + Normalize."""
    datasets, transforms = torchvision_modules()
    crop = transforms.RandomResizedCrop(size, scale=(0.35, 1.0))
    steps = [crop, transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    return datasets.ImageFolder(str(root / "train"), transform=transforms.Compose(steps))


def interleaved(pairs: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Seconds of each callable, run round by round in turn."""
    times: dict[str, list[float]] = {k: [] for k in pairs}
    for _ in range(rounds):
        for name, fn in pairs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def loader_speed(root: Path, size: int, workers: int, batch: int, rounds: int) -> dict[str, Any]:
    import torch

    from featstore.datasets import LoadOptions, load_dataset
    from featstore.loader import drawn_batches

    dataset = load_dataset(f"folder:{root}?size={size}", options=LoadOptions(workers=workers))
    rows = np.arange(len(dataset))
    tv = random_crop_folder(root, size)
    tv_loader = torch.utils.data.DataLoader(tv, batch_size=batch, num_workers=workers, prefetch_factor=4)

    def fsd() -> None:
        for _ in drawn_batches(dataset, rows, batch, seed=0, view=1):
            pass

    def baseline() -> None:
        for _ in tv_loader:
            pass

    times = interleaved({"fsd": fsd, "torchvision": baseline}, rounds)
    ratio = statistics.median(b / a for a, b in zip(times["fsd"], times["torchvision"]))
    n = len(dataset)
    return {
        "images": n,
        "fsd_images_per_s": n / statistics.median(times["fsd"]),
        "torchvision_images_per_s": n / statistics.median(times["torchvision"]),
        "ratio": ratio,
    }


def teacher_source(size: int, classes: int) -> Any:
    import torch

    from distill.models import create_model
    from featstore.extract import TeacherSource

    torch.manual_seed(0)
    model = create_model("convnet_teacher", num_classes=classes, in_channels=3, embedding_dim=64).eval()
    return TeacherSource(
        model=model,
        arch="convnet_teacher",
        checkpoint_sha256="b" * 64,
        embedding_dim=64,
        input_shape=[3, size, size],
        head_type="linear",
        head_weight=np.zeros((classes, 64), np.float32),
        head_bias=None,
    )


def extraction_speed(root: Path, work: Path, size: int, workers: int, batch: int, rounds: int) -> dict[str, Any]:
    import torch

    from featstore.datasets import LoadOptions, load_dataset
    from featstore.extract import extract_teacher

    datasets, transforms = torchvision_modules()
    dataset = load_dataset(f"folder:{root}?size={size}", options=LoadOptions(workers=workers))
    teacher = teacher_source(size, dataset.num_classes)
    resize = int(round(size * 9 / 8))
    tv = datasets.ImageFolder(
        str(root / "train"),
        transform=transforms.Compose(
            [
                transforms.Resize(resize),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        ),
    )
    tv_loader = torch.utils.data.DataLoader(tv, batch_size=batch, num_workers=workers, prefetch_factor=4)
    counter = iter(range(10**6))

    def fsd() -> None:
        url = str(work / f"extract-{next(counter)}.zarr")
        extract_teacher(
            teacher, dataset, url, views=1, batch_size=batch, chunk_rows=min(1024, len(dataset)), progress=False
        )

    @torch.no_grad()
    def baseline() -> None:
        for x, _ in tv_loader:
            teacher.model.forward_features(x)

    times = interleaved({"fsd": fsd, "baseline": baseline}, rounds)
    n = len(dataset)
    return {
        "images": n,
        "fsd_images_per_s": n / statistics.median(times["fsd"]),
        "baseline_images_per_s": n / statistics.median(times["baseline"]),
        "ratio": statistics.median(b / a for a, b in zip(times["fsd"], times["baseline"])),
    }


def training_speed(root: Path, work: Path, size: int, workers: int, batch: int, rounds: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from distill.models import create_model
    from distill.training.run import StudentRun
    from distill.training.student import StudentConfig
    from featstore.datasets import LoadOptions, load_dataset
    from featstore.extract import extract_teacher

    spec = f"folder:{root}?size={size}"
    dataset = load_dataset(spec, options=LoadOptions(workers=workers))
    teacher = teacher_source(size, dataset.num_classes)
    store = str(work / "train-store.zarr")
    extract_teacher(
        teacher, dataset, store, views=2, batch_size=batch, chunk_rows=min(256, len(dataset) // 2), progress=False
    )
    config = StudentConfig(
        store=store,
        dataset=spec,
        out=work / "student.pt",
        recipe="kd",
        epochs=1,
        batch_size=batch,
        eval_split=None,
        device="cpu",
        progress=False,
        loader_workers=workers,
        overwrite=True,
    )
    run = StudentRun.build(config)
    steps = run.steps_per_epoch
    tv = random_crop_folder(root, size)
    loader = torch.utils.data.DataLoader(tv, batch_size=batch, num_workers=workers, shuffle=True, prefetch_factor=4)
    torch.manual_seed(0)
    vanilla = create_model("convnet_student", num_classes=dataset.num_classes, in_channels=3, embedding_dim=64)
    optimizer = torch.optim.SGD(vanilla.parameters(), lr=0.01, momentum=0.9)
    epoch = iter(range(10**6))

    def fsd() -> None:
        run.run_epoch(next(epoch))

    def baseline() -> None:
        vanilla.train()
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            loss = F.cross_entropy(vanilla.forward_head(vanilla.forward_features(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    times = interleaved({"fsd": fsd, "vanilla": baseline}, rounds)
    run.close()
    samples = steps * batch
    return {
        "steps": steps,
        "fsd_images_per_s": samples / statistics.median(times["fsd"]),
        "vanilla_images_per_s": samples / statistics.median(times["vanilla"]),
        "ratio": statistics.median(b / a for a, b in zip(times["fsd"], times["vanilla"])),
    }


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS (MB) of one fresh ``python -m cli.main ARGS`` process (its largest process, workers included)."""
    probe = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run([sys.executable, '-m', 'cli.main', *sys.argv[1:]]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"fsd {' '.join(args[:1])} failed: {done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def memory_vs_n(work: Path, sizes: tuple[int, int], image_size: int, workers: int, repeats: int = 1) -> dict[str, Any]:
    """Peak RSS of extract-teacher and train-student on two generated JPEG folders: the median of
    ``repeats`` fresh processes each (one process's peak is one draw of how its allocator behaved)."""
    from distill.models.checkpoint import Checkpoint, save_checkpoint

    out: dict[str, Any] = {}
    for n in sizes:
        root = make_jpegs(work / f"jpegs-{n}", n, classes=100, low=32, high=64, seed=n)
        spec = f"folder:{root}?size={image_size}"
        teacher = work / f"teacher-{n}.pt"
        source = teacher_source(image_size, 100)
        save_checkpoint(
            Checkpoint(
                kind="teacher",
                arch="convnet_teacher",
                model_config={"num_classes": 100, "in_channels": 3, "embedding_dim": 64},
                state_dict={k: v.cpu() for k, v in source.model.state_dict().items()},
                head_type="linear",
                embedding_dim=64,
                num_classes=100,
                dataset={
                    "spec": spec,
                    "split": "train",
                    "fingerprint": "-",
                    "image_shape": [3, image_size, image_size],
                },
                extra={},
            ),
            teacher,
            overwrite=True,
        )
        store = work / f"store-{n}.zarr"
        common = ["--loader-workers", str(workers), "--device", "cpu", "--quiet"]
        extract = ["extract-teacher", "--teacher", str(teacher), "--dataset", spec, "--out", str(store), "--views", "1"]
        train = ["train-student", "--store", str(store), "--dataset", spec, "--out", str(work / f"s-{n}.pt")]
        train += ["--epochs", "1", "--batch-size", "256", "--recipe", "kd", "--eval-split", "none", "--overwrite"]
        for kind, args in (("extract", [*extract, "--overwrite", *common]), ("train", [*train, *common])):
            runs = [peak_rss_mb(args) for _ in range(repeats)]
            out[f"{kind}_{n}_runs_mb"] = runs
            out[f"{kind}_{n}_mb"] = statistics.median(runs)
    small, large = sizes
    for kind in ("extract", "train"):
        a, b = out[f"{kind}_{small}_mb"], out[f"{kind}_{large}_mb"]
        out[f"{kind}_growth"] = b / a - 1
    return out


def fingerprint_speed(n: int) -> dict[str, Any]:
    from featstore.datasets.lazy import index_fingerprint

    keys = [f"class_{i % 1000:04d}/img_{i:07d}.jpg" for i in range(n)]
    sizes = np.random.default_rng(0).integers(10_000, 200_000, size=n)
    labels = np.arange(n) % 1000
    started = time.perf_counter()
    index_fingerprint("folder", "train", keys, sizes, labels)
    return {"entries": n, "seconds": time.perf_counter() - started}


def markdown(r: dict[str, Any]) -> str:
    m = r["meta"]
    mem = r["memory"]
    small, large = m["memory_sizes"]

    def ok(met: bool) -> str:
        return "met" if met else "**not met**"

    rows = [
        (
            "loader: fsd / torchvision ImageFolder+DataLoader (images/s)",
            r["loader"]["ratio"],
            "≥ 0.9",
            r["loader"]["ratio"] >= 0.9,
        ),
        (
            "extraction / DataLoader + bare teacher forward",
            r["extraction"]["ratio"],
            "≥ 0.9",
            r["extraction"]["ratio"] >= 0.9,
        ),
        (
            "training from store, lazy images / vanilla, same DataLoader",
            r["training"]["ratio"],
            "≥ 0.9",
            r["training"]["ratio"] >= 0.9,
        ),
        (
            f"extract-teacher peak RSS growth, {large:,} vs {small:,} JPEGs",
            mem["extract_growth"],
            "< 0.25",
            abs(mem["extract_growth"]) < 0.25,
        ),
        (
            f"train-student peak RSS growth, {large:,} vs {small:,} JPEGs",
            mem["train_growth"],
            "< 0.25",
            abs(mem["train_growth"]) < 0.25,
        ),
        (
            f"fingerprint of {r['fingerprint']['entries']:,} index entries (s)",
            r["fingerprint"]["seconds"],
            "≤ 10",
            r["fingerprint"]["seconds"] <= 10,
        ),
    ]
    lines = [
        SECTION,
        "",
        f"`python -m benchmarks.data_pipeline{' --quick' if m['quick'] else ''}` on {m['date']}, {m['machine']}; "
        f"{m['workers']} loader worker(s) for every pipeline, batch {m['batch']}, images rendered at "
        f"{m['size']}×{m['size']}, {m['images']:,} generated JPEGs for the speed figures; medians of "
        f"{m['rounds']} interleaved rounds. Raw numbers: `data_pipeline.json`.",
        "",
        "| figure | measured | goal | met |",
        "|---|---:|---:|:---:|",
    ]
    lines += [f"| {name} | {value:.2f} | {goal} | {ok(met)} |" for name, value, goal, met in rows]
    lines += [
        "",
        f"- images/s: loader fsd {r['loader']['fsd_images_per_s']:.0f}, torchvision "
        f"{r['loader']['torchvision_images_per_s']:.0f}; extraction fsd {r['extraction']['fsd_images_per_s']:.0f}, "
        f"baseline {r['extraction']['baseline_images_per_s']:.0f}; training fsd "
        f"{r['training']['fsd_images_per_s']:.0f}, vanilla {r['training']['vanilla_images_per_s']:.0f}.",
        f"- peak RSS (MB, images at 32×32, median of {m.get('memory_repeats', 1)} processes each): extract-teacher {mem[f'extract_{small}_mb']:.0f} ({small:,} JPEGs) vs "
        f"{mem[f'extract_{large}_mb']:.0f} ({large:,}); train-student {mem[f'train_{small}_mb']:.0f} vs "
        f"{mem[f'train_{large}_mb']:.0f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes: a smoke run, not figures.")
    parser.add_argument("--workers", type=int, default=None, help="Loader workers (default: fsd's default).")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, default=HERE / "data_pipeline.json")
    parser.add_argument("--no-write", action="store_true", help="Print only; write neither file.")
    parser.add_argument(
        "--memory-only",
        metavar="SMALL,LARGE",
        help="Only the extract/train peak RSS at these two sizes, 3 processes each; prints JSON, writes nothing.",
    )
    args = parser.parse_args()
    from featstore.loader import default_workers

    workers = default_workers() if args.workers is None else args.workers
    if args.memory_only:
        small, large = (int(v) for v in args.memory_only.split(","))
        with tempfile.TemporaryDirectory(prefix="fsd-data-bench-") as tmp:
            print(json.dumps(memory_vs_n(Path(tmp), (small, large), 32, workers, repeats=3), indent=2))
        return
    quick = args.quick
    images, rounds, size, batch = (120, 1, 32, 32) if quick else (1500, 3, 64, 64)
    memory_sizes = (300, 600) if quick else (5000, 40000)
    results: dict[str, Any] = {
        "meta": {
            "quick": quick,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, "
            f"load {os.getloadavg()[0]:.1f}",
            "workers": workers,
            "images": images,
            "rounds": rounds,
            "size": size,
            "batch": batch,
            "memory_sizes": list(memory_sizes),
            "memory_repeats": 1 if quick else 3,
        }
    }
    with tempfile.TemporaryDirectory(prefix="fsd-data-bench-") as tmp:
        work = Path(tmp)
        root = make_jpegs(work / "speed", images, classes=10, low=96, high=256)
        results["loader"] = loader_speed(root, size, workers, batch, rounds)
        results["extraction"] = extraction_speed(root, work, size, workers, batch, rounds)
        results["training"] = training_speed(root, work, size, workers, batch, rounds)
        results["memory"] = memory_vs_n(work, memory_sizes, 32, workers, repeats=1 if quick else 3)
    results["fingerprint"] = fingerprint_speed(20_000 if quick else 1_000_000)
    results["meta"]["self_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    publish(markdown(results), SECTION, results, args.json, args.results, write=not args.no_write)


if __name__ == "__main__":
    main()
