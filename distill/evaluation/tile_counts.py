"""Everything one pass keeps from the score tiles: one fused touch per score after the GEMM.

One responsibility: fold a tile of float32 scores into :class:`TileCounts` — the first-level histogram of the
order-preserving keys (:func:`distill.evaluation.pair_tiles.float32_keys`) of *all* pairs, the keys of the
genuine (same-label) pairs, full-resolution counts of the keys in a few chosen first-level buckets (the
*windows*) and the exact keys at or above a cut (the *tail*). Impostor counts are all-pair counts minus
genuine ones, so no tile is ever masked.

Three implementations of the same fold, chosen by the scoring backend:

* a compiled kernel (numba, ``nogil``) that reads each score once: key, histogram, label test, window or
  tail, all in one loop over the tile;
* the same steps as numpy array operations, when numba is not installed (several passes over the tile);
* the same steps as torch operations, for tiles that live on a torch device (CUDA).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.evaluation.score_keys import keys_inplace

__all__ = ["NO_TAIL", "TileCounts", "finish_torch", "fold_numpy", "fold_torch", "have_numba"]

_SIGN = 0x80000000
_ALL = 0xFFFFFFFF


NO_TAIL = _ALL
"""A cut no finite score's key reaches (with an empty tail buffer): nothing goes to the tail."""


@dataclass
class TileCounts:
    """Counts of one or more passes over the score tiles.

    ``slot[b]`` is the window of first-level bucket ``b`` (-1: none); a key goes to its window if it has one,
    else to the tail if it is ``>= cut``. With ``count_all`` off only windows and tail are fed (a refinement
    pass: histogram and genuine keys are already known).

    Attributes:
        lo: Bits of a key below its first-level bucket (32 - log2 bins).
        hist4: Four copies of the first-level histogram (summed by :attr:`hist`).
        gen: The buffer of genuine keys.
        slot: Bucket → its window (-1: none).
        windows: Full-resolution counts of the windowed buckets.
        tail: The buffer of keys ``>= cut`` outside the windows.
        cut: The smallest key the tail keeps (:data:`NO_TAIL`: none).
        count_all: Whether the histogram and the genuine keys are fed too.
        gen_filled: Genuine keys seen (may exceed the buffer: an overflow).
        tail_filled: Tail keys stored.
        tail_seen: Tail keys seen (may exceed the buffer: an overflow).
        window_lock: Set when threads share ``windows`` (:meth:`sharing_windows`): counts into them take it.
        scratch: Device-side state of the torch fold until :func:`finish_torch`.
    """

    lo: int
    hist4: np.ndarray
    gen: np.ndarray
    slot: np.ndarray
    windows: np.ndarray
    tail: np.ndarray
    cut: int
    count_all: bool = True
    gen_filled: int = 0
    tail_filled: int = 0
    tail_seen: int = 0
    window_lock: Any = None
    scratch: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(
        cls,
        bins: int,
        gen_cap: int,
        slots: np.ndarray,
        sub_dtype: Any,
        tail_cap: int,
        cut: int,
        count_all: bool = True,
    ) -> TileCounts:
        """Zeroed counts for ``bins`` first-level buckets, with the given windows, buffers and tail cut."""
        lo = 32 - (bins.bit_length() - 1)
        n_windows = int(slots.max()) + 1 if slots.size and slots.max() >= 0 else 0
        return cls(
            lo=lo,
            hist4=np.zeros((4, bins) if count_all else (4, 0), dtype=np.int64),
            gen=np.empty(gen_cap if count_all else 0, dtype=np.uint32),
            slot=np.ascontiguousarray(slots, dtype=np.int32),
            windows=np.zeros((n_windows, 1 << lo), dtype=sub_dtype),
            tail=np.empty(tail_cap if cut != NO_TAIL else 0, dtype=np.uint32),
            cut=cut,
            count_all=count_all,
        )

    @classmethod
    def sharing_windows(cls, parts: list[TileCounts]) -> list[TileCounts]:
        """``parts`` (one per thread) made to count into the first part's windows, under one lock.

        Each thread keeps its own histogram, genuine keys and tail; the windows — the largest part of the
        counts, at most the window budget — exist once however many threads fold.
        """
        if len(parts) > 1:
            lock = threading.Lock()
            for part in parts:
                part.windows, part.window_lock = parts[0].windows, lock
        return parts

    @classmethod
    def merged(cls, parts: list[TileCounts]) -> TileCounts:
        """One set of counts holding everything ``parts`` (same buckets, windows and cut) were fed.

        Keys are concatenated in part order (their consumers sort them); a part's overflow stays visible.
        Windows that the parts share are counted once.
        """
        first = parts[0]
        if len(parts) == 1:
            return first
        windows = first.windows
        if any(part.windows is not first.windows for part in parts[1:]):
            windows = first.windows.copy()
            for part in parts[1:]:
                windows += part.windows
        gen = np.concatenate([p.genuine_keys() for p in parts])
        tail = np.concatenate([p.tail_keys() for p in parts])
        gen_overflow = sum(max(0, p.gen_filled - p.gen.size) for p in parts)
        return cls(
            lo=first.lo,
            hist4=np.sum([p.hist4 for p in parts], axis=0),
            gen=gen,
            slot=first.slot,
            windows=windows,
            tail=tail,
            cut=first.cut,
            count_all=first.count_all,
            gen_filled=gen.size + gen_overflow,
            tail_filled=tail.size,
            tail_seen=sum(p.tail_seen for p in parts),
        )

    @property
    def hist(self) -> np.ndarray:
        """First-level histogram of every key fed."""
        return self.hist4.sum(axis=0)

    @property
    def window_range(self) -> tuple[int, int]:
        """(lowest bucket with a window, highest - lowest) as uint32, for the kernel's one unsigned test.

        Without windows it is a lowest bucket that no bucket reaches (2^32 - 1, span 0), so the test
        ``top - lowest <= span`` fails.
        """
        has = np.flatnonzero(self.slot >= 0)
        if not has.size:
            return np.uint32(_ALL), np.uint32(0)
        return np.uint32(has[0]), np.uint32(has[-1] - has[0])

    @property
    def tail_overflowed(self) -> bool:
        """Whether more tail keys were seen than the tail buffer holds."""
        return self.tail_seen > self.tail_filled

    def genuine_keys(self) -> np.ndarray:
        """The genuine keys stored (all of them unless the buffer overflowed)."""
        return self.gen[: min(self.gen_filled, self.gen.size)]

    def tail_keys(self) -> np.ndarray:
        """The tail keys stored."""
        return self.tail[: self.tail_filled]


