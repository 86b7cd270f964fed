"""Verification metrics from genuine and impostor pair scores: TAR@FAR, ROC AUC, EER and the ROC curve.

Pure functions: scores are cosine similarities (higher = more similar), computed elsewhere (all pairs in
:mod:`distill.evaluation.verification`, listed pairs in :mod:`distill.evaluation.protocols.pairs`). Values the
data cannot define are ``None`` (JSON ``null``), e.g. TAR at a FAR below ``1 / num_impostor``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from distill.evaluation.validate import check_far, score_vector
from featstore.errors import InvalidInput

FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Default false-accept rates at which the verification report gives the true-accept rate."""


def _check_non_empty(scores: np.ndarray, name: str) -> None:
    if scores.size == 0:
        raise InvalidInput(f"{name} is empty: the metric is undefined without both genuine and impostor pairs")


def far_key(far: float) -> str:
    """Report key for a FAR: ``far_key(1e-3) == "1e-03"``, ``far_key(0.0015) == "1.5e-03"``.

    One fixed format so reports from runs compare, and lossless: the fewest mantissa digits that read back
    as the same float, so a key never names a rate other than the one computed (``"2e-03"`` for 0.0015 would).
    """
    value = float(far)
    for digits in range(17):
        key = f"{value:.{digits}e}"
        if float(key) == value:
            return key
    return repr(value)  # pragma: no cover - 17 significant digits always round-trip a double


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
    rather than a float product that may round to 0.999....

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.
        far: The target false-accept rate, in (0, 1].

    Returns:
        The TAR, or None where far * N_imp < 1.

    Raises:
        InvalidInput: ``far`` outside (0, 1], ``genuine`` empty, or scores that are not finite 1-D arrays.
    """
    f = check_far(far)
    gen = score_vector(genuine, "genuine")
    imp = score_vector(impostor, "impostor")
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
    O(G * I) pair comparison.

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.

    Returns:
        The AUC in [0, 1].

    Raises:
        InvalidInput: Either set is empty (the AUC is undefined) or not a finite 1-D array.
    """
    gen = score_vector(genuine, "genuine")
    imp = score_vector(impostor, "impostor")
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

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.

    Returns:
        The EER in [0, 1].

    Raises:
        InvalidInput: Either set is empty or not a finite 1-D array.
    """
    gen = score_vector(genuine, "genuine")
    imp = score_vector(impostor, "impostor")
    _check_non_empty(gen, "genuine")
    _check_non_empty(imp, "impostor")
    return _eer_from_sorted(np.sort(gen), np.sort(imp))


def roc_curve(genuine: Any, impostor: Any, max_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (far, tar), both non-decreasing, for plotting; at most ``max_points`` points.

    The exact curve has one point per distinct score threshold t (accept iff score > t), from t = max score
    (FAR = 0, TAR = 0) down to t = -inf (FAR = 1, TAR = 1); repeated points are merged. If there are more than
    ``max_points``, an evenly spaced subset (by threshold rank) is kept, always including both ends and the
    point with FAR = 0 and the highest TAR (the left edge of log-FAR plots).

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.
        max_points: The most points returned, at least 3.

    Returns:
        (far, tar) float64 arrays.

    Raises:
        InvalidInput: Either set is empty, or ``max_points < 3``.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 3:
        raise InvalidInput(f"max_points must be an integer >= 3, got {max_points!r}")
    gen = np.sort(score_vector(genuine, "genuine"))
    imp = np.sort(score_vector(impostor, "impostor"))
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

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.
        fars: The false-accept rates TAR is reported at.

    Returns:
        The ``verification`` report section.

    Raises:
        InvalidInput: A FAR outside (0, 1], FARs with the same report key, or scores that are not finite.
    """
    gen = score_vector(genuine, "genuine")
    imp = score_vector(impostor, "impostor")
    checked = [(far_key(f), check_far(f)) for f in fars]
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
