"""Retrieval metrics from ranked neighbour labels: Recall@k, precision@1, R-precision and MAP@R.

Pure functions (arrays in, numbers out): the k-NN search that produces the neighbour lists lives in
:mod:`distill.evaluation.search`. A label of ``-1`` (:data:`UNKNOWN_LABEL`) means "unknown": unknown samples take
part in no metric (callers drop them with :func:`known_mask` before the search). Queries whose class has no
other member in the gallery (R = 0) are excluded from *every* retrieval metric, as in Musgrave et al., "A
Metric Learning Reality Check" (2020); ``num_queries`` reports how many queries were actually averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.evaluation.validate import UNKNOWN_LABEL, check_ks, int_vector, to_numpy
from featstore.errors import InvalidInput

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
"""Default cut-offs for Recall@k."""

_ROW_CHUNK = 8192  # rows of the (queries x K) relevance matrix processed at once: bounds temporary memory


def known_mask(labels: Any) -> np.ndarray:
    """Boolean mask of samples whose label is known (not :data:`UNKNOWN_LABEL`).

    Use it to drop unknowns *before* the k-NN search, so that they neither query nor occupy a rank in anyone's
    neighbour list.
    """
    return int_vector(labels, "labels") != UNKNOWN_LABEL


def count_relevant(query_labels: Any, gallery_labels: Any, *, leave_one_out: bool) -> np.ndarray:
    """R per query: how many gallery items (other than the query itself) share the query's label.

    ``leave_one_out=True``: the gallery *is* the query set (same samples, same order) and each query's own entry
    is not counted, so R = class size - 1. ``leave_one_out=False``: queries and gallery are separate sets (e.g.
    student queries against a teacher gallery) and R is the plain count in the gallery.
    Unknown (-1) query labels get R = 0 and unknown gallery items are never counted. Computed with one sort of
    the gallery labels, O(n log n).

    Args:
        query_labels: The queries' labels.
        gallery_labels: The gallery's labels (the same array under leave-one-out).
        leave_one_out: Whether the gallery is the query set, each query's own entry not counted.

    Returns:
        An int64 array of shape ``(num_queries,)``.
    """
    q = int_vector(query_labels, "query_labels")
    g = int_vector(gallery_labels, "gallery_labels")
    if leave_one_out and not np.array_equal(q, g):
        raise InvalidInput(
            "leave_one_out=True needs the gallery to be the query set itself: query_labels and gallery_labels "
            f"differ (lengths {q.size} and {g.size})"
        )
    uniq, counts = np.unique(g[g != UNKNOWN_LABEL], return_counts=True)
    pos = np.searchsorted(uniq, q)
    found = np.zeros(q.size, dtype=bool)
    inside = pos < uniq.size
    found[inside] = uniq[pos[inside]] == q[inside]
    r = np.zeros(q.size, dtype=np.int64)
    r[found] = counts[pos[found]]
    if leave_one_out:
        r = np.maximum(r - 1, 0)
    r[q == UNKNOWN_LABEL] = 0
    return r


def retrieval_metrics(
    neighbor_labels: Any,
    query_labels: Any,
    num_relevant: Any,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Recall@k, precision@1, R-precision and MAP@R, averaged over the queries that have R > 0.

    Args:
        neighbor_labels: ``(num_queries, K)`` labels of each query's retrieved items in rank order (best first),
            the query itself already excluded under leave-one-out. Padding (no item at that rank) and unknown
            items are :data:`UNKNOWN_LABEL` (-1), which never matches a query because unknown queries are
            excluded.
        query_labels: ``(num_queries,)`` the queries' labels.
        num_relevant: ``(num_queries,)`` R per query, from :func:`count_relevant`.
        ks: cut-offs for Recall@k (a hit if any of the first k neighbours shares the query's label).

    Definitions, per query with R relevant items and rel(i) = 1 if rank i is relevant (Musgrave et al. 2020):
    R-precision = (#relevant in the top R) / R; MAP@R = (1/R) * sum_{i<=R} P(i) * rel(i) with P(i) the
    precision in the top i. Both need K >= max R (and Recall@k needs K >= max k) — a shorter list would
    silently under-count, so it raises :class:`InvalidInput` instead.

    Queries with R = 0 (a single-sample class, or a label absent from the gallery) or an unknown label are
    excluded from every metric; ``num_queries`` is the number averaged. With no query left the metric values
    are ``None``.
    """
    # long for its docstring (the four definitions) and checks; the metrics share one pass over row chunks
    nl = to_numpy(neighbor_labels)
    if nl.ndim != 2:
        raise InvalidInput(f"neighbor_labels must be 2-D (num_queries, K), got shape {nl.shape}")
    if nl.size and not np.issubdtype(nl.dtype, np.integer):
        raise InvalidInput(f"neighbor_labels must hold integers, got dtype {nl.dtype}")
    q = int_vector(query_labels, "query_labels")
    r = int_vector(num_relevant, "num_relevant")
    if not (nl.shape[0] == q.size == r.size):
        raise InvalidInput(
            f"neighbor_labels has {nl.shape[0]} rows, query_labels {q.size} and num_relevant {r.size}: "
            "they must describe the same queries"
        )
    if r.size and r.min() < 0:
        raise InvalidInput("num_relevant must be >= 0")
    ks = check_ks(ks)

    keep = (r > 0) & (q != UNKNOWN_LABEL)
    nq = int(keep.sum())
    report: dict[str, Any] = {
        "recall_at_k": {str(k): None for k in ks},
        "precision_at_1": None,
        "r_precision": None,
        "map_at_r": None,
        "num_queries": nq,
    }
    if nq == 0:
        return report

    nl, q, r = nl[keep], q[keep], r[keep]
    need = max(max(ks), int(r.max()))
    if nl.shape[1] < need:
        raise InvalidInput(
            f"neighbor lists have K={nl.shape[1]} columns but exact metrics need K >= max(max(ks), max R) = "
            f"{need}; search more neighbours (padding with -1 is fine)"
        )
    nl = nl[:, :need].astype(np.int64, copy=False)

    hits = {k: 0 for k in ks}
    hits_at_1 = 0
    rp_sum = 0.0
    map_sum = 0.0
    ranks = np.arange(1, need + 1)
    for start in range(0, nq, _ROW_CHUNK):
        rel = nl[start : start + _ROW_CHUNK] == q[start : start + _ROW_CHUNK, None]
        rr = r[start : start + _ROW_CHUNK]
        if np.any(rel.sum(axis=1) > rr):
            raise InvalidInput(
                "a neighbour list holds more items with the query's label than num_relevant allows: the query "
                "itself is probably in its own list (use knn_search(..., exclude_self=True)) or R is wrong"
            )
        hits_at_1 += int(rel[:, 0].sum())
        for k in ks:
            hits[k] += int(rel[:, :k].any(axis=1).sum())
        rel_r = rel & (ranks[None, :] <= rr[:, None])  # only the top R ranks count for R-precision / MAP@R
        num_rel_in_r = rel_r.sum(axis=1)
        rp_sum += float(np.sum(num_rel_in_r / rr))
        precision_at_i = np.cumsum(rel_r, axis=1) / ranks[None, :]
        map_sum += float(np.sum(np.sum(precision_at_i * rel_r, axis=1) / rr))

    report["recall_at_k"] = {str(k): hits[k] / nq for k in ks}
    report["precision_at_1"] = hits_at_1 / nq
    report["r_precision"] = rp_sum / nq
    report["map_at_r"] = map_sum / nq
    return report
