"""Options shared by several commands, as decorators, so every command spells them the same way."""

from __future__ import annotations

import click

from distill.models.inference import DEVICES
from featstore.codecs import DTYPES
from featstore.datasets import SPLITS

TEACHER_SPEC_HELP = (
    "fsd checkpoint, onnx:PATH[?size=112&mean=127.5&std=127.5], timm:NAME[?weights=PATH], "
    "torchvision:NAME[?weights=PATH], torchscript:PATH, or module:function (needs --trust-code)."
)
"""What every option naming a model (--teacher, --model, --online-teacher) accepts: one factory behind all."""


def dataset_option(required: bool = True):
    return click.option(
        "--dataset",
        "dataset",
        required=required,
        metavar="SPEC",
        help="Dataset spec: digits | cifar100:DIR | folder:DIR.",
    )


def split_option(default: str):
    return click.option("--split", type=click.Choice(SPLITS), default=default, show_default=True, help="Dataset split.")


device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="auto = CUDA when present, else CPU.",
)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
dtype_choice = click.Choice(DTYPES)
