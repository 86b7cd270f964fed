"""Brute-force reference implementations ("oracles") of fsd's evaluation, for tests — as ``zarr.testing``.

Each function here is deliberately naive (python loops, full float64 matrices, exhaustive threshold search) and
shares no code with the implementation it checks, so a test that compares the two can fail. Nothing in fsd's
production paths imports this module. :func:`pair_scores` materialises every pair score (the reference
``benchmarks/tar_at_far.py`` times the streaming verification against) and :func:`tiled_pair_scores`
produces exactly the scores the streaming verification counts.
"""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from distill.evaluation.metrics import far_key
from distill.evaluation.validate import normalised_known, positive_int
from distill.evaluation.verification import tiled_pair_scores

__all__ = [
    "brute_identification",
    "brute_knn",
    "brute_lfw_correct",
    "brute_eer",
    "brute_pair_scores",
    "brute_retrieval",
    "brute_roc_auc",
    "brute_tar_at_far",
    "brute_templates",
    "brute_topk",
    "brute_topk_recall",
    "pair_scores",
    "tiled_pair_scores",
]


def brute_knn(q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """float64 full similarity matrix, full argsort per row."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ gn.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def brute_topk(q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """The ids of :func:`brute_knn`."""
    return brute_knn(q, g, k, exclude_self)[1]


def brute_topk_recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Pooled recall of ``approx``'s rows against ``exact``'s non-padding ids, by counting."""
    found = total = 0
    for e_row, a_row in zip(exact.tolist(), approx.tolist()):
        for e in e_row:
            if e >= 0:
                total += 1
                found += e in a_row
    return found / total


def brute_retrieval(order_labels: list[list[int]], query_labels: list[int], rs: list[int], ks=(1, 2, 4, 8)) -> dict:
    """Per-query loops over fully ranked neighbour label lists."""
    recall = {k: [] for k in ks}
    p1, rp, ap = [], [], []
    for labs, q, r in zip(order_labels, query_labels, rs):
        if r == 0 or q == -1:
            continue
        rel = [1 if lab == q else 0 for lab in labs]
        for k in ks:
            recall[k].append(1.0 if any(rel[:k]) else 0.0)
        p1.append(float(rel[0]))
        rp.append(sum(rel[:r]) / r)
        total = 0.0
        for i in range(1, r + 1):
            if rel[i - 1]:
                total += sum(rel[:i]) / i
        ap.append(total / r)
    n = len(p1)
    return {
        "recall_at_k": {str(k): sum(v) / n for k, v in recall.items()},
        "precision_at_1": sum(p1) / n,
        "r_precision": sum(rp) / n,
        "map_at_r": sum(ap) / n,
        "num_queries": n,
    }


def brute_tar_at_far(gen: list[float], imp: list[float], far: float) -> float | None:
    """TAR at ``far`` by the sorted definition of docs/evaluation.md (None where far·N < 1)."""
    desc = sorted(imp, reverse=True)
    k = int((Decimal(repr(far)) * len(desc)).to_integral_value(rounding=ROUND_FLOOR))
    if k < 1:
        return None
    t = desc[k] if k < len(desc) else -math.inf  # s_(k+1), 1-indexed
    return sum(1 for g in gen if g > t) / len(gen)


def brute_roc_auc(gen: Any, imp: Any) -> float:
    """P(genuine > impostor) + P(tie) / 2 from the full (G, I) comparison matrix, in float64."""
    gen, imp = np.asarray(gen, dtype=np.float64), np.asarray(imp, dtype=np.float64)
    gt = (gen[:, None] > imp[None, :]).sum()
    eq = (gen[:, None] == imp[None, :]).sum()
    return (gt + 0.5 * eq) / (gen.size * imp.size)


def brute_eer(gen: list[float], imp: list[float]) -> float:
    """The EER, by trying every score as a threshold."""
    best = None
    for t in [-math.inf] + sorted(set(gen) | set(imp)):
        far = sum(1 for s in imp if s > t) / len(imp)
        frr = sum(1 for s in gen if s <= t) / len(gen)
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2)
    return best[1]


