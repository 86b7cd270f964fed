"""The paper's methods on Fashion-MNIST (60,000 / 10,000 images, 28×28): writes the Fashion-MNIST table of
docs/results.md.

    python -m benchmarks.fashion_table [--teacher CKPT] [--seeds 3] [--epochs 3] [--jobs 2]
    python -m benchmarks.fashion_table --converged …   (the converged table: benchmarks/fashion_converged.py)

Reads the Debian package dataset-fashion-mnist through ``idx:`` (``apt-get install dataset-fashion-mnist``).
One teacher (``resnet20``, 15 epochs; or ``--teacher CKPT`` to reuse one), one 2-view store of the first
``--train-limit`` training images; then, per seed, a ``convnet_student`` for every recipe streamed from that
store, and the SH-KD pipeline (the seed's vanilla student → a teacher of the same architecture trained with
that student's head frozen → its store → a CRD+KD student), as benchmarks/paper_table.py does on digits.
Each student is evaluated on the first ``--test-limit`` test images: top-1, R@1, MAP@R, TAR@FAR=1e-3 and
cross-model R@1 (student queries against the ordinary teacher's stored gallery). The table and an automatic
reading (differences beyond 2σ of the difference of means) go between markers in docs/results.md, the raw
numbers to benchmarks/fashion_table.json.

The defaults are the published configuration. On 2 CPU cores the teacher takes ~45 min and the rest about an
hour, so the usual run trains the teacher once and reuses it with ``--teacher``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from benchmarks.paper_table import METRICS, _metrics, _summary
from benchmarks.results_md import replace_marked, write_json

ROOT = Path(__file__).resolve().parents[1]

RECIPES = ("vanilla", "kd", "kde", "th-kd", "kde-th", "crd", "crd-exact", "crd-th", "rkd", "pkt", "sp", "sh-kd")
START, END = "<!-- fashion-table:start -->", "<!-- fashion-table:end -->"
FULL_TRAIN, FULL_TEST = 60_000, 10_000


def spec(limit: int, full: int) -> str:
    """The ``idx:`` spec of Debian's Fashion-MNIST, flips on (clothes are left–right symmetric)."""
    return "idx:?flip=0.5" + (f"&limit={limit}" if limit < full else "")


def _student(args: tuple) -> tuple[str, int, dict, float]:
    """One student run + its evaluation in a worker process (one torch thread: --jobs processes share the cores)."""
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev
    from distill.training.student import StudentConfig, train_student

    name, recipe, seed, store, gallery_store, out, epochs, arch, train_spec, test_spec = args
    started = time.perf_counter()
    train_student(
        StudentConfig(
            store=store,
            dataset=train_spec,
            out=Path(out),
            arch=arch,
            recipe=recipe,
            epochs=epochs,
            seed=seed,
            eval_split=None,
            overwrite=True,
            progress=False,
        )
    )
    seconds = time.perf_counter() - started
    report, _ = ev.evaluate(
        ev.embeddings_from_checkpoint(out, test_spec, "test"), gallery=ev.embeddings_from_store(gallery_store)
    )
    return name, seed, _metrics(report), seconds


def _teacher(args: tuple, threads: int = 1) -> tuple[int, str, float, float]:
    """Train a teacher (with ``head_from``: SH-KD's, on the student's frozen head) and extract its store;
    ``threads``: every core for the reference teacher (trained alone), one for SH-KD's (trained in parallel)."""
    import torch

    torch.set_num_threads(threads)
    from distill.training.teacher import TeacherConfig, train_teacher

    seed, head_from, out, store, epochs, arch, teacher_spec, train_spec, test_spec = args
    started = time.perf_counter()
    train_teacher(
        TeacherConfig(
            dataset=teacher_spec,
            out=Path(out),
            arch=arch,
            epochs=epochs,
            seed=seed,
            head_from=Path(head_from) if head_from else None,
            eval_split=None,
            overwrite=True,
            progress=False,
        )
    )
    _extract(Path(out), train_spec, store)
    import distill.evaluation as ev

    top1 = ev.evaluate(ev.embeddings_from_checkpoint(out, test_spec, "test"))[0]["classification"]["top1"]
    return seed, store, top1, time.perf_counter() - started


