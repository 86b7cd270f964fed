"""Options shared by several commands, as decorators, so every command spells them the same way.

``config_option`` takes an option's default from the library's config dataclass, so each default is written
once, in the config, and the CLI cannot drift from the Python API.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from distill.models.inference import DEVICES
from distill.training.common import OPTIMIZERS, OptimConfig
from featstore.codecs import DTYPES
from featstore.datasets import SPLITS

TEACHER_SPEC_HELP = (
    "fsd checkpoint, onnx:PATH[?size=112&mean=127.5&std=127.5], timm:NAME[?weights=PATH], "
    "torchvision:NAME[?weights=PATH], torchscript:PATH, or module:function (needs --trust-code)."
)
"""What every option naming a model (--teacher, --model, --online-teacher) accepts: one factory behind all."""


def dataset_option(required: bool = True):
    """``--dataset SPEC``, required unless ``required`` is False."""
    return click.option(
        "--dataset",
        "dataset",
        required=required,
        metavar="SPEC",
        help="Dataset spec: digits | cifar100:DIR | folder:DIR[?size=S|H,W] | mxrec:DIR[?size=S] | idx:DIR (idx: = Debian's Fashion-MNIST).",
    )


def split_option(default: str):
    """``--split``, one of the dataset splits, defaulting to ``default``."""
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
trust_code_option = click.option(
    "--trust-code", is_flag=True, help="Allow a module:function model (it runs that Python code)."
)


def config_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (its default_factory called, if that is how it is set)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return None  # required by the config, but optional on the command line (e.g. --store vs --online-teacher)
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def config_option(cls: type, name: str, *decls: str, **kwargs: Any):
    """``click.option`` whose default is the config dataclass's (shown in --help unless it is None)."""
    default = config_default(cls, name)
    kwargs.setdefault("show_default", default is not None and not isinstance(default, bool))
    if isinstance(default, bool) and default is False and "is_flag" not in kwargs:
        kwargs["is_flag"] = True
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), name, default=default, **kwargs)


def split_fields(options: dict[str, Any], cls: type) -> dict[str, Any]:
    """Pop from ``options`` the entries that are fields of dataclass ``cls`` (to build a nested config)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: options.pop(k) for k in list(options) if k in names}


image_size_option = click.option(
    "--image-size",
    type=click.IntRange(min=1),
    default=None,
    metavar="S",
    help="Render views at S×S (datasets read from files; default: the spec's size=, or the model's input size).",
)
loader_workers_option = click.option(
    "--loader-workers",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="DataLoader processes decoding images (datasets read from files; default: CPUs - 1, at most 8).",
)
skip_bad_samples_option = click.option(
    "--skip-bad-samples",
    is_flag=True,
    help="Leave unreadable images/records out (counted in the store's provenance) instead of stopping.",
)
eval_split_option = click.option(
    "--eval-split",
    "eval_split",
    type=click.Choice([*SPLITS, "none"]),
    default="test",
    show_default=True,
    callback=lambda _ctx, _param, value: None if value == "none" else value,
    help="Split scored after every epoch (none: no evaluation, e.g. a RecordIO set without a test split).",
)


def compose(*decorators):
    """Combine ``decorators`` into one that applies them in the order they are listed.

    The first is the outermost, so ``--help`` lists the options in that order.
    """

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def data_options(split: str = "train"):
    """The data options of both trainers: dataset, split, evaluation split, image size and loader workers.

    Args:
        split: The default of ``--split``.
    """
    return compose(dataset_option(), split_option(split), eval_split_option, image_size_option, loader_workers_option)


def optim_options():
    """An option for every field of :class:`~distill.training.common.OptimConfig`, for both trainers.

    The command splits them out with ``split_fields(options, OptimConfig)``.
    """
    return compose(
        config_option(OptimConfig, "lr", help="Peak learning rate, annealed per step by a cosine schedule to 0."),
        config_option(OptimConfig, "optimizer", type=click.Choice(OPTIMIZERS), help="SGD (with --momentum) or AdamW."),
        config_option(OptimConfig, "momentum", help="SGD momentum (AdamW ignores it)."),
        config_option(OptimConfig, "weight_decay", help="Weight decay of the optimiser."),
        config_option(
            OptimConfig, "warmup_epochs", help="Linear warm-up (from 1 % of --lr) before the cosine, in epochs."
        ),
        config_option(
            OptimConfig, "grad_clip", type=float, help="Clip the global gradient norm to this value every step."
        ),
    )


def run_options():
    """How a run executes and what it may replace: seed, device, --overwrite, --quiet."""
    return compose(seed_option, device_option, overwrite_option, quiet_option)
