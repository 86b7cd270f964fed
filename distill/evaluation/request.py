"""One evaluation request — sources, protocol, index, FARs, outputs — and the one function that runs it.

``fsd eval`` builds an :class:`EvalRequest` from its options and calls :func:`run_eval`; the demo and the
benchmarks do the same, so the checks, their order and the files written are those of the command. The
defaults live here and nowhere else (the CLI shows and uses these).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.evaluation.metrics.verification import FARS
from distill.evaluation.plots import plot_cmc, plot_roc
from distill.evaluation.report import CMC_MAX_RANK, cmc_curve, evaluate, evaluate_ijb, write_report
from distill.evaluation.sources import (
    EmbeddingSet,
    embeddings_from_checkpoint,
    embeddings_from_h5,
    embeddings_from_store,
)
from distill.evaluation.tables import protocol_lines, report_table
from featstore.errors import InvalidInput, OutputExists

__all__ = ["EvalRequest", "EvalResult", "parse_fars", "run_eval"]


def parse_fars(text: str) -> tuple[float, ...]:
    """Parse ``--far``: ``"1e-3,1e-2"`` → ``(0.001, 0.01)``.

    Args:
        text: Comma-separated false-accept rates.

    Returns:
        The rates, in the order given.

    Raises:
        InvalidInput: A value that is not a number or lies outside (0, 1], or no value at all.
    """
    try:
        fars = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(f"--far must be a comma-separated list of numbers, got {text!r}") from None
    if not fars or any(not 0 < f <= 1 for f in fars):
        raise InvalidInput(f"--far values must lie in (0, 1], got {text!r}")
    return fars


@dataclass
class EvalRequest:
    """What to evaluate and what to write; the field names are ``fsd eval``'s options.

    Exactly one source: ``model`` (with ``dataset``/``split``), ``store`` or ``embeddings``; optionally a
    cross-model gallery.

    Attributes:
        model: A checkpoint or any model spec (``onnx:``, ``timm:``, …), run over ``dataset``/``split``.
        trust_code: Whether a ``module:function`` model may run its Python code.
        bins: insightface verification ``.bin`` files, run through ``model`` (flip test).
        dataset: The dataset spec ``model`` runs over.
        split: The split of ``dataset``.
        store: A store whose identity-view teacher embeddings are evaluated.
        embeddings: An HDF5 file: ``embeddings``, ``labels`` (and ``names``, ``embeddings_flip``).
        gallery_store: Cross-model retrieval: the queries are searched against this store's embeddings …
        gallery_model: … or against this checkpoint's embeddings of ``dataset``/``split``.
        th_mix: Student checkpoints: the weight of the paper's mixed prediction p' for top-1.
        pairs: A pairs file (default protocol: all pairs).
        pairs_format: The pairs file's format (``"auto"`` detects it).
        ijb_meta: The IJB meta folder: its template protocols instead of pairs.
        index: Neighbour search for retrieval: ``"exact"``, or an approximate FAISS index (``"ivf"``,
            ``"hnsw"``).
        fars: The false-accept rates verification reports (a comma-separated string is read as ``--far`` is).
        out: The report JSON to write.
        plot: The ROC PNG to write; the CMC PNG goes beside it as ``<stem>_cmc.png``.
        overwrite: Whether existing outputs may be replaced.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; ``"cpu"`` keeps FAISS and pair scoring on the CPU too.
        image_size: Datasets read from files render at this size (None: the model's).
        loader_workers: DataLoader processes decoding images (None: from the CPU count).
    """

    # sources: where the embeddings come from (distill.evaluation.sources)
    model: Path | str | None = None
    trust_code: bool = False
    bins: tuple[Path | str, ...] = ()
    dataset: str | None = None
    split: str = "test"
    store: str | None = None
    embeddings: Path | str | None = None
    gallery_store: str | None = None
    gallery_model: Path | str | None = None
    th_mix: float | None = None
    # protocols
    pairs: Path | str | None = None
    pairs_format: str = "auto"
    ijb_meta: Path | str | None = None
    # neighbour search for retrieval
    index: str = "exact"
    # verification
    fars: tuple[float, ...] | str = FARS
    # outputs
    out: Path | str | None = None
    plot: Path | str | None = None
    overwrite: bool = False
    device: str = "auto"
    image_size: int | None = None
    loader_workers: int | None = None

    def source_label(self) -> str:
        """The file name of the source, as plot titles show it."""
        return Path(str(next(s for s in (self.model, self.store, self.embeddings) if s is not None))).name


@dataclass
class EvalResult:
    """A finished evaluation: the report, its curves and the files written.

    Attributes:
        report: The JSON report (classification, retrieval, verification, …).
        curves: The ROC (and IJB CMC) curves the plots draw.
        queries: The query embeddings evaluated (None for ``.bin`` files only).
        written: The files written, in order.
    """

    report: dict[str, Any]
    curves: dict[str, Any]
    queries: EmbeddingSet
    written: list[Path] = field(default_factory=list)


def _path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


def _check(req: EvalRequest) -> tuple[tuple[float, ...], Path | None]:
    """Make every check that needs no file read, in the order ``fsd eval`` makes them.

    Returns:
        (the FARs, the CMC plot path or None).
    """
    if len([s for s in (req.model, req.store, req.embeddings) if s is not None]) != 1:
        raise InvalidInput("give exactly one of --model, --store, --embeddings")
    if req.model is not None and not req.dataset and not req.bins:
        raise InvalidInput("--model needs --dataset (or --bin)")
    if req.bins and req.model is None:
        raise InvalidInput("--bin needs --model (the network that embeds the .bin images)")
    if req.th_mix is not None and req.model is None:
        raise InvalidInput("--th-mix needs --model (a student checkpoint)")
    if req.ijb_meta is not None:
        _check_ijb_usage(req)
    fars = parse_fars(req.fars) if isinstance(req.fars, str) else tuple(req.fars)
    plot = _path(req.plot)
    cmc_plot = plot.with_name(f"{plot.stem}_cmc.png") if plot is not None else None
    for path in (_path(req.out), plot, cmc_plot):
        if path is not None and path.exists() and not req.overwrite:
            raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    return fars, cmc_plot


def _check_ijb_usage(req: EvalRequest) -> None:
    if req.embeddings is None:
        raise InvalidInput(
            "--ijb-meta matches embeddings to the meta files by image name: give --embeddings FILE.h5 "
            "with a 'names' dataset (--model and --store are not supported with --ijb-meta)"
        )
    for given, flag in (
        (req.pairs, "--pairs"),
        (req.gallery_store, "--gallery-store"),
        (req.gallery_model, "--gallery-model"),
    ):
        if given is not None:
            raise InvalidInput(f"--ijb-meta cannot be combined with {flag} (the IJB meta files define the protocol)")
    if req.index != "exact":
        raise InvalidInput("--index applies to retrieval, which --ijb-meta does not run (IJB 1:N search is exact)")


def run_eval(request: EvalRequest, echo: Callable[[str], None] | None = None) -> EvalResult:
    """Check ``request``, gather its embeddings, build the report and write the outputs asked for.

    Bad input is refused before anything is written.

    Args:
        request: What to evaluate and what to write.
        echo: Receives what ``fsd eval`` prints (the report table, then one line per file written, each as soon
            as it is written); None prints nothing.

    Returns:
        The report, its curves, the queries and the files written.

    Raises:
        FsdError: Bad input (an :class:`~featstore.errors.InvalidInput`, ``OutputExists``, ``InputNotFound``…).
    """
    say = echo if echo is not None else (lambda line: None)
    fars, cmc_plot = _check(request)
    use_gpu = False if request.device == "cpu" else None  # --device cpu keeps FAISS and pair scoring on the CPU
    if request.ijb_meta is not None:
        return _run_ijb(request, fars, use_gpu, cmc_plot, say)
    _read_bins(request)  # a bad .bin fails before any model runs
    if request.bins and not request.dataset:  # .bin files only
        result = EvalResult({"source": {"model": str(request.model)}, "bin": _bin_results(request, say)}, {}, None)
        if request.out is not None:
            _write_report(result, Path(request.out), say)
        return result
    queries, gallery, pairs = _gather(request)
    report, curves = evaluate(queries, gallery=gallery, fars=fars, use_gpu=use_gpu, pairs=pairs, index=request.index)
    say(report_table(report))
    for line in protocol_lines(report["verification"]):
        say(line)
    if request.bins:
        report["bin"] = _bin_results(request, say)
    result = EvalResult(report, curves, queries)
    if request.out is not None:
        _write_report(result, Path(request.out), say)
    plot = _path(request.plot)
    if plot is not None:
        name = request.source_label()
        plot_roc(curves, plot, title=f"ROC — {name}")
        result.written.append(plot)
        say(f"ROC curve written to {plot}")
        plot_cmc({"": cmc_curve(queries, use_gpu=use_gpu)}, cmc_plot, title=f"CMC — {name}")
        result.written.append(cmc_plot)
        say(f"CMC curve written to {cmc_plot}")
    return result


def _gather(req: EvalRequest) -> tuple[EmbeddingSet, EmbeddingSet | None, Any]:
    """Gather the queries, the optional gallery and the resolved pairs of a per-sample request.

    A bad pairs file fails before any embedding is computed.
    """
    from distill.evaluation.protocols.pairs import read_pairs, resolve_pairs

    parsed_pairs = read_pairs(req.pairs, req.pairs_format) if req.pairs is not None else None
    if req.model is not None:
        queries = embeddings_from_checkpoint(
            req.model, req.dataset, req.split, req.device, th_mix=req.th_mix, trust_code=req.trust_code, **_loading(req)
        )
    elif req.store is not None:
        queries = embeddings_from_store(req.store)
    else:
        queries = embeddings_from_h5(req.embeddings, labels_required=parsed_pairs is None)  # pairs need no labels
    if req.gallery_store and req.gallery_model:
        raise InvalidInput("give at most one of --gallery-store and --gallery-model")
    if req.gallery_model is not None and not req.dataset:
        raise InvalidInput("--gallery-model needs --dataset (the split both models embed)")
    gallery = embeddings_from_store(req.gallery_store) if req.gallery_store else None
    if req.gallery_model is not None:
        gallery = embeddings_from_checkpoint(
            req.gallery_model, req.dataset, req.split, req.device, trust_code=req.trust_code, **_loading(req)
        )
    pairs = resolve_pairs(parsed_pairs, len(queries.labels), queries.names) if parsed_pairs is not None else None
    return queries, gallery, pairs


def _read_bins(req: EvalRequest) -> None:
    from distill.evaluation.protocols.bin import read_bin

    for path in req.bins:
        read_bin(path)


def _bin_results(req: EvalRequest, say: Callable[[str], None]) -> dict[str, Any]:
    """``{name: report}`` of every ``--bin`` (distill.evaluation.protocols.bin), one line printed for each."""
    from distill.evaluation.face import bin_reports, load_face_model
    from distill.models.inference import select_device

    model = load_face_model(req.model, trust_code=req.trust_code, image_size=req.image_size)
    results = bin_reports(model, [Path(p) for p in req.bins], select_device(req.device))
    say(f"verification .bin results of {req.model}")
    for name, r in results.items():
        say(
            f"  {name:<12} {100 * r['accuracy']:.2f}% ± {100 * r['accuracy_std']:.2f} ({r['pairs']} pairs, "
            f"{r['folds']}-fold, flip test; without flip {100 * r['accuracy_without_flip']:.2f}%)"
        )
    return results


def _run_ijb(
    req: EvalRequest,
    fars: tuple[float, ...],
    use_gpu: bool | None,
    cmc_plot: Path | None,
    say: Callable[[str], None],
) -> EvalResult:
    from distill.evaluation.protocols.ijb_meta import read_ijb_meta

    meta = read_ijb_meta(req.ijb_meta)  # fail on bad meta files before reading the embeddings
    queries = embeddings_from_h5(req.embeddings, labels_required=False, with_flip=True)
    report, curves = evaluate_ijb(
        queries, meta, fars=fars, use_gpu=use_gpu, cmc_rank=CMC_MAX_RANK if req.plot is not None else 0
    )
    say(report_table(report))
    result = EvalResult(report, curves, queries)
    if req.out is not None:
        _write_report(result, Path(req.out), say)
    plot = _path(req.plot)
    if plot is not None:
        name = f"{Path(req.embeddings).name} — {meta.prefix}"
        plot_roc(curves.get("roc", {}), plot, title=f"IJB 1:1 ROC — {name}")
        result.written.append(plot)
        say(f"ROC curve written to {plot}")
        plot_cmc(curves.get("cmc", {}), cmc_plot, title=f"IJB 1:N CMC — {name}")
        result.written.append(cmc_plot)
        say(f"CMC curve written to {cmc_plot}")
    return result


def _write_report(result: EvalResult, out: Path, say: Callable[[str], None]) -> None:
    write_report(result.report, out)
    result.written.append(out)
    say(f"report written to {out}")


def _loading(req: EvalRequest) -> dict:
    """How a dataset read from files is loaded for this request (image size, loader workers)."""
    return {"image_size": req.image_size, "loader_workers": req.loader_workers}