def brute_pair_scores(x: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """All pairs i < j by explicit loops over float64 cosines of the raw rows (exact data only)."""
    keep = [i for i in range(len(labels)) if labels[i] != -1]
    rows = [[float(v) for v in x[i]] for i in range(len(labels))]
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    gen, imp = [], []
    for a_pos, i in enumerate(keep):
        for j in keep[a_pos + 1 :]:
            dot = sum(a * b for a, b in zip(rows[i], rows[j]))
            s = dot / (norms[i] * norms[j]) if norms[i] and norms[j] else 0.0
            (gen if labels[i] == labels[j] else imp).append(s)
    return gen, imp


def brute_templates(x, t, m, quality=None, flip=None, normalize_faces=False) -> dict[int, np.ndarray]:
    """Loops over dicts, float64, normalised with np.linalg.norm."""
    out: dict[int, np.ndarray] = {}
    for tid in sorted(set(t.tolist())):
        media: dict[int, list[np.ndarray]] = {}
        for i in range(len(t)):
            if t[i] == tid:
                f = x[i].astype(np.float64) + (0 if flip is None else flip[i].astype(np.float64))
                if normalize_faces:
                    f = f / np.linalg.norm(f)
                if quality is not None:
                    f = f * quality[i]
                media.setdefault(int(m[i]), []).append(f)
        v = np.mean([np.mean(fs, axis=0) for fs in media.values()], axis=0)
        out[tid] = v / np.linalg.norm(v)
    return out


def brute_identification(gallery, g_subj, probes, p_subj, ranks, fpirs) -> dict:
    """float64 similarity matrix, per-probe full sort, thresholds by exhaustive search."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    sims = p.astype(np.float64) @ g.astype(np.float64).T
    g_subj, p_subj = np.asarray(g_subj), np.asarray(p_subj)
    mated = [s in set(g_subj.tolist()) for s in p_subj]
    out: dict = {}
    for r in ranks:
        hits = [p_subj[i] in g_subj[np.argsort(-sims[i])[:r]] for i in range(len(p)) if mated[i]]
        out[f"rank_{r}"] = sum(hits) / len(hits)
    top1 = sims.max(axis=1)
    correct = np.array([g_subj[np.argmax(sims[i])] == p_subj[i] for i in range(len(p))])
    nm = top1[~np.array(mated)]
    ma = np.array(mated)
    out["tpir_at_fpir"] = {}
    for f in fpirs:
        n = math.floor(f * nm.size)
        if n < 1:
            out["tpir_at_fpir"][far_key(f)] = None
            continue
        cands = np.concatenate([[-np.inf], top1])
        out["tpir_at_fpir"][far_key(f)] = max(
            np.sum(correct & ma & (top1 > t)) / ma.sum() for t in cands if np.sum(nm > t) <= n
        )
    return out


def brute_lfw_correct(scores: list[float], same: list[bool], t: float) -> int:
    """Pairs classified correctly at threshold ``t`` (same when the score is above it)."""
    return sum(1 for s, y in zip(scores, same) if (s > t) == y)


def pair_scores(embeddings: Any, labels: Any, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of all unordered pairs i < j, split into (genuine, impostor) float32 arrays.

    Genuine = same label, impostor = different labels; samples labelled -1 (unknown) are dropped first. The
    score matrix is computed ``block`` rows at a time against the rows from the block on (only the upper
    triangle is needed), so at most ``block x n`` scores exist besides the outputs, which are preallocated from
    the class sizes. Pairs come in row-major (i, j) order of the kept samples. Note that the outputs alone hold
    n(n-1)/2 floats: all-pairs verification is for evaluation sets of moderate size.
    """
    block = positive_int(block, "block")
    x, y = normalised_known(embeddings, labels)
    n = y.size

    _, class_sizes = np.unique(y, return_counts=True)
    n_gen = int(np.sum(class_sizes * (class_sizes - 1) // 2))
    n_imp = n * (n - 1) // 2 - n_gen
    genuine = np.empty(n_gen, dtype=np.float32)
    impostor = np.empty(n_imp, dtype=np.float32)
    gi = ii = 0
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = x[start:stop] @ x[start:].T  # (rows, n - start); column c is sample start + c
        upper = np.arange(n - start)[None, :] > np.arange(stop - start)[:, None]  # j > i
        same = y[start:stop, None] == y[None, start:]
        g = sims[upper & same]
        m = sims[upper & ~same]
        genuine[gi : gi + g.size] = g
        impostor[ii : ii + m.size] = m
        gi += g.size
        ii += m.size
    assert gi == n_gen and ii == n_imp
    return genuine, impostor