def _extract(teacher: Path, train_spec: str, store: str) -> None:
    from distill.models.checkpoint import load_teacher_source
    from featstore.datasets import load_dataset
    from featstore.extract import extract_teacher

    extract_teacher(
        load_teacher_source(teacher), load_dataset(train_spec), store, views=2, seed=0, overwrite=True, progress=False
    )


def beyond_two_sigma(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """(mean(a) − mean(b), σ of that difference = √(s_a²/n_a + s_b²/n_b), |Δ| > 2σ) — 0 σ with one seed."""
    delta = statistics.fmean(a) - statistics.fmean(b)
    if min(len(a), len(b)) < 2:
        return delta, 0.0, False
    sigma = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return delta, sigma, abs(delta) > 2 * sigma


def reading(results: dict[str, list[dict]], teacher: dict[str, float]) -> list[str]:
    """The automatic part of the reading: every difference from vanilla (and TH-KD/SH-KD from KD) beyond 2σ."""
    lines = []
    base = results.get("vanilla")
    for recipe, runs in results.items():
        if recipe == "vanilla" or base is None:
            continue
        found = []
        for metric, _ in METRICS:
            delta, sigma, significant = beyond_two_sigma([r[metric] for r in runs], [r[metric] for r in base])
            if significant:
                found.append(f"{metric} {100 * delta:+.2f} (2σ = {200 * sigma:.2f})")
        lines.append(f"- `{recipe}` vs vanilla beyond 2σ: " + (", ".join(found) if found else "none"))
    for challenger in ("th-kd", "sh-kd"):
        if challenger in results and "kd" in results:
            parts = []
            for metric, _ in METRICS:
                a = [r[metric] for r in results[challenger]]
                delta, sigma, significant = beyond_two_sigma(a, [r[metric] for r in results["kd"]])
                parts.append(f"{metric} {100 * delta:+.2f}{' (> 2σ)' if significant else ''}")
            lines.append(f"- `{challenger}` − `kd`: " + ", ".join(parts))
    if "vanilla" in results:
        gap = teacher["top-1"] - statistics.fmean(r["top-1"] for r in results["vanilla"])
        lines.append(f"- teacher − vanilla student top-1 gap: {100 * gap:.2f} points")
    return lines


# Single-core seconds of the long jobs in the published run (an SH-KD teacher, then students by row; every
# other row ~40 s): the scheduler starts the longest ready job first, so the SH-KD chain (vanilla → SH
# teacher → crd-kd student) overlaps the short rows instead of running alone at the end with a core idle.
SH_TEACHER_COST = 850
COST = {"crd": 400, "crd-th": 360, "sh-kd": 350, "crd-exact": 160}


def run_jobs(args, store: str, common: tuple, work: Path, teacher_spec: str, train_spec: str, test_spec: str):
    """Every student (and SH-KD teacher) on ``args.jobs`` processes: ({recipe: [metrics]}, {recipe: [s]},
    SH-KD teachers' top-1). A seed's SH-KD teacher is queued when its vanilla student is written."""
    by_seed: dict[str, dict[int, tuple[dict, float]]] = {}
    sh_by_seed: dict[int, float] = {}
    plain = [r for r in args.recipes if r != "sh-kd"]
    ready = [
        ("student", (r, r, s, store, store, str(work / f"{r}_s{s}.pt"), *common)) for r in plain for s in range(args.seeds)
    ]  # fmt: skip

    def cost(job) -> float:
        kind, payload = job
        if kind == "teacher":
            return SH_TEACHER_COST
        return math.inf if payload[0] == "vanilla" else COST.get(payload[0], 40)

    def record(name: str, seed: int, metrics: dict, secs: float) -> None:
        by_seed.setdefault(name, {})[seed] = (metrics, secs)
        print(f"{name:9s} seed {seed}: {metrics} ({secs:.0f} s)", flush=True)

    with ProcessPoolExecutor(args.jobs) as pool:
        running: dict = {}  # future → (kind, payload)
        while ready or running:
            ready.sort(key=cost, reverse=True)  # vanilla first (it unlocks SH-KD), then the longest
            while ready and len(running) < args.jobs:
                kind, payload = ready.pop(0)
                running[pool.submit(_teacher if kind == "teacher" else _student, payload)] = (kind, payload)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind, payload = running.pop(future)
                if kind == "teacher":
                    seed, sh_store, top1, secs = future.result()
                    sh_by_seed[seed] = top1
                    print(f"SH teacher seed {seed}: test top-1 {top1:.4f} ({secs:.0f} s)", flush=True)
                    student = ("sh-kd", "crd-kd", seed, sh_store, store, str(work / f"shkd_s{seed}.pt"), *common)
                    ready.append(("student", student))
                    continue
                name, seed, metrics, secs = future.result()
                record(name, seed, metrics, secs)
                if name == "vanilla" and "sh-kd" in args.recipes:
                    sh_args = (seed, payload[5], str(work / f"teacher_sh_s{seed}.pt"),
                               str(work / f"teacher_sh_s{seed}.zarr"), args.sh_teacher_epochs, args.teacher_arch,
                               teacher_spec, train_spec, test_spec)  # fmt: skip
                    ready.append(("teacher", sh_args))
    # rows in recipe and seed order, whatever order the jobs finished in
    names = [r for r in RECIPES if r in by_seed]
    results = {name: [by_seed[name][seed][0] for seed in sorted(by_seed[name])] for name in names}
    seconds = {name: [by_seed[name][seed][1] for seed in sorted(by_seed[name])] for name in names}
    return results, seconds, [sh_by_seed[seed] for seed in sorted(sh_by_seed)]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--sh-teacher-epochs", type=int, default=3, help="SH-KD teachers' epochs")
    parser.add_argument("--train-limit", type=int, default=FULL_TRAIN, help="first N training images (store, students)")
    parser.add_argument("--teacher-limit", type=int, default=FULL_TRAIN, help="first N images the teacher trains on")
    parser.add_argument("--test-limit", type=int, default=FULL_TEST, help="first N test images evaluated")
    parser.add_argument("--teacher", type=Path, default=None, help="reuse this teacher checkpoint (skip training it)")
    parser.add_argument("--teacher-arch", default="resnet20", help="teacher (and SH-KD teachers') architecture")
    parser.add_argument("--student-arch", default="convnet_student")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of the rows")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_work" / "fashion")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "fashion_table.json")
    args = parser.parse_args()
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = set(args.recipes) - set(RECIPES)
    if unknown or ("sh-kd" in args.recipes and "vanilla" not in args.recipes):
        parser.error(f"--recipes: unknown {sorted(unknown)} (or sh-kd without vanilla); valid: {', '.join(RECIPES)}")
    return args


