"""The demo: the whole fsd pipeline on scikit-learn's bundled digits, end to end, in about a minute.

teacher → 2-view float16 store → students (vanilla, kd, th-kd, kde-th) streamed from the store → FAISS
evaluation of all of them → one comparison table. Everything it makes stays in the work directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distill.evaluation as ev
from distill.models.checkpoint import load_teacher_source
from distill.training.student import StudentConfig, train_student
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.atomic import atomic_write_text
from featstore.datasets import load_dataset
from featstore.extract import extract_teacher

DEMO_RECIPES = ("vanilla", "kd", "th-kd", "kde-th")
DEMO_COLUMNS = ev.SUMMARY_COLUMNS + (("x-R@1", ("cross_model", "recall_at_k", "1")),)


@dataclass
class DemoResult:
    """What the demo leaves behind.

    Attributes:
        workdir: The folder holding every file of the demo.
        table: The printed comparison table.
        reports: Each model's eval report, by model name.
        seconds: The demo's wall-clock time.
        store_bytes: Bytes the teacher's store takes on disk.
        compression_ratio: How many times smaller than float32 the store is.
    """

    workdir: Path
    table: str
    reports: dict[str, dict[str, Any]]
    seconds: float
    store_bytes: int
    compression_ratio: float


# ~90 lines: the demo is the pipeline read top to bottom (teacher → store → students → reports), on purpose.
def run_demo(
    workdir: str | Path = "demo",
    *,
    teacher_epochs: int = 30,
    student_epochs: int = 30,
    seed: int = 0,
    recipes: tuple[str, ...] = DEMO_RECIPES,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole pipeline on digits: teacher, store, students, evaluation and the comparison table.

    Args:
        workdir: The folder the demo writes to (created if needed; the demo's own files in it are replaced).
        teacher_epochs: Epochs of teacher training.
        student_epochs: Epochs of each student's training.
        seed: Seeds every step of the demo.
        recipes: The student recipes trained and compared.
        progress: Whether to show progress bars.
        echo: Where the demo's lines go.

    Returns:
        The table, the reports and the store's size.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    teacher_path = workdir / "teacher.pt"
    store_url = str(workdir / "teacher_digits.zarr")

    echo(f"[1/4] training the teacher → {teacher_path}")
    teacher = train_teacher(
        TeacherConfig(
            dataset="digits", out=teacher_path, epochs=teacher_epochs, seed=seed, overwrite=True, progress=progress
        )
    )
    echo(
        f"      {teacher.parameters:,} parameters, test top-1 {100 * (teacher.test_accuracy or 0):.2f}%, "
        f"{teacher.seconds:.1f} s"
    )

    echo(f"[2/4] extracting a 2-view float16 store → {store_url}")
    summary = extract_teacher(
        load_teacher_source(teacher_path),
        load_dataset("digits", "train"),
        store_url,
        views=2,
        dtype="float16",
        seed=seed,
        overwrite=True,
        progress=progress,
    )
    echo(f"      {summary.line()}")

    students: dict[str, Path] = {}
    for i, recipe in enumerate(recipes):
        out = workdir / f"student_{recipe}.pt"
        echo(f"[3/4] student {i + 1}/{len(recipes)} [{recipe}] → {out}")
        result = train_student(
            StudentConfig(
                store=store_url,
                dataset="digits",
                out=out,
                recipe=recipe,
                epochs=student_epochs,
                seed=seed,
                overwrite=True,
                progress=progress,
            )
        )
        echo(
            f"      {result.parameters:,} parameters, test top-1 {100 * (result.test_accuracy or 0):.2f}%, "
            f"{result.seconds:.1f} s"
        )
        students[recipe] = out

    echo("[4/4] evaluating on the digits test split (FAISS)")
    models = {"teacher": teacher_path, **{f"student {r}": p for r, p in students.items()}}
    reports, curves = _evaluate(workdir, store_url, models)
    ev.plot_roc(curves, workdir / "roc.png", title="digits test — ROC")
    table = ev.comparison_table(reports, DEMO_COLUMNS)
    seconds = time.perf_counter() - started
    atomic_write_text(
        workdir / "demo_summary.json",
        json.dumps(
            {
                "seconds": seconds,
                "store": {
                    "url": store_url,
                    "bytes": summary.bytes_stored,
                    "compression_ratio": summary.compression_ratio,
                },
                "reports": reports,
            },
            indent=2,
        ),
    )
    echo("")
    echo(table)
    echo("")
    echo("x-R@1: student queries (test) against the teacher's stored gallery (train) — the shared-head compatibility.")
    echo(
        f"demo finished in {seconds:.1f} s; store {summary.bytes_stored / 1e6:.2f} MB "
        f"({summary.compression_ratio:.2f}× smaller than float32); files in {workdir}/"
    )
    return DemoResult(workdir, table, reports, seconds, summary.bytes_stored, summary.compression_ratio)


def _evaluate(workdir: Path, store_url: str, models: dict[str, Path]) -> tuple[dict[str, dict[str, Any]], dict]:
    """Each model on the digits test split, cross-model against the teacher's store.

    The evaluation is the request that ``fsd eval`` runs; each report is written beside the model as
    ``report_<stem>.json``.
    """
    reports: dict[str, dict[str, Any]] = {}
    curves = {}
    for name, path in models.items():
        out = workdir / f"report_{path.stem}.json"
        result = ev.run_eval(
            ev.EvalRequest(model=path, dataset="digits", gallery_store=store_url, out=out, overwrite=True)
        )
        reports[name] = result.report
        curves[name] = result.curves[""]
    return reports, curves
