"""``fsd eval --faiss``: retrieval, verification and classification metrics of one embedding source."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import dataset_option, device_option, split_option
from distill import evaluate as ev
from distill.metrics import FARS
from featstore.errors import InvalidInput, OutputExists


def _parse_fars(text: str) -> tuple[float, ...]:
    try:
        fars = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(f"--far must be a comma-separated list of numbers, got {text!r}") from None
    if not fars or any(not 0 < f <= 1 for f in fars):
        raise InvalidInput(f"--far values must lie in (0, 1], got {text!r}")
    return fars


@click.command("eval")
@click.option("--faiss", "use_faiss", is_flag=True, required=True,
              help="Use FAISS for neighbour search (required; faiss-gpu when present).")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Teacher or student checkpoint.")
@dataset_option(required=False)
@split_option("test")
@click.option("--store", default=None, metavar="STORE", help="Evaluate a store's identity-view embeddings.")
@click.option("--embeddings", type=click.Path(path_type=Path), default=None, help="HDF5 with embeddings, labels.")
@click.option("--gallery-store", default=None, metavar="STORE",
              help="Also report cross-model retrieval: these embeddings as queries against the store.")
@click.option("--far", "far_text", default=",".join(f"{f:g}" for f in FARS), show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Report JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="ROC curve PNG.")
@click.option("--overwrite", is_flag=True, help="Replace existing --out/--plot files.")
@device_option
def command(use_faiss, model, dataset, split, store, embeddings, gallery_store, far_text, out, plot, overwrite, device):
    """Evaluate embeddings: classification top-1, retrieval (Recall@K, P@1, R-precision, MAP@R) and
    verification (TAR@FAR, ROC AUC, EER) over all pairs.

    Exactly one source: --model CKPT --dataset SPEC [--split test], --store STORE, or --embeddings FILE.h5.

    Example: fsd eval --faiss --model student.pt --dataset digits --split test --out report.json --plot roc.png
    """
    sources = [s for s in (model, store, embeddings) if s is not None]
    if len(sources) != 1:
        raise InvalidInput("give exactly one of --model, --store, --embeddings")
    if model is not None and not dataset:
        raise InvalidInput("--model needs --dataset")
    fars = _parse_fars(far_text)
    for path in (out, plot):
        if path is not None and path.exists() and not overwrite:
            raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    if model is not None:
        queries = ev.embeddings_from_checkpoint(model, dataset, split, device)
    elif store is not None:
        queries = ev.embeddings_from_store(store)
    else:
        queries = ev.embeddings_from_h5(embeddings)
    gallery = ev.embeddings_from_store(gallery_store) if gallery_store else None
    report, curves = ev.evaluate(queries, gallery=gallery, fars=fars)
    click.echo(ev.report_table(report))
    if out is not None:
        ev.write_report(report, out)
        click.echo(f"report written to {out}")
    if plot is not None:
        ev.plot_roc(curves, plot, title=f"ROC — {Path(str(sources[0])).name}")
        click.echo(f"ROC curve written to {plot}")
