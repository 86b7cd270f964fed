"""``fsd demo``: the whole pipeline on bundled digits, ending with a comparison table."""

from __future__ import annotations

from pathlib import Path

import click

from distill.demo import run_demo


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where the teacher, store, students, reports and ROC plot go (demo files are replaced).",
)
@click.option("--epochs", type=int, default=30, show_default=True, help="Epochs for teacher and students.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(workdir: Path, epochs: int, quiet: bool) -> None:
    """Train a teacher on digits, extract a 2-view store, train vanilla/kd/th-kd/kde-th students, evaluate all.

    Example: fsd demo --workdir demo
    """
    run_demo(workdir, teacher_epochs=epochs, student_epochs=epochs, progress=not quiet, echo=click.echo)
