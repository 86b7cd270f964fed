"""``fsd train-student``: train a student from a feature store with a distillation recipe."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cli.options import config_option, data_options, optim_options, run_options, split_fields
from distill.losses import RECIPES
from distill.models import MODELS
from distill.training.amp import AMP_DTYPES
from distill.training.common import OptimConfig
from distill.training.student import StudentConfig, train_student
from featstore.stream import VIEW_SAMPLING

S = StudentConfig
PATH = click.Path(dir_okay=False, path_type=Path)


@click.command("train-student")
@config_option(S, "store", metavar="STORE", help="Feature store written by extract-teacher.")
@config_option(
    S,
    "online_teacher",
    type=str,
    metavar="TEACHER",
    help="Baseline instead of --store: run this teacher (any teacher spec, as extract-teacher takes) at every step.",
)
@config_option(S, "views", help="With --online-teacher: views per sample (drawn as extract-teacher draws them).")
@config_option(S, "view_seed", help="With --online-teacher: the extraction seed whose views are replayed.")
@data_options("train")
@config_option(
    S,
    "arch",
    metavar="ARCH",
    help="Student architecture, one of: "
    + ", ".join(MODELS.names())
    + "; or timm:NAME, torchvision:NAME, or module:function (Python code returning an nn.Module; needs --trust-code).",
)
@click.option("--out", type=PATH, required=True, help="Checkpoint to write.")
@config_option(S, "recipe", help=f"One of: {', '.join(RECIPES)}.")
@config_option(S, "loss", metavar="NAME=W,...", help='Override/add loss weights, e.g. "ce=1,kd=1.5,th=0.02".')
@config_option(
    S,
    "th_alpha",
    type=float,
    help="Paper form of TH-KD: share CE and KD between the heads (0–1); a recipe's own TH weight is added to (docs/methods.md).",
)
@config_option(S, "temperature", help="KD temperature T.")
@config_option(S, "epochs")
@config_option(S, "batch_size")
@optim_options()
@click.option(
    "--amp",
    type=click.Choice(["auto", *AMP_DTYPES]),
    default=None,
    is_flag=False,
    flag_value="auto",
    help="Mixed precision: bf16 (CPU, CUDA) or fp16 (CUDA, with loss scaling); --amp alone picks.",
)
@config_option(S, "view_sampling", type=click.Choice(VIEW_SAMPLING), help="Stored view per sample: random|cycle.")
@config_option(
    S,
    "samples_per_class",
    type=int,
    metavar="K",
    help="Class-balanced batches: --batch-size / K classes × K samples each (for the triplet loss's positives).",
)
@config_option(S, "embedding_dim", type=int, help="Student embedding size (default: the teacher's, else projected).")
@config_option(S, "init_head_from_teacher", help="Initialise the student's classifier from the teacher's.")
@config_option(S, "skip_bad_chunks", help="Skip store chunks that fail to decode or hold NaN/Inf (default: error).")
@config_option(S, "plot", type=PATH, help="Write training curves (each loss term, test accuracy) as PNG.")
@config_option(S, "tensorboard", type=click.Path(file_okay=False, path_type=Path), help="TensorBoard log folder.")
@config_option(S, "trust_code", help="Allow module:function teachers and students (runs that Python code).")
@config_option(S, "resume", help="Continue an interrupted run from STUDENT.resume.pt (last complete epoch).")
@run_options()
def command(quiet: bool, **options) -> None:
    """Train a student by streaming teacher embeddings from STORE (the teacher never runs).

    Writes the checkpoint and a JSON training log beside it (STUDENT.log.json); after every epoch the
    full training state goes to STUDENT.resume.pt, so --resume continues from the last complete epoch.
    Under torchrun (e.g. `torchrun --nproc-per-node 2 $(which fsd) train-student …`) each rank reads its
    own share of the store's chunks; rank 0 writes the outputs.

    Example: fsd train-student --store store.zarr --dataset digits --out student.pt --recipe th-kd
    """
    optim = OptimConfig(**split_fields(options, OptimConfig))
    result = train_student(StudentConfig(**options, optim=optim, progress=not quiet))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    test = "n/a" if result.test_accuracy is None else f"{100 * result.test_accuracy:.2f}%"
    click.echo(
        f"student {result.path} [{options['recipe']}]: {result.parameters:,} parameters, test top-1 {test}, "
        f"{result.seconds:.1f} s; log {result.log_path}"
    )
