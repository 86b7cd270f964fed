"""Exact verification metrics from counts of order-preserving score keys: the part every pass strategy shares.

One responsibility: given the first-level histograms of genuine and impostor keys (:class:`Histograms`) and
full-resolution counts of a few refined buckets, give TAR@FAR, EER and the ROC points with exactly the integer
and float operations of :func:`distill.evaluation.metrics.verification_metrics` (docs/evaluation.md), so that the
results are bit-identical to the materialising path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["Histograms", "eer", "inconsistent", "refined_counts", "roc", "tar", "tar_plan"]


def inconsistent(what: str) -> RuntimeError:
    """The error for scores that differ between passes (a non-deterministic backend): no exact result exists."""
    return RuntimeError(
        f"pair scores differed between passes ({what}): the scoring backend is not "
        "deterministic, so no exact result can be given; rerun with use_gpu=False"
    )


class Histograms:
    """Pass-1 counts by first-level bucket (genuine ``hg``, impostor ``hi``) and their cumulative sums."""

    def __init__(self, hg: np.ndarray, hi: np.ndarray, lo: int) -> None:
        self.hg, self.hi, self.lo = hg, hi, lo
        self.n_gen, self.n_imp = int(hg.sum()), int(hi.sum())
        self.imp_ge = np.cumsum(hi[::-1])[::-1]  # impostors in this bucket or higher
        self.imp_gt = self.imp_ge - hi  # ... in higher buckets
        self.gen_le = np.cumsum(hg)  # genuine pairs in this bucket or lower
        self.nonempty = np.flatnonzero(hg + hi)


def tar_plan(hist: Histograms, checked: list) -> dict[str, Any]:
    """Locate the TAR@FAR threshold of each FAR in the first-level histogram.

    The threshold is the (k+1)-th largest impostor key, k = floor(far · N_imp).

    Args:
        hist: The pass-1 histograms.
        checked: (report key, FAR as an exact Fraction) pairs.

    Returns:
        Per report key: None (far · N_imp < 1), ``"all"`` (threshold -inf) or (bucket of the threshold, its
        rank from the top within that bucket).
    """
    plan: dict[str, Any] = {}
    for key, far in checked:
        k = math.floor(far * hist.n_imp)  # exact: Fraction * int
        if k < 1:
            plan[key] = None
        elif k >= hist.n_imp:
            plan[key] = "all"
        else:
            b = int(np.flatnonzero(hist.imp_ge >= k + 1)[-1])
            plan[key] = (b, k + 1 - int(hist.imp_gt[b]))
    return plan


def tar(hist: Histograms, plan: Any, refined: np.ndarray, slot_of: dict[int, int]) -> float | None:
    """The TAR at one FAR's threshold, from its :func:`tar_plan` entry and the refined bucket's counts.

    Args:
        hist: The pass-1 histograms.
        plan: The FAR's entry of :func:`tar_plan`.
        refined: Full-resolution (impostor, genuine) counts of the refined buckets, one slot per bucket.
        slot_of: Bucket → its slot in ``refined``.

    Returns:
        The fraction of genuine pairs scored strictly above the threshold, or None when the FAR is below one
        impostor.
    """
    if plan is None:
        return None
    if plan == "all":
        return hist.n_gen / hist.n_gen
    b, r = plan
    li, lg = refined[slot_of[b], 0], refined[slot_of[b], 1]
    low = int(np.flatnonzero(np.cumsum(li[::-1])[::-1] >= r)[-1])  # second-level part of the threshold key
    accepted = int(hist.n_gen - hist.gen_le[b]) + int(lg[low + 1 :].sum())  # genuine strictly above it
    return accepted / hist.n_gen


def eer(hist: Histograms, ref: np.ndarray, bucket: int, prev: int | None) -> float:
    """Compute the EER from the thresholds around the FAR - FRR sign change.

    The thresholds, ascending, are the top of the bucket before (``prev``; None: -inf) and every key in
    ``bucket``; the float operations are those of :mod:`distill.evaluation.metrics`.
    """
    imp_above, gen_at_or_below = refined_counts(ref, bucket, hist)
    head_imp, head_gen = (hist.n_imp, 0) if prev is None else (hist.imp_gt[prev], hist.gen_le[prev])
    far = np.concatenate(([head_imp], imp_above)) / hist.n_imp
    frr = np.concatenate(([head_gen], gen_at_or_below)) / hist.n_gen
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2)


def refined_counts(ref: np.ndarray, b: int, hist: Histograms) -> tuple[np.ndarray, np.ndarray]:
    """(#impostor > t, #genuine <= t) at each distinct key t inside refined bucket ``b``, ascending."""
    li, lg = ref[0], ref[1]
    lows = np.flatnonzero(li + lg)
    imp_above = hist.imp_gt[b] + (np.cumsum(li[::-1])[::-1] - li)[lows]
    gen_at_or_below = hist.gen_le[b] - hist.hg[b] + np.cumsum(lg)[lows]
    return imp_above.astype(np.int64), gen_at_or_below.astype(np.int64)


def roc(refine: list[int], refined: np.ndarray, hist: Histograms, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Compute exact ROC points at every bucket's top threshold and every key of the refined buckets.

    They are down-sampled to ``max_points`` as :func:`distill.evaluation.metrics.roc_curve` does (both ends and
    the FAR = 0 point of highest TAR kept).

    Returns:
        (FAR, TAR) float64 arrays, by descending threshold.
    """
    lo, ne = hist.lo, hist.nonempty
    order_keys = [(ne.astype(np.int64) << lo) | ((1 << lo) - 1)]
    imp_above = [hist.imp_gt[ne]]
    gen_below = [hist.gen_le[ne]]
    for s, b in enumerate(refine):
        ia, gb = refined_counts(refined[s], b, hist)
        order_keys.append((np.int64(b) << lo) | np.flatnonzero(refined[s, 0] + refined[s, 1]))
        imp_above.append(ia)
        gen_below.append(gb)
    order = np.argsort(-np.concatenate(order_keys), kind="stable")  # descending threshold: up and right
    ia = np.concatenate((np.concatenate(imp_above)[order], [hist.n_imp]))  # t = -inf last
    gb = np.concatenate((np.concatenate(gen_below)[order], [0]))
    far = ia / hist.n_imp
    tar = 1.0 - gb / hist.n_gen
    distinct = np.ones(far.size, dtype=bool)
    distinct[1:] = (far[1:] != far[:-1]) | (tar[1:] != tar[:-1])
    far, tar = far[distinct], tar[distinct]
    if far.size > max_points:
        zero_far_top = int(np.searchsorted(far, 0.0, side="right")) - 1
        idx = np.unique(np.round(np.linspace(0, far.size - 1, max_points - 1)).astype(np.int64))
        idx = np.union1d(idx, [zero_far_top])
        far, tar = far[idx], tar[idx]
    return far.astype(np.float64), tar.astype(np.float64)


def refine_plan(
    hist: Histograms, n_gen: int, n_imp: int, checked: list
) -> tuple[dict[str, Any], list[int], int, int | None]:
    """Which first-level buckets a pass strategy must resolve to full keys, and why.

    Args:
        hist: the first-level histograms of all pairs.
        n_gen: genuine pairs.
        n_imp: impostor pairs.
        checked: the FARs asked for (validated).

    Returns:
        (each FAR's threshold plan, the buckets to refine — each FAR's threshold, the EER crossing and the
        highest impostor bucket (the ROC's edge), sorted —, the EER bucket, the non-empty bucket below it or None).
    """
    plans = tar_plan(hist, checked)
    d = hist.imp_gt[hist.nonempty] / n_imp - hist.gen_le[hist.nonempty] / n_gen  # FAR - FRR at bucket tops
    first = int(np.flatnonzero(d <= 0)[0])  # exists: at the top bucket FAR = 0 and FRR = 1
    eer_bucket = int(hist.nonempty[first])
    eer_prev = int(hist.nonempty[first - 1]) if first > 0 else None
    top_imp_bucket = int(np.flatnonzero(hist.hi)[-1])
    refine = sorted({eer_bucket, top_imp_bucket} | {p[0] for p in plans.values() if isinstance(p, tuple)})
    return plans, refine, eer_bucket, eer_prev


def exact_report(
    hist: Histograms,
    n_gen: int,
    n_imp: int,
    plans: dict[str, Any],
    refine: list[int],
    refined: np.ndarray,
    within: int,
    eer_bucket: int,
    eer_prev: int | None,
    roc_points: int,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The verification report and ROC from the counts every pass strategy ends with.

    Args:
        hist: the first-level histograms of all pairs.
        n_gen: genuine pairs.
        n_imp: impostor pairs.
        plans: each FAR's threshold plan (:func:`tar_plan`).
        refine: the first-level buckets resolved at full resolution, in the order of ``refined``.
        refined: the full-resolution counts of those buckets.
        within: the AUC's tie-corrected count of genuine–impostor pairs that share a first-level bucket.
        eer_bucket: the bucket holding the EER crossing; ``eer_prev`` the non-empty bucket below it.
        eer_prev: see ``eer_bucket``.
        roc_points: the most points the ROC keeps.

    Returns:
        (report with ``num_genuine``, ``num_impostor``, ``tar_at_far``, ``roc_auc``, ``eer``; (fpr, tpr)).
    """
    slot_of = {b: s for s, b in enumerate(refine)}
    imp_lt = n_imp - hist.imp_ge
    cross = sum(int(hist.hg[b]) * int(imp_lt[b]) for b in np.flatnonzero(hist.hg))
    report = {
        "num_genuine": n_gen,
        "num_impostor": n_imp,
        "tar_at_far": {key: tar(hist, plan, refined, slot_of) for key, plan in plans.items()},
        "roc_auc": (2 * cross + within) / (2 * n_gen * n_imp),  # exact integers, one rounding: as metrics
        "eer": eer(hist, refined[slot_of[eer_bucket]], eer_bucket, eer_prev),
    }
    return report, roc(refine, refined, hist, roc_points)
