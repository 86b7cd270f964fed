"""``fsd train-teacher``: train a teacher with cross-entropy and save its checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import config_option, data_options, optim_options, run_options, split_fields
from distill.models import MODELS
from distill.models.heads import HEADS
from distill.training.common import OptimConfig
from distill.training.teacher import TeacherConfig, train_teacher

T = TeacherConfig
PATH = click.Path(dir_okay=False, path_type=Path)


@click.command("train-teacher")
@data_options("train")
@config_option(T, "arch", metavar="ARCH", help="Architecture, one of: " + ", ".join(MODELS.names()) + ".")
@click.option("--out", type=PATH, required=True, help="Checkpoint to write.")
@config_option(T, "epochs")
@config_option(T, "batch_size")
@optim_options()
@config_option(T, "embedding_dim", type=int, help="Embedding size (default: the arch's).")
@config_option(T, "head", type=click.Choice(HEADS.names()), help="Classifier head; arcface/cosface are margin heads.")
@config_option(T, "head_scale", type=float, help="Margin heads: logit scale s (default 30).")
@config_option(T, "head_margin", type=float, help="Margin heads: margin m (arcface 0.5, cosface 0.35).")
@config_option(T, "head_from", type=PATH, help="SH-KD: take this student checkpoint's classifier as the head, frozen.")
@config_option(
    T, "init_from", type=PATH, help="Start the backbone (not the head) from this teacher checkpoint (same --arch)."
)
@run_options()
def command(quiet: bool, **options) -> None:
    """Train a teacher (CE, or a margin head: --head arcface|cosface) on a dataset split.

    \b
    Example: fsd train-teacher --dataset digits --out teacher.pt --epochs 30
    SH-KD:   fsd train-teacher --dataset digits --out teacher_sh.pt --head-from student.pt
    """
    optim = OptimConfig(**split_fields(options, OptimConfig))
    result = train_teacher(TeacherConfig(**options, optim=optim, progress=not quiet))
    test = "n/a" if result.test_accuracy is None else f"{100 * result.test_accuracy:.2f}%"
    click.echo(
        f"teacher {result.path}: {result.parameters:,} parameters, train top-1 {100 * result.train_accuracy:.2f}%, "
        f"test top-1 {test}, {result.seconds:.1f} s"
    )
