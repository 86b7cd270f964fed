"""The paper's methods on digits, ≥ 3 seeds: writes the results table of docs/results.md.

    python -m benchmarks.paper_table [--seeds 3] [--epochs 30] [--jobs 2]

One teacher (seed 0) and one 2-view float16 store; then, per seed, a student for each recipe streamed
from that store, and the SH-KD pipeline (a vanilla student → a teacher trained with that student's head
frozen → a new store → a CRD+KD student from it, as in the HeadSharingKD README). Every student is
evaluated on the digits test split: top-1, R@1, MAP@R, TAR@FAR=1e-3, and cross-model R@1 (student
queries against the teacher's stored gallery). The table goes between markers in docs/results.md, the
raw numbers to benchmarks/paper_table.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.results_md import replace_marked, write_json

ROOT = Path(__file__).resolve().parents[1]

RECIPES = ("vanilla", "kd", "kde", "kde-th", "th-kd", "crd", "crd-exact", "crd-th", "rkd", "pkt", "sp")
METRICS = (
    ("top-1", ("classification", "top1")),
    ("R@1", ("retrieval", "recall_at_k", "1")),
    ("MAP@R", ("retrieval", "map_at_r")),
    ("TAR@1e-3", ("verification", "tar_at_far", "1e-03")),
    ("x-R@1", ("cross_model", "recall_at_k", "1")),
)
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"


def _get(report: dict, path: tuple[str, ...]):
    for key in path:
        report = report[key]
    return report


def _metrics(report: dict) -> dict[str, float]:
    return {name: _get(report, path) for name, path in METRICS}


def _student(args: tuple) -> tuple[str, int, dict]:
    """One student run in a worker process (one torch thread, so --jobs processes share the cores)."""
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev
    from distill.training.student import StudentConfig, train_student

    recipe, seed, store, gallery_store, out, epochs = args
    train_student(
        StudentConfig(
            store=store,
            dataset="digits",
            out=Path(out),
            recipe=recipe,
            epochs=epochs,
            seed=seed,
            overwrite=True,
            progress=False,
        )
    )
    report = ev.run_eval(ev.EvalRequest(model=out, dataset="digits", gallery_store=gallery_store)).report
    return recipe, seed, _metrics(report)


def _sh_teacher(args: tuple) -> tuple[int, str, float]:
    import torch

    torch.set_num_threads(1)
    from distill.models.checkpoint import load_teacher_source
    from distill.training.teacher import TeacherConfig, train_teacher
    from featstore.datasets import load_dataset
    from featstore.extract import extract_teacher

    seed, student, out, store, epochs = args
    result = train_teacher(
        TeacherConfig(
            dataset="digits",
            out=Path(out),
            epochs=epochs,
            seed=seed,
            head_from=Path(student),
            overwrite=True,
            progress=False,
        )
    )
    extract_teacher(
        load_teacher_source(out), load_dataset("digits"), store, views=2, seed=0, overwrite=True, progress=False
    )
    return seed, store, result.test_accuracy


def _summary(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:  # one seed has no spread: "± 0.00" would claim one
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_work" / "paper")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "paper_table.json")
    return parser.parse_args()


def train_reference(work: Path, teacher_epochs: int) -> tuple[Path, str, float, dict]:
    """The seed-0 teacher, its 2-view float16 store and its own report: (path, store, test top-1, report)."""
    import distill.evaluation as ev
    from distill.models.checkpoint import load_teacher_source
    from distill.training.teacher import TeacherConfig, train_teacher
    from featstore.datasets import load_dataset
    from featstore.extract import extract_teacher

    teacher = work / "teacher.pt"
    store = str(work / "teacher.zarr")
    t = train_teacher(
        TeacherConfig(dataset="digits", out=teacher, epochs=teacher_epochs, overwrite=True, progress=False)
    )
    extract_teacher(
        load_teacher_source(teacher), load_dataset("digits"), store, views=2, overwrite=True, progress=False
    )
    report = ev.run_eval(ev.EvalRequest(model=teacher, dataset="digits", gallery_store=store)).report
    print(f"teacher: test top-1 {t.test_accuracy:.4f}", flush=True)
    return teacher, store, t.test_accuracy, report


def train_students(args: argparse.Namespace, store: str) -> tuple[dict[str, list[dict]], list[float]]:
    """Every recipe × seed from the store, then SH-KD per seed; returns the metrics per method and the SH-KD
    teachers' test top-1."""
    work = args.workdir
    results: dict[str, list[dict]] = {}
    jobs = [(r, s, store, store, str(work / f"{r}_s{s}.pt"), args.epochs) for r in RECIPES for s in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        for recipe, seed, metrics in pool.map(_student, jobs):
            results.setdefault(recipe, []).append(metrics)
            print(f"{recipe:8s} seed {seed}: {metrics}", flush=True)
        # SH-KD: teacher trained with each seed's vanilla student head, then a CRD+KD student from it
        sh_jobs = [
            (
                s,
                str(work / f"vanilla_s{s}.pt"),
                str(work / f"teacher_sh_s{s}.pt"),
                str(work / f"teacher_sh_s{s}.zarr"),
                args.teacher_epochs,
            )
            for s in range(args.seeds)
        ]
        sh = list(pool.map(_sh_teacher, sh_jobs))
        sh_students = [
            ("crd-kd", s, sh_store, store, str(work / f"shkd_s{s}.pt"), args.epochs) for s, sh_store, _ in sh
        ]
        for _, seed, metrics in pool.map(_student, sh_students):
            results.setdefault("sh-kd", []).append(metrics)
            print(f"sh-kd    seed {seed}: {metrics}", flush=True)
    return results, [acc for _, _, acc in sh]


def render_table(args, teacher_report: dict, teacher_top1: float, results: dict, sh_top1: list[float], seconds) -> str:
    import torch

    rows = [
        "| teacher (convnet_teacher, 1 run) | "
        + " | ".join(f"{100 * _metrics(teacher_report)[m]:.2f}" for m, _ in METRICS)
        + " |"
    ]
    for recipe in (*RECIPES, "sh-kd"):
        cells = [_summary([r[m] for r in results[recipe]]) for m, _ in METRICS]
        rows.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(
        [
            f"digits test split (450 images); student `convnet_student` ({args.epochs} epochs) streamed from a 2-view "
            f"float16 store of `convnet_teacher` ({args.teacher_epochs} epochs); mean ± std over {args.seeds} seeds, %. "
            "x-R@1: student queries against the teacher's stored train-split gallery. "
            f"SH-KD teachers (student head frozen): test top-1 {_summary(sh_top1)} vs {100 * teacher_top1:.2f} "
            "for the ordinary teacher.",
            "",
            "| method | " + " | ".join(m for m, _ in METRICS) + " |",
            "|---|" + "---:|" * len(METRICS),
            *rows,
            "",
            f"Generated by `python -m benchmarks.paper_table --seeds {args.seeds} --epochs {args.epochs}` in "
            f"{seconds:.0f} s on {platform.machine()} ({os.cpu_count()} cores), "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        ]
    )


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    _, store, teacher_top1, teacher_report = train_reference(args.workdir, args.teacher_epochs)
    results, sh_top1 = train_students(args, store)
    table = render_table(args, teacher_report, teacher_top1, results, sh_top1, time.perf_counter() - started)
    replace_marked(args.out, START, END, table)
    raw = {
        "teacher": _metrics(teacher_report),
        "sh_teacher_top1": sh_top1,
        "students": results,
        "seeds": args.seeds,
        "epochs": args.epochs,
    }
    write_json(args.json, raw)
    print(table)


if __name__ == "__main__":
    main()
