"""``fsd eval --faiss``: retrieval, verification and classification metrics of one embedding source."""

from __future__ import annotations

from pathlib import Path

import click

import distill.evaluation as ev
from cli.options import dataset_option, device_option, split_option
from distill.evaluation.metrics import FARS
from distill.evaluation.protocols.pairs import FORMATS, read_pairs, resolve_pairs
from distill.evaluation.search import INDEX_TYPES
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
@click.option(
    "--faiss",
    "use_faiss",
    is_flag=True,
    required=True,
    help="Use FAISS for neighbour search (required; faiss-gpu when present).",
)
@click.option(
    "--model",
    default=None,
    metavar="MODEL",
    help="Teacher or student checkpoint, or any teacher spec (onnx:PATH, timm:NAME, torchscript:PATH, …).",
)
@click.option("--trust-code", is_flag=True, help="Allow a module:function --model (it runs that Python code).")
@dataset_option(required=False)
@split_option("test")
@click.option("--store", default=None, metavar="STORE", help="Evaluate a store's identity-view embeddings.")
@click.option(
    "--embeddings",
    type=click.Path(path_type=Path),
    default=None,
    help="HDF5 with embeddings, labels (and optional names).",
)
@click.option(
    "--gallery-store",
    default=None,
    metavar="STORE",
    help="Also report cross-model retrieval: these embeddings as queries against the store.",
)
@click.option(
    "--gallery-model",
    default=None,
    metavar="MODEL",
    help="Cross-model retrieval against this checkpoint's embeddings of the same --dataset/--split "
    "(e.g. student queries, teacher gallery).",
)
@click.option("--far", "far_text", default=",".join(f"{f:g}" for f in FARS), show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Report JSON.")
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verify these pairs instead of all pairs: 'i j label', 'name_a name_b label' or LFW pairs.txt.",
)
@click.option(
    "--pairs-format",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="Format of --pairs (auto: from its first line).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="ROC curve PNG; the CMC curve goes beside it as <stem>_cmc.png.",
)
@click.option(
    "--th-mix",
    type=float,
    default=None,
    metavar="W",
    help="Student checkpoints: classify with p' = (1−W)·p_student + W·p_teacher-head (the paper's mix).",
)
@click.option(
    "--ijb-meta",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="IJB-B/IJB-C template protocols from the official meta files in DIR (or DIR/meta): 1:1 TAR@FAR "
    "over template pairs, 1:N rank-1/5/10 and TPIR@FPIR on galleries G1/G2. Needs --embeddings "
    "with image 'names' (optional 'embeddings_flip').",
)
@click.option(
    "--index",
    "index",
    type=click.Choice(INDEX_TYPES),
    default="exact",
    show_default=True,
    help="Neighbour search for retrieval: exact, or an approximate FAISS index for large galleries "
    "(ivf, hnsw); its recall against exact search is reported.",
)
@click.option(
    "--bin",
    "bin_files",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="With --model: insightface verification .bin (lfw.bin, cfp_fp.bin, …), 10-fold accuracy with flip "
    "test; repeatable. Without --dataset only the .bin results are reported.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing --out/--plot files.")
@device_option
def command(
    use_faiss,
    model,
    trust_code,
    dataset,
    split,
    store,
    embeddings,
    gallery_store,
    gallery_model,
    far_text,
    pairs_file,
    pairs_format,
    out,
    plot,
    th_mix,
    ijb_meta,
    index,
    bin_files,
    overwrite,
    device,
):
    """Evaluate embeddings: classification top-1, retrieval (Recall@K, P@1, R-precision, MAP@R) and
    verification (TAR@FAR, ROC AUC, EER) over all pairs — exact, in bounded memory — or over the pairs of
    --pairs (with LFW's 10-fold accuracy for an LFW pairs.txt; names come from the HDF5 'names' dataset).

    Exactly one source: --model CKPT --dataset SPEC [--split test], --store STORE, or --embeddings FILE.h5.

    Example: fsd eval --faiss --model student.pt --dataset digits --split test --out report.json --plot roc.png

    Example: fsd eval --faiss --embeddings lfw.h5 --pairs pairs.txt --out lfw.json

    Example: fsd eval --faiss --embeddings ijbc.h5 --ijb-meta IJBC --out ijbc.json

    Example: fsd eval --faiss --model student.pt --bin lfw.bin --bin cfp_fp.bin --out faces.json
    """
    sources = [s for s in (model, store, embeddings) if s is not None]
    if len(sources) != 1:
        raise InvalidInput("give exactly one of --model, --store, --embeddings")
    if bin_files and model is None:
        raise InvalidInput("--bin needs --model (the network that embeds the .bin images)")
    if bin_files and not dataset:
        _bin_only(model, bin_files, trust_code, device, out, overwrite)
        return
    if model is not None and not dataset:
        raise InvalidInput("--model needs --dataset")
    if th_mix is not None and model is None:
        raise InvalidInput("--th-mix needs --model (a student checkpoint)")
    _check_ijb_usage(ijb_meta, embeddings, pairs_file, gallery_store, gallery_model, index)
    fars = _parse_fars(far_text)
    cmc_plot = plot.with_name(f"{plot.stem}_cmc.png") if plot is not None else None
    for path in (out, plot, cmc_plot):
        if path is not None and path.exists() and not overwrite:
            raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    use_gpu = False if device == "cpu" else None  # --device cpu keeps FAISS and pair scoring on the CPU
    if ijb_meta is not None:
        _ijb(ijb_meta, embeddings, fars, use_gpu, out, plot, cmc_plot)
        return
    parsed_pairs = read_pairs(pairs_file, pairs_format) if pairs_file is not None else None  # fail before work
    if model is not None:
        queries = ev.embeddings_from_checkpoint(model, dataset, split, device, th_mix=th_mix, trust_code=trust_code)
    elif store is not None:
        queries = ev.embeddings_from_store(store)
    else:
        queries = ev.embeddings_from_h5(embeddings)
    if gallery_store and gallery_model:
        raise InvalidInput("give at most one of --gallery-store and --gallery-model")
    if gallery_model is not None and not dataset:
        raise InvalidInput("--gallery-model needs --dataset (the split both models embed)")
    gallery = ev.embeddings_from_store(gallery_store) if gallery_store else None
    if gallery_model is not None:
        gallery = ev.embeddings_from_checkpoint(gallery_model, dataset, split, device, trust_code=trust_code)
    pairs = resolve_pairs(parsed_pairs, len(queries.labels), queries.names) if parsed_pairs is not None else None
    report, curves = ev.evaluate(queries, gallery=gallery, fars=fars, use_gpu=use_gpu, pairs=pairs, index=index)
    click.echo(ev.report_table(report))
    if bin_files:
        report["bin"] = _bin_results(model, bin_files, trust_code, device)
    for line in _protocol_lines(report["verification"]):
        click.echo(line)
    if out is not None:
        ev.write_report(report, out)
        click.echo(f"report written to {out}")
    if plot is not None:
        name = Path(str(sources[0])).name
        ev.plot_roc(curves, plot, title=f"ROC — {name}")
        click.echo(f"ROC curve written to {plot}")
        ev.plot_cmc({"": ev.cmc_curve(queries, use_gpu=use_gpu)}, cmc_plot, title=f"CMC — {name}")
        click.echo(f"CMC curve written to {cmc_plot}")


