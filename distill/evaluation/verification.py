"""Exact all-pairs verification metrics (TAR@FAR, ROC AUC, EER, ROC curve) in bounded memory.

One responsibility: the report of :func:`distill.evaluation.metrics.verification_metrics` over every unordered pair
i < j of N embeddings, *without ever holding the N(N-1)/2 scores* (2 x 10^8 of them at N = 20,000). The
scores are recomputed tile by tile in a few passes and only counts are kept:

* **Keys.** A float32 score maps to an order-preserving uint32 key (:func:`float32_keys`: a < b iff
  key(a) < key(b), a == b iff key(a) == key(b), -0.0 and +0.0 share a key). Counting keys therefore counts
  scores *exactly*, ties included; nothing is ever rounded into a bin.
* **Pass 1** histograms the top ``log2(bins)`` bits of every key, genuine and impostor separately (a
  two-level radix: ``bins`` buckets, each split into ``2^32 / bins`` sub-buckets later).
* **Pass 2** refines the few buckets that matter (≤ one per FAR, one for the EER crossing, one for the
  highest impostor) into full 32-bit counts, which pins down exactly the (k+1)-th largest impostor score
  t of the sorted-list definition (docs/evaluation.md), #genuine > t, and FAR/FRR at every threshold near the EER.
* **ROC AUC** is the Mann-Whitney sum over impostors i of 2·#{genuine > i} + #{genuine == i}, in Python
  integers. Pairs in different buckets come from the histograms; for buckets holding both kinds, the
  genuine keys of a group of such buckets are collected (at most ``genuine_cap`` at once) and the next
  pass binary-searches every impostor of those buckets among them: 2 + (number of groups ≈ genuine pairs
  in mixed buckets / genuine_cap) passes in all.

When every genuine key fits in ``genuine_cap`` (the usual case: G ≈ N²/(2·classes)) none of these passes
run: the one-pass
strategy of :mod:`distill.evaluation.one_pass` touches each score once after its GEMM (planned windows, an
exact tail, a window-only pass only where the plan missed) and feeds the same count-to-metric steps
(:mod:`distill.evaluation.pair_counts`). The passes below are the strategy for more genuine pairs than that.

So TAR@FAR, ROC AUC and EER are **bit-identical** to ``verification_metrics(genuine, impostor)`` on the
same scores (same int/float operations on the same counts), not approximations. The EER argument relies
on FAR - FRR being strictly decreasing over thresholds in float64, true whenever the number of pairs is
below ~10^14. The ROC curve is a down-sampled subset of the exact curve's points (bucket tops plus the
refined buckets), always with both ends and the FAR = 0 point of highest TAR.

Memory: O(N·D) for the normalised embeddings, O(block²) for one tile of scores and its keys per tile thread
(as many as BLAS has threads, at most eight), O(bins) for the histograms, O(2^32 / bins) per refined bucket,
and O(min(G, genuine_cap)) genuine keys (one buffer per tile thread in the one-pass strategy).

Scores: a tile is ``x[i0:i1] @ x[j0:j1].T`` of L2-normalised float32 rows (:func:`distill.evaluation.search.l2_normalize`),
with numpy on the CPU or torch on CUDA (TF32 off). Float32 dot products can differ in the last bit
between BLAS kernels, tile shapes and devices, so "exact" means exact for the scores these tiles produce:
:func:`tiled_pair_scores` materialises precisely those scores (same tiles, same function) for tests and
for small sets. Each pass recomputes the same tiles; pass-to-pass consistency is checked against the pass-1
counts and a mismatch (a non-deterministic backend) raises ``RuntimeError`` rather than returning a wrong
number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.evaluation.metrics import FARS, far_key
from distill.evaluation.one_pass import DEFAULT_TAIL_CAP, DEFAULT_WINDOW_BUDGET, one_pass_verification
from distill.evaluation.pair_counts import Histograms, exact_report, inconsistent, refine_plan
from distill.evaluation.pair_tiles import float32_keys, make_backend, tiled_pair_scores, tiles
from distill.evaluation.validate import check_far, normalised_known, positive_int
from featstore.errors import InvalidInput

__all__ = ["float32_keys", "streaming_verification", "tiled_pair_scores"]

_ALL = 0xFFFFFFFF
DEFAULT_GENUINE_CAP = 1 << 24
"""Genuine keys held at once for the exact AUC (64 MiB of uint32)."""


class _Counts:
    """Counts of indices in [0, length), fed in pieces.

    Pieces are buffered up to ``flush_at`` elements and counted together, so a large ``length`` costs one
    allocation per flush rather than one per tile.
    """

    def __init__(self, backend: Any, length: int, flush_at: int = 1 << 20) -> None:
        self.backend, self.length, self.flush_at = backend, length, flush_at
        self.counts = np.zeros(length, dtype=np.int64)
        self.parts: list[Any] = []
        self.buffered = 0

    def add(self, idx: Any) -> None:
        m = self.backend.size(idx)
        if m:
            self.parts.append(idx)
            self.buffered += m
            if self.buffered >= self.flush_at:
                self.flush()

    def flush(self) -> np.ndarray:
        if self.parts:
            self.counts += self.backend.bincount(self.backend.concat(self.parts), self.length)
            self.parts, self.buffered = [], 0
        return self.counts


def _empty_report(n_gen: int, n_imp: int, keys: list[str]) -> dict[str, Any]:
    return {
        "num_genuine": n_gen,
        "num_impostor": n_imp,
        "tar_at_far": {k: None for k in keys},
        "roc_auc": None,
        "eer": None,
    }


def streaming_verification(
    embeddings: Any,
    labels: Any,
    fars: Sequence[float] = FARS,
    *,
    block: int = 2048,
    bins: int = 65536,
    use_gpu: bool | None = None,
    roc_points: int = 1000,
    genuine_cap: int = DEFAULT_GENUINE_CAP,
    _torch_device: str | None = None,
    _tail_cap: int = DEFAULT_TAIL_CAP,
    _window_budget: int = DEFAULT_WINDOW_BUDGET,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Verification over all unordered pairs i < j, exactly, in bounded memory (see the module docstring).

    Args:
        embeddings: ``(N, D)`` embeddings (L2-normalised here, as float32).
        labels: ``(N,)`` integer labels; genuine = same label; samples labelled -1 (unknown) are dropped.
        fars: target false-accept rates (report keys from :func:`distill.evaluation.metrics.far_key`).
        block: tile side: a tile holds ``block²`` scores and their keys at once.
        bins: first-level radix buckets, a power of two from 2^12 to 2^20 (the second level has
            2^32 / bins sub-buckets per refined bucket).
        use_gpu: ``None`` = torch on CUDA when available, else numpy; ``False`` = numpy; ``True`` without
            CUDA warns and uses numpy.
        roc_points: at most this many ROC points (>= 3).
        genuine_cap: most genuine keys held at once for the exact AUC (more passes when exceeded).

    Returns:
        ``(report, (far, tar))``: the report equals ``verification_metrics(*tiled_pair_scores(embeddings,
        labels, block), fars)`` key for key and bit for bit (``None`` where undefined: TAR where
        far · N_imp < 1, everything when there are no genuine or no impostor pairs); the ROC points are
        float64 arrays on the exact curve (empty when undefined).
    """
    block = positive_int(block, "block")
    genuine_cap = positive_int(genuine_cap, "genuine_cap")
    if isinstance(roc_points, bool) or not isinstance(roc_points, (int, np.integer)) or roc_points < 3:
        raise InvalidInput(f"roc_points must be an integer >= 3, got {roc_points!r}")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins not in {1 << b for b in range(12, 21)}:
        raise InvalidInput(f"bins must be a power of two from 4096 to 1048576, got {bins!r}")
    checked = [(far_key(f), check_far(f)) for f in fars]
    keys = [k for k, _ in checked]
    if len(set(keys)) != len(keys):
        raise InvalidInput(f"FARs {list(fars)!r} give duplicate report keys {keys!r}")

    x, y = normalised_known(embeddings, labels)
    n = int(y.size)
    _, class_sizes = np.unique(y, return_counts=True)
    n_gen = int(np.sum(class_sizes * (class_sizes - 1) // 2))
    n_imp = n * (n - 1) // 2 - n_gen
    empty_curve = (np.empty(0), np.empty(0))
    if n_gen == 0 or n_imp == 0:
        return _empty_report(n_gen, n_imp, keys), empty_curve

    backend = make_backend(x, y, use_gpu, _torch_device)
    try:
        if n_gen <= genuine_cap:
            return one_pass_verification(
                backend,
                lambda *a: tiles(*a),  # looked up at each pass, so that a test or benchmark can count passes
                n,
                n_gen,
                n_imp,
                checked,
                block,
                int(bins),
                roc_points,
                tail_cap=_tail_cap,
                window_budget=_window_budget,
            )
        return _run(backend, n, n_gen, n_imp, checked, block, int(bins), roc_points, genuine_cap)
    finally:
        backend.close()


def _run(
    backend: Any,
    n: int,
    n_gen: int,
    n_imp: int,
    checked: list,
    block: int,
    bins: int,
    roc_points: int,
    genuine_cap: int,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    lo = 32 - (bins.bit_length() - 1)  # bits of the second level
    hist, gen_keys = _first_pass(backend, n, block, bins, lo, n_gen if n_gen <= genuine_cap else None)
    if hist.n_gen != n_gen or hist.n_imp != n_imp:
        raise AssertionError("pass 1 counted the wrong number of pairs")  # a bug, not bad input

    plans, refine, eer_bucket, eer_prev = refine_plan(hist, n_gen, n_imp, checked)

    groups = _auc_groups(hist, genuine_cap, collected=gen_keys is not None)
    refined, within = _later_passes(backend, n, block, hist, refine, groups, gen_keys)
    return exact_report(hist, n_gen, n_imp, plans, refine, refined, within, eer_bucket, eer_prev, roc_points)


def _first_pass(
    backend: Any, n: int, block: int, bins: int, lo: int, collect: int | None
) -> tuple[Histograms, np.ndarray | None]:
    """First-level histograms; with ``collect`` = the number of genuine pairs, also every genuine key."""
    all_hist = np.zeros(bins, dtype=np.int64)
    hg = np.zeros(bins, dtype=np.int64)
    gen_keys = np.empty(collect, dtype=np.uint32) if collect is not None else None
    filled = 0
    for tile in tiles(n, block):
        k, same = backend.tile(*tile)
        if backend.size(k) == 0:
            continue
        all_hist += backend.bincount(k >> lo, bins)
        gk = k[same]
        m = backend.size(gk)
        if m:
            hg += backend.bincount(gk >> lo, bins)
            if gen_keys is not None:
                gen_keys[filled : filled + m] = backend.to_keys(gk)
                filled += m
    return Histograms(hg, all_hist - hg, lo), gen_keys


def _auc_groups(hist: Histograms, genuine_cap: int, collected: bool) -> list[np.ndarray]:
    """Group the buckets holding both genuine and impostor pairs, at most ``genuine_cap`` genuine pairs a group.

    There is one group when pass 1 already collected every genuine key; a bucket is never split.
    """
    mixed = np.flatnonzero((hist.hg > 0) & (hist.hi > 0))
    if not mixed.size:
        return []
    if collected:
        return [mixed]
    groups, start, acc = [], 0, 0
    for pos, b in enumerate(mixed):
        if acc and acc + hist.hg[b] > genuine_cap:
            groups.append(mixed[start:pos])
            start, acc = pos, 0
        acc += int(hist.hg[b])
    groups.append(mixed[start:])
    return groups


def _later_passes(
    backend: Any,
    n: int,
    block: int,
    hist: Histograms,
    refine: list[int],
    groups: list[np.ndarray],
    gen_keys: np.ndarray | None,
) -> tuple[np.ndarray, int]:
    """Run the passes after the first: refine buckets and count each AUC group's impostors.

    Pass 2 refines ``refine`` into full-key counts; every pass counts the impostors of one group against that
    group's sorted genuine keys and collects the next group's genuine keys.

    Returns:
        (the refined counts ``[slot, is_genuine, low bits]``, the exact within-bucket part of the AUC sum).
    """
    lo, bins = hist.lo, hist.hg.size
    sub = 1 << lo
    slot_table = np.full(bins, -1, dtype=np.int64)
    slot_table[refine] = np.arange(len(refine))

    def bool_table(buckets: np.ndarray) -> Any:
        t = np.zeros(bins, dtype=bool)
        t[buckets] = True
        return backend.table(t)

    # (group, its sorted genuine keys) ready to count in the next pass
    pending = (groups[0], np.sort(gen_keys)) if gen_keys is not None and groups else None
    to_collect = [] if gen_keys is not None else list(groups)
    refined = np.zeros((len(refine), 2, sub), dtype=np.int64)
    within = 0
    first = True
    while first or pending is not None:
        ref_counts = _Counts(backend, refined.size) if first else None
        slot_dev = backend.table(slot_table) if first else None
        count = None
        if pending is not None:
            group, sorted_keys = pending
            uniq, mult = np.unique(sorted_keys, return_counts=True)
            # a sentinel past the end: no impostor key equals 0xFFFFFFFF (that would be a NaN score)
            count = (
                bool_table(group),
                backend.keys_table(np.append(uniq, np.uint32(_ALL))),
                _Counts(backend, 2 * (uniq.size + 1)),
            )
        collect = to_collect.pop(0) if to_collect else None
        collect_dev = bool_table(collect) if collect is not None else None
        parts: list[np.ndarray] = []
        for tile in tiles(n, block):
            k, same = backend.tile(*tile)
            if backend.size(k) == 0:
                continue
            top = k >> lo
            if ref_counts is not None:
                slot = slot_dev[top]
                m = slot >= 0
                ref_counts.add((slot[m] * 2 + same[m]) * sub + (k[m] & (sub - 1)))
            if count is not None:
                tab, uniq_dev, slots = count
                ik = k[tab[top] & ~same]
                if backend.size(ik):
                    pos = backend.searchsorted(uniq_dev, ik, "left")
                    slots.add(2 * pos + (uniq_dev[pos] == ik))
            if collect_dev is not None:
                gk = k[same]
                gk = gk[collect_dev[gk >> lo]]
                if backend.size(gk):
                    parts.append(backend.to_keys(gk))
        if ref_counts is not None:
            refined = ref_counts.flush().reshape(refined.shape)
            for s, b in enumerate(refine):
                if int(refined[s, 0].sum()) != hist.hi[b] or int(refined[s, 1].sum()) != hist.hg[b]:
                    raise inconsistent(f"bucket {b} refined")
        if count is not None:
            within += _within_bucket(count[2].flush(), uniq, mult, sorted_keys, group, hist.hi, lo)
        pending = None
        if collect is not None:
            collected = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint32)
            if collected.size != int(hist.hg[collect].sum()):
                raise inconsistent("genuine pairs in mixed buckets")
            pending = (collect, collected)
        first = False
    return refined, within


def _within_bucket(
    slot_counts: np.ndarray,
    uniq: np.ndarray,
    mult: np.ndarray,
    sorted_keys: np.ndarray,
    group: np.ndarray,
    hi: np.ndarray,
    lo: int,
) -> int:
    """Sum over the impostors i of ``group``'s buckets of 2·#{genuine in i's bucket, key > i} + #{genuine == i}.

    Per impostor in bucket b that is 2·end(b) - 2·less(i) - equal(i), with end(b) = #genuine keys below the
    next bucket, less(i) = #genuine keys < i, equal(i) = #genuine keys == i. ``slot_counts[2p + e]`` counts
    the impostors whose key sorts at position p among the distinct genuine keys ``uniq`` (e = 1: equal to
    ``uniq[p]``), so the sum needs no per-impostor state. Python integers: no overflow however many pairs.
    """
    cnt = slot_counts.reshape(-1, 2)
    if int(cnt.sum()) != int(hi[group].sum()):
        raise inconsistent("impostors in mixed buckets")
    less = np.concatenate(([0], np.cumsum(mult)))  # genuine keys below uniq[p]; p = uniq.size: all of them
    eq = np.append(mult, 0)
    end = np.searchsorted(sorted_keys, (group.astype(np.uint64) + 1) << np.uint64(lo))
    total = 2 * sum(int(e) * int(h) for e, h in zip(end, hi[group]))
    nz = np.flatnonzero(cnt[:, 0] | cnt[:, 1])
    c0, c1, ls, eqs = cnt[nz, 0], cnt[nz, 1], less[nz], eq[nz]
    if int(hi.sum()) * (int(less[-1]) + 1) < (1 << 61):  # int64 cannot overflow: vectorised
        total -= int(np.sum(c0 * 2 * ls + c1 * (2 * ls + eqs)))
    else:
        total -= sum(int(a) * 2 * int(lo) + int(b) * (2 * int(lo) + int(e)) for a, b, lo, e in zip(c0, c1, ls, eqs))
    return total
