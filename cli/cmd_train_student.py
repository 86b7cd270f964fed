"""``fsd train-student``: train a student from a feature store with a distillation recipe."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cli.options import dataset_option, device_option, overwrite_option, quiet_option, seed_option, split_option
from distill.losses import RECIPES
from distill.training.common import OptimConfig
from distill.training.student import StudentConfig, train_student
from featstore.stream import VIEW_SAMPLING


@click.command("train-student")
@click.option("--store", default=None, metavar="STORE", help="Feature store written by extract-teacher.")
@click.option(
    "--online-teacher",
    default=None,
    metavar="TEACHER",
    help="Baseline instead of --store: run this teacher (any teacher spec, as extract-teacher) at every step.",
)
@click.option(
    "--views",
    type=int,
    default=2,
    show_default=True,
    help="With --online-teacher: views per sample (drawn exactly as extract-teacher draws them).",
)
@click.option(
    "--view-seed",
    type=int,
    default=0,
    show_default=True,
    help="With --online-teacher: the extraction seed whose views are replayed.",
)
@dataset_option()
@split_option("train")
@click.option("--arch", default="convnet_student", show_default=True, help="Registered model name.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--recipe", default="th-kd", show_default=True, help=f"One of: {', '.join(RECIPES)}.")
@click.option(
    "--loss",
    "loss_spec",
    default=None,
    metavar="NAME=W,...",
    help='Override/add loss weights, e.g. "ce=1,kd=1.5,th=0.02".',
)
@click.option(
    "--th-alpha",
    type=float,
    default=None,
    help="Paper form of TH-KD: share CE and KD between the student head and the teacher head (0–1).",
)
@click.option("--temperature", type=float, default=4.0, show_default=True, help="KD temperature T.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option(
    "--view-sampling",
    type=click.Choice(VIEW_SAMPLING),
    default="random",
    show_default=True,
    help="Which stored view each sample gets per epoch: random, or cycle through them.",
)
@click.option(
    "--embedding-dim",
    type=int,
    default=None,
    help="Student embedding size (default: the teacher's; otherwise a projection to it is trained).",
)
@click.option("--init-head-from-teacher", is_flag=True, help="Initialise the student's classifier from the teacher's.")
@click.option(
    "--skip-bad-chunks",
    is_flag=True,
    help="Skip store chunks that fail to decode or hold NaN/Inf (default: stop with an error).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write training curves (each loss term, test accuracy) as PNG.",
)
@click.option(
    "--tensorboard",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also log per-epoch scalars to this TensorBoard directory (needs tensorboard).",
)
@click.option(
    "--trust-code", is_flag=True, help="Allow module:function teachers and students (runs that Python code)."
)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run from STUDENT.resume.pt (last complete epoch)."
)
@seed_option
@device_option
@overwrite_option
@quiet_option
def command(
    store,
    online_teacher,
    views,
    view_seed,
    dataset,
    split,
    arch,
    out,
    recipe,
    loss_spec,
    th_alpha,
    temperature,
    epochs,
    batch_size,
    lr,
    view_sampling,
    embedding_dim,
    init_head_from_teacher,
    skip_bad_chunks,
    plot,
    tensorboard,
    trust_code,
    resume,
    seed,
    device,
    overwrite,
    quiet,
):
    """Train a student by streaming teacher embeddings from STORE (the teacher never runs).

    Writes the checkpoint and a JSON training log beside it (STUDENT.log.json); after every epoch the
    full training state goes to STUDENT.resume.pt, so --resume continues from the last complete epoch.
    Under torchrun (e.g. `torchrun --nproc-per-node 2 $(which fsd) train-student …`) each rank reads its
    own share of the store's chunks; rank 0 writes the outputs.

    Example: fsd train-student --store store.zarr --dataset digits --out student.pt --recipe th-kd
    """
    result = train_student(
        StudentConfig(
            store=store,
            online_teacher=online_teacher,
            views=views,
            view_seed=view_seed,
            dataset=dataset,
            split=split,
            arch=arch,
            out=out,
            recipe=recipe,
            loss=loss_spec,
            th_alpha=th_alpha,
            temperature=temperature,
            epochs=epochs,
            batch_size=batch_size,
            optim=OptimConfig(lr=lr),
            seed=seed,
            view_sampling=view_sampling,
            embedding_dim=embedding_dim,
            init_head_from_teacher=init_head_from_teacher,
            skip_bad_chunks=skip_bad_chunks,
            plot=plot,
            tensorboard=tensorboard,
            trust_code=trust_code,
            resume=resume,
            device=device,
            overwrite=overwrite,
            progress=not quiet,
        )
    )
    test = "n/a" if result.test_accuracy is None else f"{100 * result.test_accuracy:.2f}%"
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    click.echo(
        f"student {out} [{recipe}]: {result.parameters:,} parameters, test top-1 {test}, "
        f"{result.seconds:.1f} s; log {result.log_path}"
    )
