"""Exact all-pairs verification in one pass over the score tiles in the usual case (all genuine keys fit).

One responsibility: the strategy of :func:`distill.evaluation.verification.streaming_verification` when the
genuine pairs fit in memory. Every score is touched once after its GEMM (:mod:`distill.evaluation.tile_counts`):

1. **Plan.** Approximate scores — a random ``m x m`` sample of pairs for the impostors, one small product per
   class for the genuine pairs — estimate where the thresholds fall: each FAR's threshold, the EER crossing,
   the highest impostor and the first-level buckets that hold both genuine and impostor pairs (the exact AUC
   needs their full keys). Estimates need not be exact: they only choose what to keep.
2. **One pass** keeps the histogram of all keys, every genuine key, full-resolution counts of the planned
   buckets (*windows*) and the exact keys at or above a *cut* (the sparse top of the distribution, where small
   FARs and the highest impostor live). Impostor counts = all minus genuine, so no tile is masked.
3. **Resolve.** From the exact histograms, the buckets that matter are known exactly. Each is resolved from a
   window or from the tail; a bucket the plan missed (a window that misses) is refined by one more pass over
   the tiles that feeds only windows — correct, only slower.

The last tile is scored again at the end and must give the same bits: a non-deterministic backend is refused
rather than trusted (the other passes, when any, are checked against the first pass's counts).
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from distill.evaluation.pair_counts import Histograms, exact_report, inconsistent, refine_plan
from distill.evaluation.score_keys import keys_inplace
from distill.evaluation.tile_counts import NO_TAIL, TileCounts, fold_numpy

__all__ = ["DEFAULT_TAIL_CAP", "DEFAULT_WINDOW_BUDGET", "one_pass_verification"]

DEFAULT_TAIL_CAP = 1 << 22
"""Exact tail keys held (16 MiB of uint32); the cut is planned for a quarter of it."""
DEFAULT_WINDOW_BUDGET = 1 << 27
"""Bytes of full-resolution window counts (128 MiB): 512 windows of 2^16 int32 counts at the default bins (one set,
which every tile thread counts into)."""
SAMPLE_SIDE = 2048
"""Rows and columns of the random sample of pairs the plan estimates impostor quantiles from."""
SIGMAS = 5.0
"""Half-width, in binomial standard deviations (plus 3 pairs), of the rank interval a window covers."""
EER_BUCKETS = 3
"""Windows on each side of the estimated EER bucket."""


def one_pass_verification(
    backend: Any,
    tiles: Callable[[int, int], Iterator[tuple[int, int, int, int]]],
    n: int,
    n_gen: int,
    n_imp: int,
    checked: list,
    block: int,
    bins: int,
    roc_points: int,
    tail_cap: int = DEFAULT_TAIL_CAP,
    window_budget: int = DEFAULT_WINDOW_BUDGET,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Compute the report and ROC points of :func:`streaming_verification` (same contract), every genuine key held.

    Args:
        backend: A scoring backend of :mod:`distill.evaluation.pair_tiles` (``scores``, ``fold_scores``,
            ``finish``, ``same``).
        tiles: The tile order (called once per pass).
        n: Samples.
        n_gen: Genuine pairs.
        n_imp: Impostor pairs.
        checked: ``[(report key, far)]``.
        block: The tile side, as for :func:`streaming_verification`.
        bins: First-level buckets, as for :func:`streaming_verification`.
        roc_points: Most ROC points returned, as for :func:`streaming_verification`.
        tail_cap: Most exact tail keys held.
        window_budget: Most bytes of window counts held at once.

    Returns:
        (the verification report, (FAR, TAR) ROC points).
    """
    lo = 32 - (bins.bit_length() - 1)
    sub_dtype = np.int32 if n * (n - 1) // 2 < (1 << 31) else np.int64
    workers = backend.workers
    max_windows = max(1, window_budget // ((1 << lo) * np.dtype(sub_dtype).itemsize))
    slots, cut = _plan(backend.x_numpy, backend.y_numpy, n_gen, n_imp, checked, bins, lo, tail_cap, max_windows)
    counts = _counted_pass(
        backend,
        lambda: TileCounts.empty(bins, n_gen, slots, sub_dtype, max(1, tail_cap // workers), cut),
        list(tiles(n, block)),
        rescore_last=True,
    )
    gen = np.sort(counts.genuine_keys())
    if counts.gen_filled != n_gen:
        raise AssertionError("the pass collected the wrong number of genuine pairs")  # a bug, not bad input
    hg = np.bincount(gen >> np.uint32(lo), minlength=bins).astype(np.int64)
    hist = Histograms(hg, counts.hist - hg, lo)
    if hist.n_imp != n_imp or np.any(hist.hi < 0):
        raise AssertionError("the pass counted the wrong number of pairs")

    plans, refine, eer_bucket, eer_prev = refine_plan(hist, n_gen, n_imp, checked)
    mixed = np.flatnonzero((hist.hg > 0) & (hist.hi > 0))
    full = _Resolver(backend, tiles, n, block, counts, gen, hist, sub_dtype, max_windows)
    full.prepare(sorted(set(refine) | set(mixed.tolist())))

    refined = np.stack([full.split(b) for b in refine])
    within = sum(_within(*full.split(int(b))) for b in mixed)
    return exact_report(hist, n_gen, n_imp, plans, refine, refined, within, eer_bucket, eer_prev, roc_points)


def _counted_pass(
    backend: Any, make: Callable[[], TileCounts], grid: list[tuple[int, int, int, int]], rescore_last: bool = False
) -> TileCounts:
    """One pass over ``grid``: counts from ``make`` per tile thread (sharing windows), folded, then merged.

    With ``rescore_last`` the last tile is scored again under the same thread setting and must give the same
    bits (a non-deterministic backend is refused).
    """
    shards = TileCounts.sharing_windows([make() for _ in range(backend.workers)])
    with backend.one_thread_each():
        kept = _fold_all(backend, shards, grid)
        if rescore_last and grid and not backend.same(backend.scores(*grid[-1]), kept):
            raise inconsistent("the last tile scored again")
    return TileCounts.merged(shards)


def _fold_all(backend: Any, shards: list[TileCounts], grid: list[tuple[int, int, int, int]]) -> Any:
    """Score and fold every tile of ``grid`` into ``shards``; returns the last tile's scores.

    With one shard the tiles are scored and folded in order on this thread. With more, as many threads each
    take the next tile, score it and fold it into a shard no other thread holds (the compiled fold releases
    the GIL), so every core runs GEMM and fold alike; one tile of scores per thread is alive at most. The
    shards' integer counts are summed afterwards, so the result does not depend on which thread took which
    tile.
    """
    if len(shards) == 1:
        last = None
        for tile in grid:
            last = backend.scores(*tile)
            backend.fold_scores(shards[0], last, *tile)
        backend.finish(shards[0])
        return last
    free: queue.SimpleQueue = queue.SimpleQueue()
    for shard in shards:
        free.put(shard)
    final = grid[-1] if grid else None
    kept: list[Any] = []

    def score_and_fold(tile: tuple[int, int, int, int]) -> None:
        scores = backend.scores(*tile)
        counts = free.get()  # never waits: a thread holds at most one shard, and there are as many
        try:
            backend.fold_scores(counts, scores, *tile)
        finally:
            free.put(counts)
        if tile == final:
            kept.append(scores)

    with ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="fsd-tile") as pool:
        for _ in pool.map(score_and_fold, grid):
            pass
    for shard in shards:
        backend.finish(shard)
    return kept[0] if kept else None


def _within(imp: np.ndarray, gen: np.ndarray) -> int:
    """Σ over the impostors i of one bucket of 2·#{genuine in the bucket, key > i} + #{genuine == i}, exactly."""
    nz = np.flatnonzero(imp)
    gen_gt = (np.cumsum(gen[::-1])[::-1] - gen)[nz]
    terms_bound = int(imp.sum()) * (2 * int(gen.sum()) + 1)
    if terms_bound < (1 << 62):  # int64 cannot overflow
        return int(np.sum(imp[nz].astype(np.int64) * (2 * gen_gt + gen[nz])))
    return sum(int(a) * (2 * int(g) + int(e)) for a, g, e in zip(imp[nz], gen_gt, gen[nz]))


class _Resolver:
    """Full-resolution (impostor, genuine) counts of any first-level bucket.

    They come from its window, from the tail, or from extra window-only passes for the buckets neither holds
    (:meth:`prepare`).
    """

    def __init__(self, backend, tiles, n, block, counts: TileCounts, gen, hist: Histograms, sub_dtype, max_windows):
        self.backend, self.tiles, self.n, self.block = backend, tiles, n, block
        self.counts, self.gen, self.hist = counts, gen, hist
        self.sub_dtype, self.max_windows = sub_dtype, max_windows
        self.sub = 1 << hist.lo
        self.extra: dict[int, np.ndarray] = {}
        self.tail: np.ndarray | None = None
        cut_bucket = counts.cut >> hist.lo if counts.cut != NO_TAIL else hist.hg.size
        self.tail_from = hist.hg.size if counts.tail_overflowed else cut_bucket

    def prepare(self, buckets: list[int]) -> None:
        lo = self.hist.lo
        in_tail = [b for b in buckets if b >= self.tail_from and self.counts.slot[b] < 0]
        if in_tail:
            table = np.zeros(self.hist.hg.size, dtype=bool)
            table[in_tail] = True
            keys = self.counts.tail_keys()
            self.tail = np.sort(keys[table[keys >> np.uint32(lo)]])
        missing = [b for b in buckets if self.counts.slot[b] < 0 and b < self.tail_from]
        for start in range(0, len(missing), self.max_windows):
            group = missing[start : start + self.max_windows]
            slots = np.full(self.hist.hg.size, -1, dtype=np.int32)
            slots[group] = np.arange(len(group), dtype=np.int32)
            extra = _counted_pass(
                self.backend,
                lambda: TileCounts.empty(self.hist.hg.size, 0, slots, self.sub_dtype, 0, NO_TAIL, count_all=False),
                list(self.tiles(self.n, self.block)),
            )
            for s, b in enumerate(group):
                self.extra[b] = extra.windows[s].astype(np.int64)

    def _all(self, b: int) -> np.ndarray:
        lo, sub = self.hist.lo, self.sub
        if self.counts.slot[b] >= 0:
            return self.counts.windows[self.counts.slot[b]].astype(np.int64)
        if b in self.extra:
            return self.extra[b]
        if self.tail is None:
            raise AssertionError(f"bucket {b} was neither windowed nor in the tail")
        i0, i1 = _bucket_slice(self.tail, b, lo)
        return np.bincount(self.tail[i0:i1] & np.uint32(sub - 1), minlength=sub).astype(np.int64)

    def split(self, b: int) -> np.ndarray:
        """``[impostor counts, genuine counts]`` by the low key bits of bucket ``b`` (shape ``(2, 2^lo)``)."""
        lo, sub = self.hist.lo, self.sub
        all_counts = self._all(b)
        g0, g1 = _bucket_slice(self.gen, b, lo)
        gen = np.bincount(self.gen[g0:g1] & np.uint32(sub - 1), minlength=sub).astype(np.int64)
        imp = all_counts - gen
        if int(all_counts.sum()) != int(self.hist.hg[b] + self.hist.hi[b]) or np.any(imp < 0):
            raise inconsistent(f"bucket {b} refined")
        return np.stack([imp, gen])


def _bucket_slice(sorted_keys: np.ndarray, b: int, lo: int) -> tuple[int, int]:
    """[start, end) of first-level bucket ``b`` in sorted uint32 keys."""
    start = int(np.searchsorted(sorted_keys, np.uint32(b << lo), side="left"))
    top = (b + 1) << lo
    end = sorted_keys.size if top > 0xFFFFFFFF else int(np.searchsorted(sorted_keys, np.uint32(top), side="left"))
    return start, end


def _plan(
    x: np.ndarray,
    y: np.ndarray,
    n_gen: int,
    n_imp: int,
    checked: list,
    bins: int,
    lo: int,
    tail_cap: int,
    max_windows: int,
) -> tuple[np.ndarray, int]:
    """(window slot of every first-level bucket, tail cut) from approximate scores (see the module docstring)."""
    imp_hist, f = _sampled_impostors(x, y, bins, lo, n_imp)
    gen_hist = _approximate_genuine(x, y, bins, lo)
    est_ge = np.cumsum((imp_hist / f + gen_hist)[::-1])[::-1]  # estimated pairs in this bucket or higher
    fits = np.flatnonzero(est_ge <= tail_cap / 4)
    cut_bucket = int(fits[0]) if fits.size else bins
    cut_bucket = max(cut_bucket, 0)
    cut = (cut_bucket << lo) if cut_bucket < bins else NO_TAIL

    imp_ge = np.cumsum(imp_hist[::-1])[::-1]  # sampled impostors in this bucket or higher
    imp_gt = imp_ge - imp_hist
    wanted: list[int] = []

    def around_rank(rank: float) -> None:
        mu = rank * f
        s_lo, s_hi = mu - SIGMAS * math.sqrt(mu) - 3, mu + SIGMAS * math.sqrt(mu) + 3
        hit = np.flatnonzero((imp_gt < s_hi) & (imp_ge >= s_lo))
        if hit.size:
            wanted.extend(range(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, bins)))

    for _, far in checked:
        k = math.floor(far * n_imp)
        if 1 <= k < n_imp:
            around_rank(k + 1)
    gen_le = np.cumsum(gen_hist)
    d = imp_gt / f / n_imp - gen_le / max(n_gen, 1)
    crossing = np.flatnonzero(d <= 0)
    if crossing.size:
        b = int(crossing[0])
        wanted.extend(range(max(b - EER_BUCKETS, 0), min(b + EER_BUCKETS + 1, bins)))
    sampled = np.flatnonzero(imp_hist)
    if sampled.size:
        around_rank(1)  # the highest impostor
        low = max(int(sampled[0]) - 2, 0)
        has_gen = np.flatnonzero(gen_hist)
        for b in has_gen[has_gen >= low]:
            wanted.extend(range(max(int(b) - 1, 0), min(int(b) + 2, bins)))
    slots = np.full(bins, -1, dtype=np.int32)
    chosen: list[int] = []
    for b in wanted:  # in priority order: FAR thresholds, EER, top impostor, mixed buckets
        if b < cut_bucket and slots[b] < 0 and len(chosen) < max_windows:
            slots[b] = len(chosen)
            chosen.append(b)
    return slots, cut


def _sampled_impostors(x: np.ndarray, y: np.ndarray, bins: int, lo: int, n_imp: int) -> tuple[np.ndarray, float]:
    """Estimate the impostor histogram from a random ``SAMPLE_SIDE``² sample of pairs.

    Returns:
        (first-level histogram of the sampled impostor pairs, the sampled fraction of all impostor pairs).
    """
    n = y.size
    rng = np.random.default_rng(0)
    m = min(n, SAMPLE_SIDE)
    rows, cols = rng.choice(n, size=m, replace=False), rng.choice(n, size=m, replace=False)
    yr, yc = np.ascontiguousarray(y[rows]), np.ascontiguousarray(y[cols])
    n_same = int(np.count_nonzero(yr[:, None] == yc[None, :]))  # a row drawn as a column too is one of them
    no_windows = np.full(bins, -1, dtype=np.int32)
    sample = TileCounts.empty(bins, n_same, no_windows, np.int32, 0, NO_TAIL)
    fold_numpy(sample, x[rows] @ x[cols].T, yr, yc, diag=False)  # the pass's own fold: all keys, same-label keys
    same = np.bincount((sample.genuine_keys() >> np.uint32(lo)).astype(np.int64), minlength=bins)
    hist = sample.hist - same
    # ordered pairs: each impostor pair can be drawn as (r, c) and as (c, r); the ratio stays unbiased
    return hist.astype(np.float64), max(m * m - n_same, 1) / n_imp


def _approximate_genuine(x: np.ndarray, y: np.ndarray, bins: int, lo: int, chunk_bytes: int = 1 << 26) -> np.ndarray:
    """Histogram every genuine pair's score at the first level, computed class by class.

    The scores are the tiles' up to the last bits; classes of equal size go through one batched product.
    """
    order = np.argsort(y, kind="stable")
    _, starts, sizes = np.unique(y[order], return_index=True, return_counts=True)
    hist = np.zeros(bins, dtype=np.float64)
    d = x.shape[1]
    for size in np.unique(sizes[sizes >= 2]):
        group = starts[sizes == size]
        upper = np.triu(np.ones((size, size), dtype=bool), 1)
        per = max(1, chunk_bytes // (4 * int(size) * max(int(size), d)))
        for c0 in range(0, group.size, per):
            idx = order[group[c0 : c0 + per, None] + np.arange(size)[None, :]]
            xs = x[idx]  # (classes, size, D)
            keys = keys_inplace(np.matmul(xs, xs.transpose(0, 2, 1)))[:, upper]
            hist += np.bincount((keys.reshape(-1) >> np.uint32(lo)).astype(np.int64), minlength=bins)
    return hist
