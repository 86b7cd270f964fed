"""Pure evaluation metrics: retrieval (Recall@k, P@1, R-precision, MAP@R), verification (TAR@FAR, ROC AUC,
EER, ROC curve) and top-1 classification accuracy.

One responsibility: turn already-computed neighbour labels or pair scores into numbers. Nothing here searches,
reads files or knows about FAISS or torch (the k-NN search lives in :mod:`distill.evaluation.search`), so every function can
be checked against a hand computation or a brute-force reference.

Conventions (from the design doc):

* Scores are cosine similarities of L2-normalised embeddings; a higher score means "more similar".
* A label of ``-1`` (:data:`UNKNOWN_LABEL`) means "unknown". Unknown samples take part in no metric: callers
  drop them before the k-NN search / pair enumeration (``distill.evaluation.search.pair_scores`` does so itself), and the
  functions below give an unknown query zero relevant items, which excludes it.
* Retrieval queries whose class has no other member in the gallery (R = 0, e.g. a class with a single sample
  under leave-one-out) are excluded from *every* retrieval metric, as in Musgrave et al., "A Metric Learning
  Reality Check" (2020); ``num_queries`` reports how many queries were actually averaged.
* Reports are plain Python ``int``/``float``/``None`` so they serialise to JSON as-is; ``None`` (JSON
  ``null``) marks a value the data cannot define (e.g. TAR at a FAR below ``1 / num_impostor``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from featstore.errors import InvalidInput

UNKNOWN_LABEL: int = -1
"""Label meaning "unknown"; also the sentinel for padded/missing neighbours (it never matches a query)."""

FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Default false-accept rates at which the verification report gives the true-accept rate."""

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
"""Default cut-offs for Recall@k."""

_ROW_CHUNK = 8192  # rows of the (queries x K) relevance matrix processed at once: bounds temporary memory


# --------------------------------------------------------------------------------------------------------------
# input checking (small helpers so every public function fails with the same kind of message)
# --------------------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, sequences and (without importing torch) CPU/GPU tensors."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _int_vector(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InvalidInput(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _score_vector(x: Any, name: str) -> np.ndarray:
    """A 1-D finite float array. float32 stays float32 (scores can be billions of pairs; no silent 2x copy)."""
    a = _to_numpy(x)
    if a.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-D array of scores, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise InvalidInput(f"{name} must hold real numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name} contains NaN or infinite scores")
    return a


def _check_far(far: float) -> Fraction:
    """Return ``far`` as the exact decimal it prints as (see :func:`tar_at_far` for why)."""
    if isinstance(far, bool) or not isinstance(far, (int, float, np.floating, np.integer)):
        raise InvalidInput(f"FAR must be a number, got {far!r}")
    if not (math.isfinite(far) and 0.0 < far <= 1.0):
        raise InvalidInput(f"FAR must be in (0, 1], got {far!r}")
    return Fraction(repr(float(far)))


def _check_non_empty(scores: np.ndarray, name: str) -> None:
    if scores.size == 0:
        raise InvalidInput(f"{name} is empty: the metric is undefined without both genuine and impostor pairs")


def far_key(far: float) -> str:
    """Report key for a FAR: ``far_key(1e-3) == "1e-03"``, ``far_key(0.0015) == "1.5e-03"``.

    One fixed format so reports from runs compare, and lossless: the fewest mantissa digits that read back
    as the same float, so a key never names a rate other than the one computed (``"2e-03"`` for 0.0015 did).
    """
    value = float(far)
    for digits in range(17):
        key = f"{value:.{digits}e}"
        if float(key) == value:
            return key
    return repr(value)  # pragma: no cover - 17 significant digits always round-trip a double


# --------------------------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------------------------


def known_mask(labels: Any) -> np.ndarray:
    """Boolean mask of samples whose label is known (not :data:`UNKNOWN_LABEL`); use it to drop unknowns
    *before* the k-NN search, so that they neither query nor occupy a rank in anyone's neighbour list."""
    return _int_vector(labels, "labels") != UNKNOWN_LABEL


