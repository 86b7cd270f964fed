"""Pure evaluation metrics — retrieval, verification, identification, classification — and the table of them.

One responsibility: turn already-computed neighbour labels, pair scores or logits into numbers. Nothing here
searches, reads files or knows about FAISS or torch (the k-NN search lives in :mod:`distill.evaluation.search`),
so every function can be checked against a hand computation or a brute-force reference
(:mod:`distill.evaluation.testing`).

Conventions (from the design doc):

* Scores are cosine similarities of L2-normalised embeddings; a higher score means "more similar".
* A label of ``-1`` (:data:`UNKNOWN_LABEL`) means "unknown". Unknown samples take part in no metric: callers
  drop them before the k-NN search / pair enumeration, and the functions give an unknown query zero relevant
  items, which excludes it.
* Retrieval queries whose class has no other member in the gallery (R = 0) are excluded from *every* retrieval
  metric (Musgrave et al., "A Metric Learning Reality Check", 2020); ``num_queries`` says how many were averaged.
* Reports are plain Python ``int``/``float``/``None`` so they serialise to JSON as-is; ``None`` (JSON
  ``null``) marks a value the data cannot define (e.g. TAR at a FAR below ``1 / num_impostor``).

:data:`METRICS` is the one list of the report sections a metric function fills, in report order, with what
input each needs — as pytorch-metric-learning's ``AccuracyCalculator.get_function_dict`` /
``requires_knn`` — and :func:`distill.evaluation.report.evaluate` builds a report by walking it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distill.evaluation.metrics.classification import top1_accuracy
from distill.evaluation.metrics.identification import FPIRS, RANKS, cmc_from_neighbors, identification_metrics
from distill.evaluation.metrics.retrieval import (
    DEFAULT_KS,
    UNKNOWN_LABEL,
    count_relevant,
    known_mask,
    retrieval_metrics,
)
from distill.evaluation.metrics.verification import (
    FARS,
    equal_error_rate,
    far_key,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_metrics,
)
from featstore.errors import InvalidInput

__all__ = [
    "DEFAULT_KS",
    "FARS",
    "FPIRS",
    "METRICS",
    "RANKS",
    "REQUIREMENTS",
    "UNKNOWN_LABEL",
    "Metric",
    "cmc_from_neighbors",
    "count_relevant",
    "equal_error_rate",
    "far_key",
    "get_function_dict",
    "identification_metrics",
    "known_mask",
    "retrieval_metrics",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "top1_accuracy",
    "verification_metrics",
]

REQUIREMENTS: dict[str, str] = {
    "logits": "(N, C) class scores of a classifier head, against the samples' labels",
    "knn": "each query's neighbours in rank order (exact or approximate FAISS search) and its R",
    "pair_scores": "genuine and impostor cosine scores: all pairs of known-label samples, or a pairs file",
    "gallery_ranks": "each probe template's gallery subjects in score order (IJB 1:N templates)",
}
"""What a metric needs computed before it can run; the report builder knows how to produce each."""


@dataclass(frozen=True)
class Metric:
    """One report section: the pure function that fills it and the input it needs (a :data:`REQUIREMENTS` key)."""

    function: Callable[..., Any]
    requires: str
    keys: tuple[str, ...]  # the keys the function's result holds (the numbers of the section)

    def __post_init__(self) -> None:
        if self.requires not in REQUIREMENTS:
            raise InvalidInput(f"unknown requirement {self.requires!r}; valid: {sorted(REQUIREMENTS)}")


METRICS: dict[str, Metric] = {
    "classification": Metric(top1_accuracy, "logits", ("top1",)),
    "retrieval": Metric(
        retrieval_metrics, "knn", ("recall_at_k", "precision_at_1", "r_precision", "map_at_r", "num_queries")
    ),
    "verification": Metric(
        verification_metrics, "pair_scores", ("num_genuine", "num_impostor", "tar_at_far", "roc_auc", "eer")
    ),
    "identification": Metric(
        identification_metrics, "gallery_ranks", ("num_probes", "num_mated", "num_nonmated", "tpir_at_fpir")
    ),
}
"""Report section name → :class:`Metric`, in the order sections appear in a report."""


def get_function_dict(requires: str | None = None) -> dict[str, Callable[..., Any]]:
    """Section name → metric function, all of them or only those needing ``requires`` (e.g. ``"knn"``)."""
    if requires is not None and requires not in REQUIREMENTS:
        raise InvalidInput(f"unknown requirement {requires!r}; valid: {sorted(REQUIREMENTS)}")
    return {name: m.function for name, m in METRICS.items() if requires is None or m.requires == requires}