def have_numba() -> bool:
    """Whether the compiled fold is available (numba installed)."""
    return _kernel() is not None


_KERNEL: list[Any] = []


def _kernel() -> Any:
    """The compiled ``(off-diagonal fold, diagonal fold, pending count)``, built on first use (None without numba)."""
    if not _KERNEL:
        try:
            import numba
        except ImportError:
            _KERNEL.append(None)
        else:
            jit = numba.njit(nogil=True, cache=True)
            _KERNEL.append((jit(_make_fold_loop(False)), jit(_make_fold_loop(True)), jit(_count_pending)))
    return _KERNEL[0]


def _make_fold_loop(diagonal: bool) -> Any:
    """Build the per-tile loop for diagonal tiles (pairs b > a only) or off-diagonal ones (every pair).

    ``diagonal`` is a compile-time constant of each copy, so the off-diagonal loops start at 0 and vectorise.
    """

    def _fold_loop(
        bits, yi, yj, lo, count_all, hist4, gen, slot, wmin, wspan, windows, cut, tail, state, keys, where, pending
    ):
        """Fold one tile, row by row: keys, histogram, genuine keys, then window / tail.

        The keys are one vectorisable loop (-0.0 gets +0.0's key); the histogram has four copies, so that runs
        of equal buckets do not serialise on one counter. Windowed keys are counted in ``windows``, or, when
        ``pending`` has room for a whole tile, kept there for the caller to count (windows shared between
        threads). ``state`` = [genuine filled, tail filled, tail seen, pending filled]. Compiled by numba; also
        runs as plain Python.
        """
        low_mask = (1 << lo) - 1
        gn, tn, ts, pn = state[0], state[1], state[2], state[3]
        gcap, tcap, defer = gen.shape[0], tail.shape[0], pending.shape[0] > 0
        rows, cols = bits.shape
        for a in range(rows):
            start = a + 1 if diagonal else 0
            for b in range(start, cols):
                v = bits[a, b]
                k = np.uint32(v ^ ((v >> 31) | np.int32(-2147483648)))
                keys[b] = k + np.uint32(k == np.uint32(0x7FFFFFFF))
            if count_all:
                h = hist4[a & 3]  # four copies in turn: rows that fill the same buckets do not serialise
                for b in range(start, cols):
                    h[keys[b] >> lo] += 1
                ya = yi[a]
                same = 0
                for b in range(start, cols):  # vectorised count first: most rows hold a few genuine pairs or none
                    same += yj[b] == ya
                if same:
                    for b in range(start, cols):
                        if ya == yj[b]:
                            if gn < gcap:
                                gen[gn] = keys[b]
                            gn += 1
            special = 0
            for b in range(start, cols):  # branch-free compaction of the rare keys bound for a window or the tail
                key = keys[b]
                where[special] = b
                special += (key >= cut) | (np.uint32((key >> lo) - wmin) <= wspan)
            for i in range(special):
                key = keys[where[i]]
                w = slot[key >> lo]
                if w >= 0:
                    if defer:
                        pending[pn] = key
                        pn += 1
                    else:
                        windows[w, key & low_mask] += 1
                elif key >= cut:
                    if tn < tcap:
                        tail[tn] = key
                        tn += 1
                    ts += 1
        state[0], state[1], state[2], state[3] = gn, tn, ts, pn

    return _fold_loop