def count_relevant(query_labels: Any, gallery_labels: Any, *, leave_one_out: bool) -> np.ndarray:
    """R per query: how many gallery items (other than the query itself) share the query's label.

    ``leave_one_out=True``: the gallery *is* the query set (same samples, same order) and each query's own entry
    is not counted, so R = class size - 1. ``leave_one_out=False``: queries and gallery are separate sets (e.g.
    student queries against a teacher gallery) and R is the plain count in the gallery.
    Unknown (-1) query labels get R = 0 and unknown gallery items are never counted.

    Returns an int64 array of shape ``(num_queries,)``. Computed with one sort of the gallery labels, O(n log n).
    """
    q = _int_vector(query_labels, "query_labels")
    g = _int_vector(gallery_labels, "gallery_labels")
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
    nl = _to_numpy(neighbor_labels)
    if nl.ndim != 2:
        raise InvalidInput(f"neighbor_labels must be 2-D (num_queries, K), got shape {nl.shape}")
    if nl.size and not np.issubdtype(nl.dtype, np.integer):
        raise InvalidInput(f"neighbor_labels must hold integers, got dtype {nl.dtype}")
    q = _int_vector(query_labels, "query_labels")
    r = _int_vector(num_relevant, "num_relevant")
    if not (nl.shape[0] == q.size == r.size):
        raise InvalidInput(
            f"neighbor_labels has {nl.shape[0]} rows, query_labels {q.size} and num_relevant {r.size}: "
            "they must describe the same queries"
        )
    if r.size and r.min() < 0:
        raise InvalidInput("num_relevant must be >= 0")
    ks = _check_ks(ks)

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


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise InvalidInput(f"ks must be a sequence of positive integers, got {ks!r}") from None
    if not out or any(k <= 0 for k in out) or any(int(k) != k for k in ks):
        raise InvalidInput(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted(set(out)))


# --------------------------------------------------------------------------------------------------------------
# verification (pair scores)
# --------------------------------------------------------------------------------------------------------------


def _tar_from_sorted(gen_sorted: np.ndarray, imp_desc: np.ndarray, far: Fraction) -> float | None:
    n_imp = imp_desc.size
    k = math.floor(far * n_imp)  # exact: Fraction * int
    if k < 1:
        return None
    # threshold t = s_(k+1) (1-indexed, impostors descending); if every impostor may be accepted, t = -inf
    t = imp_desc[k] if k < n_imp else -np.inf
    accepted = gen_sorted.size - int(np.searchsorted(gen_sorted, t, side="right"))  # genuine strictly > t
    return accepted / gen_sorted.size


def tar_at_far(genuine: Any, impostor: Any, far: float) -> float | None:
    """True-accept rate at a target false-accept rate, with the threshold taken from the impostor scores.

    Sort the impostor scores descending s_1 >= s_2 >= ...; k = floor(far * N_imp); threshold t = s_(k+1)
    (t = -inf when k = N_imp); TAR = fraction of genuine scores *strictly* greater than t. Accepting only scores
    above t accepts at most k impostors, so the achieved FAR never exceeds the target, even with tied scores.

    Returns ``None`` where far * N_imp < 1: no threshold can certify so low a FAR on so few impostors, and
    reporting the TAR at FAR 0 instead would be a different, flattering number.

    ``far`` is read as the decimal it prints as (``Fraction(repr(far))``), so ``1e-3 * 1000`` is exactly 1
    rather than a float product that may round to 0.999...; raises :class:`InvalidInput` unless 0 < far <= 1
    or if ``genuine`` is empty.
    """
    f = _check_far(far)
    gen = _score_vector(genuine, "genuine")
    imp = _score_vector(impostor, "impostor")
    _check_non_empty(gen, "genuine")
    return _tar_from_sorted(np.sort(gen), np.sort(imp)[::-1], f)


