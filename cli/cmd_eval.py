"""``fsd eval --faiss``: retrieval, verification and classification metrics of one embedding source."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import (
    config_default,
    config_option,
    dataset_option,
    image_size_option,
    loader_workers_option,
    split_option,
)
from distill.evaluation.protocols.pairs import FORMATS
from distill.evaluation.request import EvalRequest, run_eval
from distill.evaluation.search import INDEX_TYPES
from distill.models.inference import DEVICES

PATH = click.Path(path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)
R = EvalRequest  # every default below is the request's


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
    metavar="MODEL",
    help="Teacher or student checkpoint, or any teacher spec (onnx:PATH, timm:NAME, torchscript:PATH, …).",
)
@config_option(R, "trust_code", help="Allow a module:function --model (it runs that Python code).")
@click.option(
    "--bin",
    "bins",
    type=FILE,
    multiple=True,
    help="With --model: an insightface verification .bin (lfw.bin, cfp_fp.bin, …), 10-fold accuracy with "
    "flip test; repeatable. Without --dataset only the .bin results are reported.",
)
@dataset_option(required=False)
@split_option(config_default(R, "split"))
@click.option("--store", metavar="STORE", help="Evaluate a store's identity-view embeddings.")
@click.option("--embeddings", type=PATH, help="HDF5 with embeddings, labels (and optional names).")
@click.option(
    "--gallery-store",
    metavar="STORE",
    help="Also report cross-model retrieval: these embeddings as queries against the store.",
)
@click.option(
    "--gallery-model",
    metavar="MODEL",
    help="Cross-model retrieval against this checkpoint's embeddings of the same --dataset/--split "
    "(e.g. student queries, teacher gallery).",
)
@click.option(
    "--far",
    "fars",
    default=",".join(f"{f:g}" for f in config_default(R, "fars")),
    show_default=True,
    metavar="F,...",
    help="False-accept rates in (0, 1] at which verification reports TAR (the share of genuine pairs accepted "
    "at the threshold that accepts that share of impostor pairs).",
)
@click.option("--out", type=FILE, help="Report JSON.")
@click.option(
    "--pairs",
    "pairs",
    type=FILE,
    help="Verify these pairs instead of all pairs: 'i j label', 'name_a name_b label' or LFW pairs.txt.",
)
@config_option(R, "pairs_format", type=click.Choice(FORMATS), help="Format of --pairs (auto: from its first line).")
@click.option("--plot", type=FILE, help="ROC curve PNG; the CMC curve goes beside it as <stem>_cmc.png.")
@click.option(
    "--th-mix",
    type=float,
    metavar="W",
    help="Student checkpoints: classify with p' = (1−W)·p_student + W·p_teacher-head (the paper's mix).",
)
@click.option(
    "--ijb-meta",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="IJB-B/IJB-C template protocols from the official meta files in DIR (or DIR/meta): 1:1 TAR@FAR "
    "over template pairs, 1:N rank-1/5/10 and TPIR@FPIR on galleries G1/G2. Needs --embeddings "
    "with image 'names' (optional 'embeddings_flip').",
)
@config_option(
    R,
    "index",
    type=click.Choice(INDEX_TYPES),
    help="Neighbour search for retrieval: exact, or an approximate FAISS index for large galleries "
    "(ivf, hnsw); its recall against exact search is reported.",
)
@config_option(R, "overwrite", help="Replace existing --out/--plot files.")
@config_option(R, "device", type=click.Choice(DEVICES), help="auto = CUDA when present, else CPU.")
@image_size_option
@loader_workers_option
def command(use_faiss: bool, **options) -> None:
    """Evaluate embeddings: classification, retrieval and verification.

    Classification top-1, retrieval (Recall@K, P@1, R-precision, MAP@R) and verification (TAR@FAR, ROC AUC,
    EER) over all pairs — exact, in bounded memory — or over the pairs of --pairs (with LFW's 10-fold accuracy
    for an LFW pairs.txt; names come from the HDF5 'names' dataset).

    Exactly one source: --model CKPT --dataset SPEC [--split test], --store STORE, or --embeddings FILE.h5.

    Example: fsd eval --faiss --model student.pt --dataset digits --split test --out report.json --plot roc.png

    Example: fsd eval --faiss --embeddings lfw.h5 --pairs pairs.txt --out lfw.json

    Example: fsd eval --faiss --embeddings ijbc.h5 --ijb-meta IJBC --out ijbc.json

    Example: fsd eval --faiss --model student.pt --bin lfw.bin --bin cfp_fp.bin --out faces.json
    """
    options["bins"] = tuple(options["bins"])
    given = {name: value for name, value in options.items() if value is not None}  # unset: the request's default
    run_eval(EvalRequest(**given), echo=click.echo)
