"""``fsd extract-teacher``: run the teacher once and write (or resume) the feature store."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import (
    TEACHER_SPEC_HELP,
    config_option,
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
    trust_code_option,
)
from distill.models.binding import ModelSpec
from distill.models.inference import select_device
from featstore.extract import DaskExecutor, ExtractConfig, extract_store

E = ExtractConfig


@click.command("extract-teacher")
@click.option(
    "--teacher",
    required=True,
    metavar="TEACHER",
    help=TEACHER_SPEC_HELP,
)
@trust_code_option
@click.option(
    "--drop-head",
    is_flag=True,
    help="Leave the teacher's classifier out of the store (e.g. one over other classes); fit one later with "
    "fsd store fit-head.",
)
@dataset_option()
@split_option("train")
@click.option("--out", required=True, metavar="STORE", help="Store path or fsspec URL (e.g. store.zarr).")
@config_option(E, "views", help="Views per sample (view 0 = identity).")
@config_option(E, "dtype", type=dtype_choice)
@config_option(E, "chunk_rows", type=int, help="Samples per chunk (default: a few MB per chunk).")
@config_option(E, "batch_size")
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
def command(teacher, trust_code, drop_head, device, workers, scheduler, quiet, **options):
    """Embed every (sample, view) with the teacher and write a Zarr feature store.

    Re-running the same command resumes an interrupted extraction (only missing chunks are computed);
    a store made from another teacher, dataset or view setting is refused unless --overwrite.

    With --workers N or --scheduler ADDR the chunks are computed by dask workers (same bytes as a
    single-process run).

    A teacher without a classifier (an ONNX face model, a timm backbone) gives a head-less store: fit
    its head with fsd store fit-head before TH-KD.

    Example: fsd extract-teacher --teacher teacher.pt --dataset digits --out store.zarr --views 2
    """
    config = ExtractConfig(**options, device=str(select_device(device)), progress=not quiet)
    executor = None if workers is None and scheduler is None else DaskExecutor(workers=workers, scheduler=scheduler)
    # A picklable binder and an absolute path: dask workers bind the teacher themselves.
    spec = str(Path(teacher).absolute()) if executor is not None and Path(teacher).exists() else teacher
    summary = extract_store(config, ModelSpec(spec, trust_code=trust_code, drop_head=drop_head), executor)
    click.echo(summary.line())
