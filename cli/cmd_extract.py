"""``fsd extract-teacher``: run the teacher once and write (or resume) the feature store."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from cli.options import (
    TEACHER_SPEC_HELP,
    dataset_option,
    device_option,
    dtype_choice,
    overwrite_option,
    quiet_option,
    seed_option,
    split_option,
)
from distill.models.inference import select_device
from distill.models.teachers import load_teacher
from featstore.dask_extract import extract_teacher_distributed
from featstore.datasets import load_dataset
from featstore.extract import extract_teacher


@click.command("extract-teacher")
@click.option(
    "--teacher",
    required=True,
    metavar="TEACHER",
    help=TEACHER_SPEC_HELP,
)
@click.option("--trust-code", is_flag=True, help="Allow a module:function teacher (it runs that Python code).")
@click.option(
    "--drop-head",
    is_flag=True,
    help="Leave the teacher's classifier out of the store (e.g. one over other classes); fit one later with "
    "fsd store fit-head.",
)
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
@overwrite_option
@quiet_option
def command(
    teacher,
    trust_code,
    drop_head,
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
    overwrite,
    quiet,
):
    """Embed every (sample, view) with the teacher and write a Zarr feature store.

    Re-running the same command resumes an interrupted extraction (only missing chunks are computed);
    a store made from another teacher, dataset or view setting is refused unless --overwrite.

    With --workers N or --scheduler ADDR the chunks are computed by dask workers (same bytes as a
    single-process run).

    A teacher without a classifier (an ONNX face model, a timm backbone) gives a head-less store: fit
    its head with fsd store fit-head before TH-KD.

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
        # Workers load the teacher themselves: pass a picklable loader and an absolute path.
        spec = str(Path(teacher).absolute()) if Path(teacher).exists() else teacher
        loader = functools.partial(load_teacher, trust_code=trust_code, drop_head=drop_head)
        summary = extract_teacher_distributed(
            (loader, spec),
            dataset,
            split,
            out,
            device=select_device(device),
            workers=workers,
            scheduler=scheduler,
            **options,
        )
    else:
        summary = extract_teacher(
            load_teacher(teacher, trust_code=trust_code, drop_head=drop_head),
            load_dataset(dataset, split),
            out,
            device=select_device(device),
            **options,
        )
    click.echo(summary.line())
