"""``fsd store info|verify|export|import``: inspect, check, export and import feature stores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.options import (
    dataset_option,
    dtype_choice,
    image_size_option,
    loader_workers_option,
    overwrite_option,
    split_option,
)
from featstore.datasets import load_dataset
from featstore.errors import InvalidInput, OutputExists, StoreError
from featstore.export import export_h5
from featstore.importer import import_h5
from featstore.store import open_store, store_exists
from featstore.verify import DEFAULT_LIVE_SAMPLE, verify_live, verify_store


@click.group("store")
def command() -> None:
    """Inspect, verify, export and import feature stores."""


@command.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the info as JSON.")
def info(store: str, as_json: bool) -> None:
    """Shape, dtype, views, teacher, dataset, completeness and size of STORE.

    Example: fsd store info store.zarr
    """
    data = open_store(store, require_complete=False).info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    shape = data["shape"]
    ratio = data["compression_ratio_vs_float32"]
    click.echo(f"store        {data['url']}")
    click.echo(
        f"shape        {shape['samples']} samples × {shape['views']} views × {shape['dim']} dims, "
        f"{shape['classes']} classes"
    )
    click.echo(f"dtype        {data['dtype']}, {data['chunk_rows']} rows per chunk")
    click.echo(f"complete     {data['complete']} ({data['chunks']['done']}/{data['chunks']['total']} chunks)")
    click.echo(
        f"size         {data['bytes_stored'] / 1e6:.2f} MB stored"
        + (f", compression {ratio:.2f}× vs float32" if ratio else "")
    )
    click.echo(f"teacher      {data['teacher']['arch']} (sha256 {data['teacher']['checkpoint_sha256'][:12]}…)")
    click.echo(f"head         {_head_line(data)}")
    click.echo(
        f"dataset      {data['dataset']['spec']} / {data['dataset']['split']} "
        f"(fingerprint {data['dataset']['fingerprint'][:12]}…)"
    )
    click.echo(f"views        {data['views']['count']} × {data['views']['kind']} (seed {data['views']['seed']})")
    click.echo(f"created      {data['created']} by fsd {data['fsd_version']}")
    if not data["checksums"]:
        click.echo(
            f"note         format {data['format']} store: its chunks carry no checksums, so damage that still "
            "decodes is only caught by `fsd store verify --teacher`; re-extract to get them"
        )


def _head_line(data: dict) -> str:
    """The head as ``store info`` shows it: its type and classes, or how to fit one on a head-less store."""
    head = data.get("head")
    if not head:
        return f"none (a head-less teacher); TH-KD needs one: fsd store fit-head {data['url']} --head arcface"
    fitted = " (fitted on the stored embeddings)" if head.get("fitted") else ""
    return f"{head.get('type')}, {head.get('num_classes', data['shape']['classes'])} classes{fitted}"


@command.command("verify")
@click.argument("store")
@click.option(
    "--teacher",
    "teacher_path",
    metavar="TEACHER",
    default=None,
    help="Teacher the store was extracted from (any teacher spec: checkpoint, onnx:, timm:, …): also "
    "recompute --sample random (sample, view) rows live and compare them with the stored rows.",
)
@click.option(
    "--sample",
    type=int,
    default=None,
    metavar="K",
    help=f"Rows to recompute with --teacher (default {DEFAULT_LIVE_SAMPLE}; all rows when K exceeds N×V).",
)
@click.option("--seed", type=int, default=None, help="Seed that picks the --sample rows (default 0).")
@click.option("--trust-code", is_flag=True, help="Allow a module:function --teacher (it runs that Python code).")
@click.option(
    "--dataset",
    "dataset_spec",
    default=None,
    metavar="SPEC",
    help="With --teacher: the dataset spec to recompute rows from (default: the one the store records; give it "
    "when that was a relative folder: path and you run from elsewhere). Its fingerprint must be the store's.",
)
@image_size_option
@loader_workers_option
def verify(
    store: str,
    teacher_path: str | None,
    sample: int | None,
    seed: int | None,
    trust_code: bool,
    dataset_spec: str | None,
    image_size: int | None,
    loader_workers: int | None,
) -> None:
    """Read every chunk of STORE and check it (readable, finite, labels in range, flagged done).

    With --teacher, K random (sample, view) rows are also recomputed: the stored view parameters must be
    the ones the store's seed draws, and the teacher's output on the re-rendered view must match the stored
    row (cosine ≥ 0.99999 float32, 0.9999 float16, 0.999 bfloat16 and int8). The teacher checkpoint's
    sha256 and the dataset (loaded from the spec and split the store records) must be the store's own.

    Exits 1 and lists the bad chunks / failed checks when any check fails.

    Example: fsd store verify store.zarr --teacher teacher.pt --sample 256
    """
    if teacher_path is None and (sample is not None or seed is not None or dataset_spec is not None):
        raise InvalidInput(
            "--sample, --seed and --dataset need --teacher (the live check recomputes rows with the teacher)"
        )
    if sample is not None and sample <= 0:
        raise InvalidInput(f"--sample must be positive, got {sample}")
    binding = None
    if teacher_path is not None:  # every input is loaded (and refused with exit 2) before any checking
        from distill.models.binding import bind_model

        opened = open_store(store, require_complete=False, check=False)  # damage is reported, not raised
        recorded = opened.meta.get("dataset", {})
        if not recorded.get("spec") or not recorded.get("split"):
            raise StoreError(f"store {store} records no dataset spec/split to recompute rows from")
        shape = (opened.meta.get("teacher") or {}).get("input_shape")
        binding = bind_model(
            teacher_path,
            dataset_spec or recorded["spec"],
            recorded["split"],
            image_size=image_size,
            loader_workers=loader_workers,
            fallback_image_size=tuple(shape[1:]) if shape else None,  # (H, W) the teacher saw at extraction
            trust_code=trust_code,
        )
    report = verify_store(store)
    if binding is not None:
        rows = DEFAULT_LIVE_SAMPLE if sample is None else sample
        report.live = verify_live(opened, binding, None, rows, 0 if seed is None else seed)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise SystemExit(1)


@command.command("export")
@click.argument("store")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HDF5 file to write.")
@click.option(
    "--view",
    default="all",
    show_default=True,
    help="'all' → (N, V, D); a view index → (N, D), e.g. --view 0 for `fsd eval --embeddings`.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(store: str, out: Path, view: str, overwrite: bool, quiet: bool) -> None:
    """Copy STORE's embeddings, labels, views and head into one HDF5 file.

    The embeddings are dequantised to float32; the file is written atomically.

    Example: fsd store export store.zarr --out store.h5 --view 0
    """
    if view != "all" and not view.isdigit():
        raise InvalidInput(f"--view must be 'all' or a view index, got {view!r}")
    path = export_h5(store, out, view=None if view == "all" else int(view), overwrite=overwrite, progress=not quiet)
    click.echo(f"exported {store} → {path} ({path.stat().st_size / 1e6:.2f} MB)")


@command.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, metavar="STORE", help="Store to create.")
@dataset_option()
@split_option("train")
@click.option(
    "--dtype",
    type=dtype_choice,
    default=None,
    help="Storage dtype (default: the exported store's, for a file `fsd store export` wrote; else float16).",
)
@click.option("--chunk-rows", type=int, default=None, help="Samples per chunk (default: a few MB per chunk).")
@overwrite_option
def import_(
    file: Path, out: str, dataset: str, split: str, dtype: str | None, chunk_rows: int | None, overwrite: bool
) -> None:
    """Create a store from an HDF5 file of teacher embeddings computed outside fsd.

    FILE holds 'embeddings' (N, D) or (N, V, D), 'labels' (N,), 'head/weight' (C, D) [, 'head/bias',
    'views' (N, V, 5)] — the layout `fsd store export` writes. Rows must be the dataset split's samples, in order.

    Example: fsd store import teacher_emb.h5 --out store.zarr --dataset digits
    """
    if store_exists(out) and not overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it)")
    summary = import_h5(
        file, load_dataset(dataset, split), out, dtype=dtype, chunk_rows=chunk_rows, overwrite=overwrite
    )
    click.echo(summary.line().replace("wrote", "imported into", 1))


def _register_fit_head() -> None:
    from cli.cmd_fit_head import command as fit_head

    command.add_command(fit_head)


_register_fit_head()