def main() -> None:
    args = _parse()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev

    started = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    train_spec, test_spec = spec(args.train_limit, FULL_TRAIN), spec(args.test_limit, FULL_TEST)
    teacher_spec = spec(args.teacher_limit, FULL_TRAIN)
    store = str(work / "teacher.zarr")
    if args.teacher is None:
        teacher = work / "teacher.pt"
        _teacher(
            (0, None, str(teacher), store, args.teacher_epochs, args.teacher_arch, teacher_spec, train_spec, test_spec),
            threads=len(os.sched_getaffinity(0)),
        )
    else:
        teacher = args.teacher
        torch.set_num_threads(len(os.sched_getaffinity(0)))  # nothing else runs yet: every core
        _extract(teacher, train_spec, store)
    teacher_report, _ = ev.evaluate(
        ev.embeddings_from_checkpoint(teacher, test_spec, "test"), gallery=ev.embeddings_from_store(store)
    )
    torch.set_num_threads(1)
    print(f"teacher: test top-1 {teacher_report['classification']['top1']:.4f}", flush=True)

    common = (args.epochs, args.student_arch, train_spec, test_spec)
    results, seconds, sh_top1 = run_jobs(args, store, common, work, teacher_spec, train_spec, test_spec)
    total = time.perf_counter() - started
    teacher_metrics = _metrics(teacher_report)
    table = _table(args, results, seconds, teacher_metrics, sh_top1, total, torch.__version__)
    replace_marked(args.out, START, END, table, heading="## Fashion-MNIST")
    write_json(
        args.json,
        {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "teacher": teacher_metrics,
            "sh_teacher_top1": sh_top1,
            "students": results,
            "student_seconds": seconds,
            "seconds": total,
        },
    )
    print(table)