def _check_ijb_usage(ijb_meta, embeddings, pairs_file, gallery_store, gallery_model, index) -> None:
    if ijb_meta is None:
        return
    if embeddings is None:
        raise InvalidInput(
            "--ijb-meta matches embeddings to the meta files by image name: give --embeddings FILE.h5 "
            "with a 'names' dataset (--model and --store are not supported with --ijb-meta)"
        )
    for given, flag in (
        (pairs_file, "--pairs"),
        (gallery_store, "--gallery-store"),
        (gallery_model, "--gallery-model"),
    ):
        if given is not None:
            raise InvalidInput(f"--ijb-meta cannot be combined with {flag} (the IJB meta files define the protocol)")
    if index != "exact":
        raise InvalidInput("--index applies to retrieval, which --ijb-meta does not run (IJB 1:N search is exact)")


def _bin_results(model, bin_files, trust_code, device) -> dict:
    from distill.evaluation.face import bin_reports, load_face_model
    from distill.evaluation.protocols.bin import read_bin
    from distill.models.inference import select_device

    for path in bin_files:  # every file checked before the model is loaded
        read_bin(path)
    results = bin_reports(load_face_model(model, trust_code=trust_code), list(bin_files), select_device(device))
    for name, r in results.items():
        click.echo(
            f"  {name:<12} {100 * r['accuracy']:.2f}% ± {100 * r['accuracy_std']:.2f} ({r['pairs']} pairs, "
            f"{r['folds']}-fold, flip test; without flip {100 * r['accuracy_without_flip']:.2f}%)"
        )
    return results


def _bin_only(model, bin_files, trust_code, device, out, overwrite) -> None:
    if out is not None and out.exists() and not overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it)")
    click.echo(f"verification .bin results of {model}")
    report = {"source": {"model": str(model)}, "bin": _bin_results(model, bin_files, trust_code, device)}
    if out is not None:
        ev.write_report(report, out)
        click.echo(f"report written to {out}")


def _ijb(meta_dir: Path, embeddings: Path, fars, use_gpu, out, plot, cmc_plot) -> None:
    from distill.evaluation.protocols.ijb import read_ijb_meta

    meta = read_ijb_meta(meta_dir)  # fail on bad meta files before reading the embeddings
    queries = ev.embeddings_from_h5(embeddings, labels_required=False, with_flip=True)
    report, curves = ev.evaluate_ijb(
        queries, meta, fars=fars, use_gpu=use_gpu, cmc_rank=ev.CMC_MAX_RANK if plot is not None else 0
    )
    click.echo(ev.report_table(report))
    if out is not None:
        ev.write_report(report, out)
        click.echo(f"report written to {out}")
    if plot is not None:
        name = f"{embeddings.name} — {meta.prefix}"
        ev.plot_roc(curves.get("roc", {}), plot, title=f"IJB 1:1 ROC — {name}")
        click.echo(f"ROC curve written to {plot}")
        ev.plot_cmc(curves.get("cmc", {}), cmc_plot, title=f"IJB 1:N CMC — {name}")
        click.echo(f"CMC curve written to {cmc_plot}")


def _protocol_lines(verification: dict) -> list[str]:
    """What the report table does not say about the pairs protocol."""
    if verification.get("protocol") != "pairs":
        return []
    p = verification["pairs"]
    lines = [f"  protocol      {p['num_pairs']} pairs from {p['file']} ({p['format']} format)"]
    lfw = verification.get("lfw")
    if lfw:
        lines.append(
            f"  LFW accuracy  {100 * lfw['accuracy_mean']:.2f} ± {100 * lfw['accuracy_std']:.2f} "
            f"(mean ± std over {lfw['folds']} folds, threshold chosen on the other folds)"
        )
    return lines