def _count_pending(pending, n, slot, lo, windows):
    """Count the first ``n`` deferred keys into their windows. Compiled by numba; also runs as plain Python."""
    low_mask = (1 << lo) - 1
    for i in range(n):
        key = pending[i]
        windows[slot[key >> lo], key & low_mask] += 1


_NO_PENDING = np.empty(0, dtype=np.uint32)
"""The kernel's ``pending`` when windows are not shared: windowed keys are counted where they are found."""


def fold_numpy(counts: TileCounts, scores: np.ndarray, yi: np.ndarray, yj: np.ndarray, diag: bool) -> None:
    """Fold a float32 numpy tile ``scores[a, b]`` (pairs i0 + a, j0 + b; on a diagonal tile only b > a)."""
    if scores.size == 0:
        return
    kernel = _kernel()
    bits = np.ascontiguousarray(scores).view(np.int32)
    if kernel is None:
        _fold_arrays(counts, bits, yi, yj, diag)
        return
    if "keys" not in counts.scratch or counts.scratch["keys"].size < bits.shape[1]:
        counts.scratch["keys"] = np.empty(bits.shape[1], dtype=np.uint32)
        counts.scratch["where"] = np.empty(bits.shape[1] + 1, dtype=np.int64)
        counts.scratch["range"] = counts.window_range
    shared = counts.window_lock is not None and counts.windows.shape[0] > 0
    if not shared:
        pending = _NO_PENDING
    elif counts.scratch.get("pending", _NO_PENDING).size < bits.size:
        pending = counts.scratch["pending"] = np.empty(bits.size, dtype=np.uint32)
    else:
        pending = counts.scratch["pending"]
    wmin, wspan = counts.scratch["range"]
    state = np.array([counts.gen_filled, counts.tail_filled, counts.tail_seen, 0], dtype=np.int64)
    kernel[1 if diag else 0](
        bits,
        yi,
        yj,
        np.uint32(counts.lo),
        counts.count_all,
        counts.hist4,
        counts.gen,
        counts.slot,
        wmin,
        wspan,
        counts.windows,
        np.uint32(counts.cut),
        counts.tail,
        state,
        counts.scratch["keys"],
        counts.scratch["where"],
        pending,
    )
    counts.gen_filled, counts.tail_filled, counts.tail_seen = (int(v) for v in state[:3])
    if state[3]:
        with counts.window_lock:
            kernel[2](pending, int(state[3]), counts.slot, np.uint32(counts.lo), counts.windows)


