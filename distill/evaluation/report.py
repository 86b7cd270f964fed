"""Building an evaluation report from an :class:`~distill.evaluation.sources.EmbeddingSet`.

The report holds the sections of docs/evaluation.md. The numbers come from the pure functions of :mod:`distill.evaluation.metrics` (the sections are those of its
:data:`~distill.evaluation.metrics.METRICS` table), neighbour search from :mod:`distill.evaluation.search` (FAISS,
GPU when present; exact unless an approximate ``index`` is asked for), all-pairs verification from
:mod:`distill.evaluation.verification`, listed pairs from :mod:`distill.evaluation.protocols.pairs` and the IJB
template protocols from :mod:`distill.evaluation.protocols.ijb` (:func:`evaluate_ijb` gathers their report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.evaluation import metrics
from distill.evaluation.protocols.pairs import Pairs, pairs_report
from distill.evaluation.sources import EmbeddingSet
from distill.evaluation.verification import streaming_verification
from featstore.atomic import atomic_write_text
from featstore.errors import InvalidInput

__all__ = [
    "CMC_MAX_RANK",
    "cmc_curve",
    "evaluate",
    "evaluate_ijb",
    "retrieval_report",
    "verification_report",
    "write_report",
]

CMC_MAX_RANK = 50
"""Highest rank of the CMC curve that ``fsd eval --plot`` draws beside the ROC."""


def retrieval_report(
    queries: EmbeddingSet,
    gallery: EmbeddingSet | None = None,
    use_gpu: bool | None = None,
    *,
    index: str = "exact",
    index_options: dict[str, Any] | None = None,
    recall_queries: int | None = 1000,
) -> dict[str, Any]:
    """Leave-one-out retrieval within ``queries`` or, with ``gallery``, queries against the gallery.

    When both sets are the same samples (same dataset fingerprint and size, e.g. student vs teacher on the
    same split), the query's own counterpart in the gallery is excluded, as in leave-one-out.

    ``index`` = ``"ivf"``/``"hnsw"`` searches with an approximate FAISS index (``index_options``: ``nlist``,
    ``nprobe``, ``hnsw_m``, ``ef_search`` of :func:`distill.evaluation.search.knn_search`) and adds ``index`` =
    ``{"type", "k", "recall_vs_exact@k", "num_queries_checked", "params"}``: the fraction of the exact top-k
    neighbours the index found, checked on ``recall_queries`` random queries (all when ``None``).

    Args:
        queries: The embeddings searched from.
        gallery: The embeddings searched in (None: leave-one-out within ``queries``).
        use_gpu: Search on the GPU (None: when FAISS has one).
        index: ``"exact"``, ``"ivf"`` or ``"hnsw"``.
        index_options: The approximate index's parameters.
        recall_queries: Queries the approximate index's recall is checked on (None: all).

    Returns:
        The ``retrieval`` section of the report.
    """
    from distill.evaluation.search import knn_search, labels_at  # FAISS loads when a search runs

    opts = dict(index_options or {})
    search = dict(use_gpu=use_gpu, index=index, **opts)
    q_known = metrics.known_mask(queries.labels)
    q_emb, q_lab = queries.embeddings[q_known], queries.labels[q_known]
    if gallery is None:
        k = int(max(max(metrics.DEFAULT_KS), metrics.count_relevant(q_lab, q_lab, leave_one_out=True).max(initial=0)))
        k = min(k, len(q_lab) - 1)
        if k < 1:
            raise InvalidInput("retrieval needs at least 2 samples with known labels")
        _, idx = knn_search(q_emb, q_emb, k, exclude_self=True, **search)
        relevant = metrics.count_relevant(q_lab, q_lab, leave_one_out=True)
        report = metrics.retrieval_metrics(_padded(labels_at(idx, q_lab)), q_lab, relevant, ks=metrics.DEFAULT_KS)
        if index != "exact":
            report["index"] = _index_section(q_emb, q_emb, idx, True, index, opts, use_gpu, recall_queries)
        return report
    g_known = metrics.known_mask(gallery.labels)
    g_emb, g_lab = gallery.embeddings[g_known], gallery.labels[g_known]
    if q_emb.shape[1] != g_emb.shape[1]:
        raise InvalidInput(
            f"query dim {q_emb.shape[1]} ≠ gallery dim {g_emb.shape[1]}: cross-model retrieval "
            "needs embeddings in one space"
        )
    paired = (
        queries.source.get("fingerprint") is not None
        and queries.source.get("fingerprint") == gallery.source.get("fingerprint")
        and len(queries.labels) == len(gallery.labels)
    )
    relevant = metrics.count_relevant(q_lab, g_lab, leave_one_out=False)
    if paired:
        relevant = relevant - 1  # the counterpart shares the label and is excluded
    k = min(int(max(max(metrics.DEFAULT_KS), relevant.max(initial=0))), len(g_lab) - int(paired))
    _, idx = knn_search(q_emb, g_emb, k + int(paired), **search)
    index_section = (
        _index_section(q_emb, g_emb, idx, False, index, opts, use_gpu, recall_queries) if index != "exact" else None
    )
    if paired:
        own = np.flatnonzero(q_known)  # original index of each query = index of its counterpart
        g_index = np.flatnonzero(g_known)
        idx_orig = np.where(idx >= 0, g_index[np.clip(idx, 0, None)], -1)
        keep = idx_orig != own[:, None]
        # drop the counterpart (or the last entry when the counterpart is not among the k+1)
        keep[keep.all(axis=1), -1] = False
        idx = idx[keep].reshape(len(idx), k)
    report = metrics.retrieval_metrics(_padded(labels_at(idx, g_lab)), q_lab, relevant, ks=metrics.DEFAULT_KS)
    if index_section is not None:
        report["index"] = index_section
    return report


def _index_section(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    idx: np.ndarray,
    exclude_self: bool,
    index: str,
    opts: dict[str, Any],
    use_gpu: bool | None,
    recall_queries: int | None,
) -> dict[str, Any]:
    """What the report says about an approximate search: its parameters and its recall against exact search."""
    from distill.evaluation.search import recall_vs_exact, resolve_index_params

    k = int(idx.shape[1])
    recall, checked = recall_vs_exact(
        q_emb,
        q_emb if exclude_self else g_emb,
        idx,
        exclude_self=exclude_self,
        max_queries=recall_queries,
        use_gpu=use_gpu,
    )
    params = resolve_index_params(index, len(g_emb), min(k + int(exclude_self), len(g_emb)), **opts)
    params.pop("type")
    return {"type": index, "k": k, "recall_vs_exact@k": recall, "num_queries_checked": checked, "params": params}


def _padded(neighbor_labels: np.ndarray) -> np.ndarray:
    """Neighbour labels padded with unknown (-1) columns to the largest default k.

    With fewer than k others, Recall@k ("any of the k nearest others") is over all of them, and every report
    has the same keys.
    """
    missing = max(metrics.DEFAULT_KS) - neighbor_labels.shape[1]
    if missing <= 0:
        return neighbor_labels
    return np.pad(neighbor_labels, ((0, 0), (0, missing)), constant_values=metrics.UNKNOWN_LABEL)


def evaluate(
    queries: EmbeddingSet,
    *,
    gallery: EmbeddingSet | None = None,
    fars: tuple[float, ...] = metrics.FARS,
    use_gpu: bool | None = None,
    pairs: Pairs | None = None,
    index: str = "exact",
    index_options: dict[str, Any] | None = None,
    ijb: Any = None,
) -> tuple[dict[str, Any], dict]:
    """The report of docs/evaluation.md and the ROC curve(s) for plotting.

    Verification covers every unordered pair of known-label samples, computed exactly in bounded memory by
    :func:`distill.evaluation.verification.streaming_verification`; with ``pairs`` it covers those pairs
    instead and the section carries ``"protocol": "pairs"`` (and ``lfw`` for LFW files).

    Args:
        queries: The embeddings (and labels, logits) evaluated.
        gallery: Another model's embeddings of the same samples, for cross-model retrieval.
        fars: The false-accept rates TAR is reported at.
        use_gpu: Search on the GPU (None: when FAISS has one).
        pairs: Listed pairs (:mod:`distill.evaluation.protocols.pairs`) instead of all pairs.
        index: Approximate search for retrieval and cross-model retrieval (:func:`retrieval_report`).
        index_options: The approximate index's parameters.
        ijb: A :class:`distill.evaluation.protocols.ijb.IjbMeta`: the IJB template protocols instead of the
            per-sample sections (:func:`evaluate_ijb`).

    Returns:
        (report, {curve name: (far, tar)}).

    Raises:
        InvalidInput: ``ijb`` combined with ``pairs`` or ``gallery``, or inputs a section cannot use.
    """
    if ijb is not None:
        if pairs is not None or gallery is not None:
            raise InvalidInput("the IJB protocol cannot be combined with a pairs file or a cross-model gallery")
        report, curves = evaluate_ijb(queries, ijb, fars=fars, use_gpu=use_gpu)
        return report, curves.get("roc", {})
    report: dict[str, Any] = {"source": queries.source, "num_samples": int(len(queries.labels))}
    options = _SectionOptions(fars, use_gpu, pairs, {"index": index, "index_options": index_options})
    curves: dict[str, Any] = {}
    for name, metric in metrics.METRICS.items():  # the table's order is the report's order
        build = _SECTION_BUILDERS.get(metric.requires)
        if build is None:  # identification needs IJB templates: evaluate_ijb's report
            continue
        section = build(metric, queries, options, curves)
        if section is not None:
            report[name] = section
    if gallery is not None:
        report["cross_model"] = retrieval_report(queries, gallery, use_gpu=use_gpu, **options.search)
        report["cross_model"]["gallery"] = gallery.source
    return report, curves


@dataclass(frozen=True)
class _SectionOptions:
    """What :func:`evaluate` was asked for, handed to each section builder."""

    fars: tuple[float, ...]
    use_gpu: bool | None
    pairs: Pairs | None
    search: dict[str, Any]


def _classification_section(
    metric: metrics.Metric, queries: EmbeddingSet, options: _SectionOptions, curves: dict[str, Any]
) -> dict[str, Any] | None:
    """Top-1 of the logits over the known-label samples; no section without a classifier head."""
    if queries.logits is None:
        return None
    known = metrics.known_mask(queries.labels)
    return {"top1": metric.function(queries.logits[known], queries.labels[known])}


def _retrieval_section(
    metric: metrics.Metric, queries: EmbeddingSet, options: _SectionOptions, curves: dict[str, Any]
) -> dict[str, Any]:
    """Leave-one-out retrieval (:func:`retrieval_report`)."""
    if options.pairs is not None and int(metrics.known_mask(queries.labels).sum()) < 2:
        # a pairs protocol needs no labels: retrieval is then undefined (null), not a reason to refuse the run
        return metric.function(
            np.zeros((0, 1), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), ks=metrics.DEFAULT_KS
        )
    return retrieval_report(queries, use_gpu=options.use_gpu, **options.search)


def _verification_section(
    metric: metrics.Metric, queries: EmbeddingSet, options: _SectionOptions, curves: dict[str, Any]
) -> dict[str, Any]:
    """All pairs or the pairs file; its ROC curve goes to ``curves[""]``.

    :func:`verification_report` computes ``metric.function``'s numbers without materialising the scores.
    """
    section, roc = verification_report(queries, options.fars, use_gpu=options.use_gpu, pairs=options.pairs)
    if roc[0].size:
        curves[""] = roc
    return section


_SECTION_BUILDERS = {
    "logits": _classification_section,
    "knn": _retrieval_section,
    "pair_scores": _verification_section,
}
"""How :func:`evaluate` produces the input each :data:`~distill.evaluation.metrics.METRICS` requirement names."""


def evaluate_ijb(
    queries: EmbeddingSet,
    meta: Any,
    *,
    fars: tuple[float, ...] = metrics.FARS,
    use_gpu: bool | None = None,
    cmc_rank: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The IJB report from embeddings named by image.

    The report is ``{"source", "num_samples", "ijb": {"protocol", "verification", "identification"}}``
    (:func:`distill.evaluation.protocols.ijb.ijb_evaluation`). The per-sample retrieval/verification sections
    are not computed: IJB images carry no labels, and IJB-C has about 10^11 image pairs.

    Args:
        queries: Embeddings with ``names``, flip-summed with ``queries.flip`` when present.
        meta: The protocol's :class:`~distill.evaluation.protocols.ijb.IjbMeta`.
        fars: The false-accept rates TAR is reported at.
        use_gpu: Search on the GPU (None: when FAISS has one).
        cmc_rank: Highest rank of the CMC curves returned (0: none).

    Returns:
        (report, curves), curves ``{"roc": {"": (far, tar)}, "cmc": {"G1": …, "G2": …}}`` (those that exist).

    Raises:
        InvalidInput: The embeddings carry no image names.
    """
    from distill.evaluation.protocols.ijb import ijb_evaluation

    if queries.names is None:
        raise InvalidInput(
            "the IJB protocol matches embeddings to the meta files by image name: the embeddings "
            "need a 'names' dataset (--embeddings FILE.h5)"
        )
    section, raw = ijb_evaluation(
        queries.embeddings, queries.names, meta, flip=queries.flip, fars=fars, use_gpu=use_gpu, cmc_rank=cmc_rank
    )
    report: dict[str, Any] = {"source": queries.source, "num_samples": len(queries.labels), "ijb": section}
    curves: dict[str, Any] = {}
    if "roc" in raw:
        curves["roc"] = {"": raw["roc"]}
    if raw.get("cmc"):
        curves["cmc"] = raw["cmc"]
    return report, curves