def _teacher_origin(path: Path) -> str:
    """How a reused teacher checkpoint was trained, from what it records."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    extra, data = ckpt.get("extra", {}), ckpt.get("dataset", {})
    cost = f" in {extra['seconds'] / 60:.0f} min" if "seconds" in extra else ""
    return (
        f"trained for {extra.get('epochs', '?')} epochs{cost} on `{data.get('spec', '?')}` ({data.get('split', '?')})"
    )


def _table(args, results, seconds, teacher, sh_top1, total: float, torch_version: str) -> str:
    rows = [
        f"| teacher (`{args.teacher_arch}`, 1 run) | "
        + " | ".join(f"{100 * teacher[m]:.2f}" for m, _ in METRICS)
        + " |"
    ]
    for recipe in RECIPES:
        if recipe in results:
            cells = [_summary([r[m] for r in results[recipe]]) for m, _ in METRICS]
            rows.append(f"| {recipe} | " + " | ".join(cells) + f" | {statistics.fmean(seconds[recipe]):.0f} |")
    teacher_note = (
        f"trained for {args.teacher_epochs} epochs on the first {args.teacher_limit:,} training images"
        if args.teacher is None
        else f"reused from `{args.teacher.name}`: {_teacher_origin(args.teacher)}"
    )
    sh_note = f" SH-KD teachers (student head frozen): test top-1 {_summary(sh_top1)}." if sh_top1 else ""
    return "\n".join(
        [
            f"Fashion-MNIST (Debian `dataset-fashion-mnist`): students `{args.student_arch}` trained {args.epochs} "
            f"epochs on the first {args.train_limit:,} training images, streamed from a 2-view store of "
            f"`{args.teacher_arch}` ({teacher_note}); evaluated on the first {args.test_limit:,} test images; "
            f"mean ± std over {args.seeds} seeds, %. x-R@1: student queries against the teacher's stored "
            f"train-subset gallery.{sh_note}",
            "",
            "| method | " + " | ".join(m for m, _ in METRICS) + " | s/run |",
            "|---|" + "---:|" * (len(METRICS) + 1),
            *rows,
            "",
            "Differences beyond 2σ (σ of the difference of the means, √(s²/n + s²/n)):",
            "",
            *reading(results, teacher),
            "",
            f"Generated by `python -m benchmarks.fashion_table --seeds {args.seeds} --epochs {args.epochs} "
            f"--teacher-arch {args.teacher_arch} "
            + (f"--teacher {args.teacher.name} " if args.teacher else f"--teacher-epochs {args.teacher_epochs} ")
            + f"--sh-teacher-epochs {args.sh_teacher_epochs} --train-limit {args.train_limit} --teacher-limit "
            f"{args.teacher_limit} --test-limit {args.test_limit}` in {total / 60:.0f} min on "
            f"{platform.machine()} ({os.cpu_count()} cores, {args.jobs} jobs), torch {torch_version}, "
            f"{time.strftime('%Y-%m-%d')}.",
        ]
    )


if __name__ == "__main__":
    if "--converged" in sys.argv[1:]:
        from benchmarks.fashion_converged import main as converged

        converged([arg for arg in sys.argv[1:] if arg != "--converged"])
    else:
        main()