def _fold_arrays(counts: TileCounts, bits: np.ndarray, yi: np.ndarray, yj: np.ndarray, diag: bool) -> None:
    """The fold as numpy array operations (no numba): same results, several passes over the tile."""
    keys = keys_inplace(bits.view(np.float32).copy())
    same = yi[:, None] == yj[None, :]
    if diag:
        upper = np.triu(np.ones(keys.shape, dtype=bool), 1)
        keys, same = keys[upper], same[upper]
    else:
        keys, same = keys.reshape(-1), same.reshape(-1)
    top = keys >> np.uint32(counts.lo)
    if counts.count_all:
        counts.hist4[0] += np.bincount(top, minlength=counts.hist4.shape[1])
        _append(counts, "gen", keys[same])
    _window_and_tail(counts, keys, top, np)


def _append(counts: TileCounts, which: str, keys: np.ndarray) -> None:
    """Append genuine or tail keys to their buffer.

    ``gen_filled`` and ``tail_seen`` go on counting past a full buffer, so an overflow is seen (as in the
    compiled loop).
    """
    if which == "gen":
        take = max(0, min(keys.size, counts.gen.size - counts.gen_filled))
        counts.gen[counts.gen_filled : counts.gen_filled + take] = keys[:take]
        counts.gen_filled += int(keys.size)
    else:
        take = max(0, min(keys.size, counts.tail.size - counts.tail_filled))
        counts.tail[counts.tail_filled : counts.tail_filled + take] = keys[:take]
        counts.tail_filled += take
        counts.tail_seen += int(keys.size)


def _window_and_tail(counts: TileCounts, keys: Any, top: Any, xp: Any) -> None:
    """Windowed keys into their windows' full-resolution counts, the rest at or above the cut into the tail."""
    sub = 1 << counts.lo
    if counts.windows.shape[0]:
        slot = counts.scratch["slot"] if "slot" in counts.scratch else counts.slot
        w = slot[top.astype(xp.int64) if xp is np else top]
        m = w >= 0
        if xp is np:
            idx = w[m].astype(np.int64) * sub + (keys[m] & np.uint32(sub - 1))
            with counts.window_lock or contextlib.nullcontext():
                np.add.at(counts.windows.reshape(-1), idx, 1)
        else:
            idx = w[m] * sub + (keys[m] & (sub - 1))
            counts.scratch["windows"].index_add_(0, idx, xp.ones_like(idx))
        rest = keys[~m]
    else:
        rest = keys
    if counts.cut <= _ALL:
        tail = rest[rest >= counts.cut]
        if xp is np:
            _append(counts, "tail", tail)
        else:
            _append(counts, "tail", tail.cpu().numpy().astype(np.uint32))


def fold_torch(counts: TileCounts, scores: Any, yi: Any, yj: Any, diag: bool) -> None:
    """Fold a float32 torch tile (any device): the numpy steps as torch operations.

    The histogram and the windows stay on the device (``scratch``) until :func:`finish_torch`.
    """
    import torch

    if scores.numel() == 0:
        return
    dev = scores.device
    sc = counts.scratch
    if "hist" not in sc:
        sc["hist"] = torch.zeros(counts.hist4.shape[1], dtype=torch.int64, device=dev)
        sc["slot"] = torch.from_numpy(counts.slot.astype(np.int64)).to(dev)
        sc["windows"] = torch.zeros(counts.windows.size, dtype=torch.int64, device=dev)
    bits = (scores + 0.0).view(torch.int32).to(torch.int64) & _ALL
    keys = torch.where(bits >= _SIGN, _ALL - bits, bits | _SIGN)
    same = yi[:, None] == yj[None, :]
    if diag:
        upper = torch.triu(torch.ones(keys.shape, dtype=torch.bool, device=dev), 1)
        keys, same = keys[upper], same[upper]
    else:
        keys, same = keys.reshape(-1), same.reshape(-1)
    top = keys >> counts.lo
    if counts.count_all:
        sc["hist"] += torch.bincount(top, minlength=counts.hist4.shape[1])
        _append(counts, "gen", keys[same].cpu().numpy().astype(np.uint32))
    _window_and_tail(counts, keys, top, torch)


def finish_torch(counts: TileCounts) -> None:
    """Bring the device-side histogram and windows of :func:`fold_torch` back into ``counts``."""
    sc = counts.scratch
    if "hist" in sc:
        if counts.count_all:
            counts.hist4[0] += sc["hist"].cpu().numpy()
        counts.windows += sc["windows"].cpu().numpy().reshape(counts.windows.shape).astype(counts.windows.dtype)
    sc.clear()