def verification_report(
    queries: EmbeddingSet,
    fars: tuple[float, ...] = metrics.FARS,
    *,
    use_gpu: bool | None = None,
    pairs: Pairs | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The ``verification`` section and its ROC curve: all pairs (streaming, exact) or the given ``pairs``.

    Args:
        queries: The embeddings and labels.
        fars: The false-accept rates TAR is reported at.
        use_gpu: Score on the GPU (None: when available).
        pairs: Listed pairs instead of all pairs of known-label samples.

    Returns:
        (section, (far, tar)).
    """
    if pairs is not None:
        return pairs_report(queries.embeddings, pairs, fars)
    return streaming_verification(queries.embeddings, queries.labels, fars, use_gpu=use_gpu)


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write ``report`` to ``path`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def cmc_curve(queries: EmbeddingSet, max_rank: int = CMC_MAX_RANK, use_gpu: bool | None = None) -> np.ndarray:
    """Leave-one-out CMC of ``queries`` up to rank min(max_rank, N - 1), N = known-label samples.

    Args:
        queries: The embeddings and labels.
        max_rank: The highest rank wanted.
        use_gpu: Search on the GPU (None: when FAISS has one).

    Returns:
        The identification rate at ranks 1…k (empty under two known-label samples).
    """
    from distill.evaluation.search import knn_search, labels_at

    known = metrics.known_mask(queries.labels)
    emb, lab = queries.embeddings[known], queries.labels[known]
    k = min(max_rank, len(lab) - 1)
    if k < 1:
        return np.empty(0)
    _, idx = knn_search(emb, emb, k, exclude_self=True, use_gpu=use_gpu)
    relevant = metrics.count_relevant(lab, lab, leave_one_out=True)
    return metrics.cmc_from_neighbors(labels_at(idx, lab), lab, relevant, k)
