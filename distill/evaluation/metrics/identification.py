"""Identification metrics (1:N): closed-set CMC / rank-k and open-set TPIR@FPIR of probes against a gallery.

Pure functions over ranked gallery subjects (or labels) and top-1 scores; the exact gallery search is done by
the caller (:mod:`distill.evaluation.protocols.ijb` for IJB templates, :func:`distill.evaluation.report.cmc_curve`
for leave-one-out samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from distill.evaluation.metrics.retrieval import UNKNOWN_LABEL
from distill.evaluation.metrics.verification import far_key
from distill.evaluation.validate import check_far, check_ks, int_vector, score_vector
from featstore.errors import InvalidInput

RANKS: tuple[int, ...] = (1, 5, 10)
"""Closed-set identification ranks reported (CMC at rank k)."""

FPIRS: tuple[float, ...] = (1e-2, 1e-1)
"""Open-set false-positive identification rates at which the TPIR is reported."""


def _tpir(top1_scores: np.ndarray, hit1: np.ndarray, mated: np.ndarray, fpir: Fraction) -> float | None:
    nonmated = np.sort(top1_scores[~mated])[::-1]
    n_nm, n_m = nonmated.size, int(mated.sum())
    k = math.floor(fpir * n_nm)
    if k < 1 or n_m == 0:
        return None
    t = nonmated[k] if k < n_nm else -np.inf  # threshold s_(k+1): at most k non-mated top-1 scores exceed it
    return int(np.sum(hit1 & mated & (top1_scores > t))) / n_m


def identification_metrics(
    neighbor_subjects: Any,
    top1_scores: Any,
    probe_subjects: Any,
    gallery_subjects: Any,
    ranks: Sequence[int] = RANKS,
    fpirs: Sequence[float] = FPIRS,
) -> dict[str, Any]:
    """Closed-set CMC and open-set TPIR@FPIR of one gallery, from each probe's ranked gallery subjects.

    Args:
        neighbor_subjects: ``(P, K)`` subject of each probe's gallery templates in descending score order,
            K >= min(max(ranks), G) — no padding.
        top1_scores: ``(P,)`` each probe's best gallery score.
        probe_subjects: ``(P,)`` each probe's subject.
        gallery_subjects: ``(G,)`` the gallery's subjects (a probe is *mated* iff its subject is among them).
        ranks: The ranks k of the CMC.
        fpirs: The false-positive identification rates TPIR is reported at.

    Definitions (M mated, N non-mated probes):

    * ``rank_k`` = #{mated probes with their subject among the first k gallery templates} / M (rank k > G
      counts all G); ``None`` when M = 0.
    * ``tpir_at_fpir[f]``: sort the non-mated probes' top-1 scores descending s_1 >= s_2 >= …, n = floor(f·N),
      threshold t = s_(n+1) (-inf when n = N); TPIR = #{mated probes whose rank-1 template is of their subject
      and whose top-1 score > t} / M, so the non-mated probes accepted (top-1 > t) are at most f·N. ``None`` where
      f·N < 1 or M = 0 — the exact sorted definition of TAR@FAR in docs/evaluation.md.

    Also ``num_probes``, ``num_mated``, ``num_nonmated``.
    """
    ns = np.asarray(neighbor_subjects)
    s = score_vector(top1_scores, "top1_scores")
    ps = int_vector(probe_subjects, "probe_subjects")
    gs = int_vector(gallery_subjects, "gallery_subjects")
    if ns.ndim != 2 or (ns.size and not np.issubdtype(ns.dtype, np.integer)):
        raise InvalidInput(f"neighbor_subjects must be a 2-D integer array (probes, K), got shape {ns.shape}")
    if not (ns.shape[0] == s.size == ps.size):
        raise InvalidInput(
            f"neighbor_subjects has {ns.shape[0]} rows, top1_scores {s.size} and probe_subjects "
            f"{ps.size}: they must describe the same probes"
        )
    ranks = check_ks(ranks)
    checked = [(far_key(f), check_far(f)) for f in fpirs]
    if gs.size == 0:
        raise InvalidInput("the gallery is empty")
    need = min(max(ranks), gs.size)
    if ns.shape[0] and ns.shape[1] < need:
        raise InvalidInput(
            f"neighbour lists have K={ns.shape[1]} columns; ranks up to {max(ranks)} in a gallery of "
            f"{gs.size} need K >= {need}"
        )
    mated = np.isin(ps, gs)
    m = int(mated.sum())
    hit = ns[:, :need] == ps[:, None]
    first = np.where(hit.any(axis=1), np.argmax(hit, axis=1), need)  # 0-based rank of the first hit
    report: dict[str, Any] = {"num_probes": int(ps.size), "num_mated": m, "num_nonmated": int(ps.size - m)}
    for r in ranks:
        report[f"rank_{r}"] = int(np.sum(mated & (first < r))) / m if m else None
    hit1 = first == 0
    report["tpir_at_fpir"] = {key: _tpir(s, hit1, mated, f) for key, f in checked}
    return report


def cmc_from_neighbors(neighbor_labels: Any, query_labels: Any, num_relevant: Any, max_rank: int) -> np.ndarray:
    """CMC: for k = 1..max_rank, the fraction of queries whose first same-label neighbour is at rank <= k.

    Same inputs and exclusions as :func:`distill.evaluation.metrics.retrieval_metrics` (queries with R = 0 or an unknown
    label take no part), so ``cmc[k - 1]`` equals Recall@k.

    Args:
        neighbor_labels: ``(num_queries, K)`` labels of each query's neighbours, best first, K >= ``max_rank``.
        query_labels: ``(num_queries,)`` the queries' labels.
        num_relevant: ``(num_queries,)`` R per query, from :func:`count_relevant`.
        max_rank: The highest rank of the curve.

    Returns:
        A float64 array of length ``max_rank``, empty when no query is left.
    """
    nl = np.asarray(neighbor_labels)
    q = np.asarray(query_labels).astype(np.int64, copy=False)
    r = np.asarray(num_relevant).astype(np.int64, copy=False)
    if nl.ndim != 2 or nl.shape[0] != q.size or q.size != r.size:
        raise InvalidInput(
            f"neighbor_labels {nl.shape}, query_labels {q.shape} and num_relevant {r.shape} do not "
            "describe the same queries"
        )
    if max_rank < 1 or nl.shape[1] < max_rank:
        raise InvalidInput(
            f"a CMC up to rank {max_rank} needs at least {max_rank} neighbours per query, got {nl.shape[1]}"
        )
    keep = (r > 0) & (q != UNKNOWN_LABEL)
    if not keep.any():
        return np.empty(0)
    rel = nl[keep, :max_rank] == q[keep, None]
    hit = rel.any(axis=1)
    first = np.argmax(rel, axis=1)[hit]  # 0-based rank of the first hit
    return np.cumsum(np.bincount(first, minlength=max_rank)) / int(keep.sum())