def _auc_from_sorted(gen_sorted: np.ndarray, imp_sorted: np.ndarray) -> float:
    # Mann-Whitney U: for each genuine score g, #impostors < g plus half of #impostors == g. Summing
    # searchsorted(left) + searchsorted(right) counts "<" twice and "==" once, i.e. 2U, in integers: exact.
    twice_u = 0
    step = 1 << 20
    for start in range(0, gen_sorted.size, step):
        g = gen_sorted[start : start + step]
        left = np.searchsorted(imp_sorted, g, side="left")
        right = np.searchsorted(imp_sorted, g, side="right")
        twice_u += int(left.sum()) + int(right.sum())  # python ints: no int64 overflow on huge pair sets
    return twice_u / (2 * gen_sorted.size * imp_sorted.size)


def roc_auc(genuine: Any, impostor: Any) -> float:
    """Area under the ROC curve = P(random genuine score > random impostor score), ties counting 1/2.

    Computed as the Mann-Whitney U statistic with one sort and binary searches, O((G + I) log I), never the
    O(G * I) pair comparison. Raises :class:`InvalidInput` if either set is empty (the AUC is undefined).
    """
    gen = _score_vector(genuine, "genuine")
    imp = _score_vector(impostor, "impostor")
    _check_non_empty(gen, "genuine")
    _check_non_empty(imp, "impostor")
    return _auc_from_sorted(gen, np.sort(imp))


