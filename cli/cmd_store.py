"""``fsd store info|verify|export``: inspect, check and export a feature store."""

from __future__ import annotations

import json

import click

from pathlib import Path

from featstore.export import export_h5
from featstore.store import open_store
from featstore.verify import verify_store


@click.group("store")
def command() -> None:
    """Inspect feature stores."""


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
    click.echo(f"shape        {shape['samples']} samples × {shape['views']} views × {shape['dim']} dims, "
               f"{shape['classes']} classes")
    click.echo(f"dtype        {data['dtype']}, {data['chunk_rows']} rows per chunk")
    click.echo(f"complete     {data['complete']} ({data['chunks']['done']}/{data['chunks']['total']} chunks)")
    click.echo(f"size         {data['bytes_stored'] / 1e6:.2f} MB stored"
               + (f", compression {ratio:.2f}× vs float32" if ratio else ""))
    click.echo(f"teacher      {data['teacher']['arch']} (sha256 {data['teacher']['checkpoint_sha256'][:12]}…)")
    click.echo(f"head         {data['head']['type']}, {data['head']['num_classes']} classes")
    click.echo(f"dataset      {data['dataset']['spec']} / {data['dataset']['split']} "
               f"(fingerprint {data['dataset']['fingerprint'][:12]}…)")
    click.echo(f"views        {data['views']['count']} × {data['views']['kind']} (seed {data['views']['seed']})")
    click.echo(f"created      {data['created']} by fsd {data['fsd_version']}")


@command.command("verify")
@click.argument("store")
def verify(store: str) -> None:
    """Read every chunk of STORE and check it (readable, finite, labels in range, flagged done).

    Exits 1 and lists the bad chunks when any check fails.

    Example: fsd store verify store.zarr
    """
    report = verify_store(store)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise SystemExit(1)


@command.command("export")
@click.argument("store")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HDF5 file to write.")
@click.option("--view", type=int, default=None,
              help="Export only this view as (N, D) — e.g. --view 0 for `fsd eval --embeddings`.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(store: str, out: Path, view: int | None, overwrite: bool, quiet: bool) -> None:
    """Copy STORE's embeddings, labels, views and head into one HDF5 file (written atomically).

    Example: fsd store export store.zarr --out store.h5 --view 0
    """
    path = export_h5(store, out, view=view, overwrite=overwrite, progress=not quiet)
    click.echo(f"exported {store} → {path} ({path.stat().st_size / 1e6:.2f} MB)")
