"""Margin heads on digits-as-identities: does distilling from an ArcFace/CosFace teacher improve the
student's verification over vanilla? Writes a section of docs/results.md.

    python -m benchmarks.margin_heads [--seeds 3] [--epochs 30]

Each digit class is treated as an identity; verification is TAR@FAR over all test pairs (docs/evaluation.md).
For each teacher head (linear, arcface, cosface): one teacher, a 2-view store, then students (vanilla,
th-kd, kde-th) per seed; TH-KD with a margin head uses the margin-free cosine logits × s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.results_md import replace_marked

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- margin-table:start -->", "<!-- margin-table:end -->"
HEADS = ("linear", "arcface", "cosface")
RECIPES = ("vanilla", "th-kd", "kde-th")


def _student(args):
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev
    from distill.training.student import StudentConfig, train_student

    head, recipe, seed, store, out, epochs = args
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
    report = ev.run_eval(ev.EvalRequest(model=out, dataset="digits")).report
    v = report["verification"]
    return (
        head,
        recipe,
        {
            "tar_1e-3": v["tar_at_far"]["1e-03"],
            "tar_1e-2": v["tar_at_far"]["1e-02"],
            "auc": v["roc_auc"],
            "map_at_r": report["retrieval"]["map_at_r"],
        },
    )


def _teacher(args):
    import torch

    torch.set_num_threads(1)
    import distill.evaluation as ev
    from distill.models.checkpoint import load_teacher_source
    from distill.training.teacher import TeacherConfig, train_teacher
    from featstore.datasets import load_dataset
    from featstore.extract import extract_teacher

    head, work, epochs = args
    teacher = Path(work) / f"teacher_{head}.pt"
    store = str(Path(work) / f"teacher_{head}.zarr")
    train_teacher(
        TeacherConfig(dataset="digits", out=teacher, head=head, epochs=epochs, overwrite=True, progress=False)
    )
    extract_teacher(
        load_teacher_source(teacher), load_dataset("digits"), store, views=2, overwrite=True, progress=False
    )
    report = ev.run_eval(ev.EvalRequest(model=teacher, dataset="digits")).report
    return head, store, report["verification"]["tar_at_far"]["1e-03"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_work" / "margin")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        teachers = {
            h: (store, tar)
            for h, store, tar in pool.map(_teacher, [(h, str(args.workdir), args.epochs) for h in HEADS])
        }
        jobs = [
            (h, r, s, teachers[h][0], str(args.workdir / f"{h}_{r}_s{s}.pt"), args.epochs)
            for h in HEADS
            for r in RECIPES
            for s in range(args.seeds)
        ]
        results: dict = {}
        for head, recipe, metrics in pool.map(_student, jobs):
            results.setdefault((head, recipe), []).append(metrics)
            print(head, recipe, metrics, flush=True)

    def cell(values):
        if len(values) < 2:  # one seed has no spread (and statistics.stdev refuses it)
            return f"{100 * statistics.fmean(values):.2f}"
        return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"

    rows = []
    for head in HEADS:
        for recipe in RECIPES:
            r = results[(head, recipe)]
            rows.append(
                f"| {head} | {recipe} | "
                + " | ".join(cell([m[k] for m in r]) for k in ("tar_1e-3", "tar_1e-2", "auc", "map_at_r"))
                + " |"
            )
    teacher_line = ", ".join(f"{h} {100 * teachers[h][1]:.2f}" for h in HEADS)
    table = "\n".join(
        [
            f"Digits as identities; students `convnet_student`, {args.epochs} epochs, 2-view float16 stores, "
            f"mean ± std over {args.seeds} seeds, %. Teachers' own TAR@1e-3: {teacher_line}. (vanilla students do "
            "not use the teacher; their rows differ across heads only by the store's views.)",
            "",
            "| teacher head | student recipe | TAR@1e-3 | TAR@1e-2 | ROC AUC | MAP@R |",
            "|---|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Generated by `python -m benchmarks.margin_heads --seeds {args.seeds}` in {time.perf_counter() - started:.0f} s.",
        ]
    )
    replace_marked(args.out, START, END, table, heading="## Margin heads (ArcFace, CosFace) on digits-as-identities")
    print(table)


if __name__ == "__main__":
    main()
