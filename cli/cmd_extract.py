"""``fsd extract-teacher``: run the teacher once and write (or resume) the feature store."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from cli.options import (
    dataset_option,
    device_option,
    dtype_choice,
    image_size_option,
    loader_workers_option,
    overwrite_option,
    quiet_option,
    seed_option,
    skip_bad_samples_option,
    split_option,
)
from distill.models.inference import select_device
from distill.models.teachers import load_teacher
from featstore.dask_extract import extract_teacher_distributed
from featstore.datasets import LoadOptions, load_dataset
from featstore.datasets.base import renders_any_size
from featstore.extract import extract_teacher


@click.command("extract-teacher")
@click.option(
    "--teacher",
    required=True,
    metavar="TEACHER",
    help="fsd teacher checkpoint, torchscript:PATH, or module:function (needs --trust-code).",
)
@click.option("--trust-code", is_flag=True, help="Allow a module:function teacher (it runs that Python code).")
@dataset_option()
@split_option("train")
@click.option("--out", required=True, metavar="STORE", help="Store path or fsspec URL (e.g. store.zarr).")
@click.option("--views", type=int, default=1, show_default=True, help="Views per sample (view 0 = identity).")
@click.option("--dtype", type=dtype_choice, default="float16", show_default=True)
@click.option("--chunk-rows", type=int, default=None, help="Samples per chunk (default: a few MB per chunk).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@seed_option
@device_option
@click.option(
    "--workers",
    type=int,
    default=None,
    metavar="N",
    help="Extract with a local dask cluster of N worker processes (on CUDA each is pinned to one GPU, "
    "round-robin: N = number of GPUs gives one worker per GPU).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDR",
    help="Extract on an existing dask cluster (e.g. tcp://host:8786); its workers must see the paths.",
)
@image_size_option
@loader_workers_option
@skip_bad_samples_option
@overwrite_option
@quiet_option
def command(
    teacher,
    trust_code,
    dataset,
    split,
    out,
    views,
    dtype,
    chunk_rows,
    batch_size,
    seed,
    device,
    workers,
    scheduler,
    image_size,
    loader_workers,
    skip_bad_samples,
    overwrite,
    quiet,
):
    """Embed every (sample, view) with the teacher and write a Zarr feature store.

    Re-running the same command resumes an interrupted extraction (only missing chunks are computed);
    a store made from another teacher, dataset or view setting is refused unless --overwrite.

    With --workers N or --scheduler ADDR the chunks are computed by dask workers (same bytes as a
    single-process run).

    Example: fsd extract-teacher --teacher teacher.pt --dataset digits --out store.zarr --views 2
    """
    options = {
        "views": views,
        "dtype": dtype,
        "chunk_rows": chunk_rows,
        "batch_size": batch_size,
        "seed": seed,
        "overwrite": overwrite,
        "progress": not quiet,
    }
    if workers is not None or scheduler is not None:
        if image_size is None and renders_any_size(dataset):  # the teacher's own input size
            image_size = _input_size(load_teacher(teacher, trust_code=trust_code))
        # Workers load the teacher themselves: pass a picklable loader and an absolute path.
        spec = str(Path(teacher).absolute()) if Path(teacher).exists() else teacher
        loader = functools.partial(load_teacher, trust_code=trust_code)
        summary = extract_teacher_distributed(
            (loader, spec),
            dataset,
            split,
            out,
            device=select_device(device),
            workers=workers,
            scheduler=scheduler,
            image_size=image_size,
            skip_bad_samples=skip_bad_samples,
            **options,
        )
    else:
        source = load_teacher(teacher, trust_code=trust_code)
        if image_size is None and renders_any_size(dataset):
            image_size = _input_size(source)
        load = LoadOptions(workers=loader_workers, skip_bad_samples=skip_bad_samples)
        summary = extract_teacher(
            source,
            load_dataset(dataset, split, image_size=image_size, options=load),
            out,
            device=select_device(device),
            **options,
        )
    click.echo(summary.line())


def _input_size(teacher) -> int | None:
    """The square input size a teacher was trained at (None when it accepts any input)."""
    shape = teacher.input_shape
    return int(shape[-1]) if shape else None