def _rates_at_thresholds(
    gen_sorted: np.ndarray, imp_sorted: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at each threshold t: FAR = #impostor > t / I, FRR = #genuine <= t / G (accept iff score > t)."""
    far = (imp_sorted.size - np.searchsorted(imp_sorted, thresholds, side="right")) / imp_sorted.size
    frr = np.searchsorted(gen_sorted, thresholds, side="right") / gen_sorted.size
    return far, frr


def _eer_from_sorted(gen_sorted: np.ndarray, imp_sorted: np.ndarray) -> float:
    thresholds = np.concatenate(([-np.inf], np.union1d(gen_sorted, imp_sorted)))
    far, frr = _rates_at_thresholds(gen_sorted, imp_sorted, thresholds)
    best = int(np.argmin(np.abs(far - frr)))  # first (lowest threshold) on ties
    return float((far[best] + frr[best]) / 2)


def equal_error_rate(genuine: Any, impostor: Any) -> float:
    """Equal error rate: where the false-accept and false-reject rates cross.

    A pair is accepted iff its score is strictly greater than the threshold t, so
    FAR(t) = #{impostor > t} / I and FRR(t) = #{genuine <= t} / G. Both are step functions that only change at
    observed scores, so every distinct score (plus t = -inf, where FAR = 1 and FRR = 0) is a candidate; the
    result is (FAR + FRR) / 2 at the candidate with the smallest |FAR - FRR| (the lowest such threshold if
    several tie). With discrete scores FAR and FRR rarely meet exactly; the midpoint is the usual convention.
    Raises :class:`InvalidInput` if either set is empty.
    """
    gen = _score_vector(genuine, "genuine")
    imp = _score_vector(impostor, "impostor")
    _check_non_empty(gen, "genuine")
    _check_non_empty(imp, "impostor")
    return _eer_from_sorted(np.sort(gen), np.sort(imp))


def roc_curve(genuine: Any, impostor: Any, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (far, tar), both non-decreasing, for plotting; at most ``max_points`` points.

    The exact curve has one point per distinct score threshold t (accept iff score > t), from t = max score
    (FAR = 0, TAR = 0) down to t = -inf (FAR = 1, TAR = 1); repeated points are merged. If there are more than
    ``max_points``, an evenly spaced subset (by threshold rank) is kept, always including both ends and the
    point with FAR = 0 and the highest TAR (the left edge of log-FAR plots).
    Returns float64 arrays. Raises :class:`InvalidInput` if either set is empty or ``max_points < 3``.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 3:
        raise InvalidInput(f"max_points must be an integer >= 3, got {max_points!r}")
    gen = np.sort(_score_vector(genuine, "genuine"))
    imp = np.sort(_score_vector(impostor, "impostor"))
    _check_non_empty(gen, "genuine")
    _check_non_empty(imp, "impostor")
    thresholds = np.concatenate((np.union1d(gen, imp)[::-1], [-np.inf]))  # descending: the curve goes up-right
    far, frr = _rates_at_thresholds(gen, imp, thresholds)
    tar = 1.0 - frr
    distinct = np.ones(far.size, dtype=bool)
    distinct[1:] = (far[1:] != far[:-1]) | (tar[1:] != tar[:-1])
    far, tar = far[distinct], tar[distinct]
    if far.size > max_points:
        zero_far_top = int(np.searchsorted(far, 0.0, side="right")) - 1  # last point with FAR == 0
        idx = np.unique(np.round(np.linspace(0, far.size - 1, max_points - 1)).astype(np.int64))
        idx = np.union1d(idx, [zero_far_top])
        far, tar = far[idx], tar[idx]
    return far.astype(np.float64), tar.astype(np.float64)


def verification_metrics(genuine: Any, impostor: Any, fars: Sequence[float] = FARS) -> dict[str, Any]:
    """The verification report: pair counts, TAR at each FAR, ROC AUC and EER (see the single functions).

    Sorts each score set once and derives everything from the sorted arrays. Values the data cannot define
    are ``None``: TAR where far * N_imp < 1, and every value if there are no genuine or no impostor pairs.
    """
    gen = _score_vector(genuine, "genuine")
    imp = _score_vector(impostor, "impostor")
    checked = [(far_key(f), _check_far(f)) for f in fars]
    keys = [k for k, _ in checked]
    if len(set(keys)) != len(keys):
        raise InvalidInput(f"FARs {list(fars)!r} give duplicate report keys {keys!r}")
    report: dict[str, Any] = {
        "num_genuine": int(gen.size),
        "num_impostor": int(imp.size),
        "tar_at_far": {k: None for k in keys},
        "roc_auc": None,
        "eer": None,
    }
    if gen.size == 0 or imp.size == 0:
        return report
    gen_sorted = np.sort(gen)
    imp_sorted = np.sort(imp)
    imp_desc = imp_sorted[::-1]
    report["tar_at_far"] = {k: _tar_from_sorted(gen_sorted, imp_desc, f) for k, f in checked}
    report["roc_auc"] = _auc_from_sorted(gen_sorted, imp_sorted)
    report["eer"] = _eer_from_sorted(gen_sorted, imp_sorted)
    return report


# --------------------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------------------


def top1_accuracy(logits_or_predictions: Any, labels: Any) -> float:
    """Fraction of samples whose predicted class equals the label.

    Accepts ``(N, C)`` logits/probabilities (prediction = argmax, first index on ties) or ``(N,)`` integer
    predictions. Samples labelled -1 (unknown) are dropped, as everywhere in fsd's evaluation. Raises
    :class:`InvalidInput` on mismatched lengths, non-finite logits or when no labelled sample remains.
    """
    y = _int_vector(labels, "labels")
    p = _to_numpy(logits_or_predictions)
    if p.ndim == 2:
        if p.shape[1] == 0:
            raise InvalidInput("logits have zero classes")
        if not np.issubdtype(p.dtype, np.number) or not np.all(np.isfinite(p)):
            raise InvalidInput("logits must be finite numbers")
        pred = np.argmax(p, axis=1)
    elif p.ndim == 1:
        pred = _int_vector(p, "predictions")
    else:
        raise InvalidInput(f"expected (N, C) logits or (N,) predictions, got shape {p.shape}")
    if pred.shape[0] != y.size:
        raise InvalidInput(f"{pred.shape[0]} predictions but {y.size} labels")
    known = y != UNKNOWN_LABEL
    if not known.any():
        raise InvalidInput("no sample with a known label: top-1 accuracy is undefined")
    return float(np.mean(pred[known] == y[known]))
