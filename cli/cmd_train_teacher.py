"""``fsd train-teacher``: train a teacher with cross-entropy and save its checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import dataset_option, device_option, overwrite_option, quiet_option, seed_option, split_option
from distill.models.heads import HEADS
from distill.training.common import OptimConfig
from distill.training.teacher import TeacherConfig, train_teacher


@click.command("train-teacher")
@dataset_option()
@split_option("train")
@click.option("--arch", default="convnet_teacher", show_default=True, help="Registered model name.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--lr",
    type=float,
    default=0.05,
    show_default=True,
    help="Peak learning rate of SGD (momentum 0.9, weight decay 5e-4), annealed to 0 by a cosine schedule over all steps.",
)
@click.option("--embedding-dim", type=int, default=None, help="Embedding size (default: the arch's).")
@click.option(
    "--head",
    type=click.Choice(HEADS.names()),
    default="linear",
    show_default=True,
    help="Classifier head; arcface/cosface are margin heads.",
)
@click.option("--head-scale", type=float, default=None, help="Margin heads: logit scale s (default 30).")
@click.option("--head-margin", type=float, default=None, help="Margin heads: margin m (arcface 0.5, cosface 0.35).")
@click.option(
    "--head-from",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SH-KD: take this student checkpoint's classifier as the teacher's head, frozen.",
)
@seed_option
@device_option
@overwrite_option
@quiet_option
def command(
    dataset,
    split,
    arch,
    out,
    epochs,
    batch_size,
    lr,
    embedding_dim,
    head,
    head_scale,
    head_margin,
    head_from,
    seed,
    device,
    overwrite,
    quiet,
):
    """Train a teacher (CE, or a margin head: --head arcface|cosface) on a dataset split.

    \b
    Example: fsd train-teacher --dataset digits --out teacher.pt --epochs 30
    SH-KD:   fsd train-teacher --dataset digits --out teacher_sh.pt --head-from student.pt
    """
    result = train_teacher(
        TeacherConfig(
            dataset=dataset,
            split=split,
            arch=arch,
            out=out,
            epochs=epochs,
            batch_size=batch_size,
            optim=OptimConfig(lr=lr),
            embedding_dim=embedding_dim,
            head=head,
            head_scale=head_scale,
            head_margin=head_margin,
            head_from=head_from,
            seed=seed,
            device=device,
            overwrite=overwrite,
            progress=not quiet,
        )
    )
    test = "n/a" if result.test_accuracy is None else f"{100 * result.test_accuracy:.2f}%"
    click.echo(
        f"teacher {out}: {result.parameters:,} parameters, train top-1 {100 * result.train_accuracy:.2f}%, "
        f"test top-1 {test}, {result.seconds:.1f} s"
    )
