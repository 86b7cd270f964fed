"""Tiles of all-pairs cosine scores, on numpy (CPU) or torch (CUDA), and their order-preserving integer keys.

One responsibility: produce the scores of every pair i < j of L2-normalised rows tile by tile — ``x[i0:i1] @
x[j0:j1].T`` — with the genuine/impostor split, and turn float32 scores into uint32 keys that count exactly
(:func:`float32_keys`). :mod:`distill.evaluation.verification` counts these keys in a few passes;
:func:`tiled_pair_scores` materialises the very same scores, the reference its exactness is stated against.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from distill.evaluation.score_keys import ALL_BITS, SIGN_BIT, float32_keys, keys_inplace
from distill.evaluation.tile_counts import TileCounts, finish_torch, fold_numpy, fold_torch
from distill.evaluation.validate import normalised_known, positive_int

__all__ = [
    "NumpyBackend",
    "TorchBackend",
    "float32_keys",
    "keys_inplace",
    "make_backend",
    "tile_workers",
    "tiled_pair_scores",
    "tiles",
]


def tiles(n: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """Upper-triangular tiles (rows i0:i1, columns j0:j1, j0 >= i0) covering every pair i < j once."""
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(i0, n, block):
            yield i0, i1, j0, min(j0 + block, n)


MAX_TILE_WORKERS = 8
"""Most threads that score and fold tiles at once (each holds a tile and its own counts)."""


def _blas_threads() -> int:
    """The size of numpy's BLAS thread pool (the parallelism the caller allows), at least 1."""
    from threadpoolctl import threadpool_info

    sizes = [int(lib["num_threads"]) for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return max(1, max(sizes, default=1))


def tile_workers() -> int:
    """Threads the numpy backend scores and folds tiles on: one per BLAS thread, at most :data:`MAX_TILE_WORKERS`."""
    return min(_blas_threads(), MAX_TILE_WORKERS)


class NumpyBackend:
    """Tiles scored with numpy (BLAS) on the CPU; keys are uint32.

    ``workers`` threads each score a whole tile with one BLAS thread (:meth:`one_thread_each`) and fold it into
    a histogram, genuine keys and tail of their own (the windows they share). On a CPU this beats one multi-threaded GEMM with the fold beside it: BLAS
    threads that wait spin, so a fold thread beside them slows the GEMM by as much as the fold costs, and the
    fold itself would run on one core.
    """

    name = "numpy"

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.x_numpy, self.y_numpy = x, y
        self.workers = tile_workers()

    def one_thread_each(self) -> contextlib.AbstractContextManager:
        """A context in which BLAS runs each call on the calling thread (``workers`` threads call it at once)."""
        if self.workers == 1:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")

    def scores(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """The float32 cosine scores of the tile: ``x[i0:i1] @ x[j0:j1].T``."""
        return self.x[i0:i1] @ self.x[j0:j1].T

    def fold_scores(self, counts: TileCounts, s: np.ndarray, i0: int, i1: int, j0: int, j1: int) -> None:
        """Fold one tile's scores into ``counts`` (the compiled fold releases the GIL: see ``workers``)."""
        fold_numpy(counts, s, self.y[i0:i1], self.y[j0:j1], i0 == j0)

    def finish(self, counts: TileCounts) -> None:
        """Nothing to complete: the numpy fold counts as it goes."""
        pass

    def same(self, a: np.ndarray, b: np.ndarray | None) -> bool:
        """Bit for bit (a tile scored twice must not differ even in the sign of a zero)."""
        return b is not None and a.shape == b.shape and bool(np.array_equal(a.view(np.int32), b.view(np.int32)))

    def tile(self, i0: int, i1: int, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, same-label) of the tile's pairs i < j, flattened."""
        keys = keys_inplace(self.scores(i0, i1, j0, j1))
        same = self.y[i0:i1, None] == self.y[None, j0:j1]
        if i0 == j0:  # diagonal tile: only j > i
            upper = np.triu(np.ones(keys.shape, dtype=bool), 1)
            return keys[upper], same[upper]
        return keys.reshape(-1), same.reshape(-1)

    def bincount(self, a: np.ndarray, length: int) -> np.ndarray:
        """Counts of each value of ``a`` below ``length``, as int64 numpy."""
        return np.bincount(a, minlength=length).astype(np.int64, copy=False)

    def table(self, a: np.ndarray) -> np.ndarray:
        """A lookup table (bool or int64) where the backend indexes."""
        return a

    def keys_table(self, keys: np.ndarray) -> np.ndarray:
        """Sorted keys where the backend searches them."""
        return keys

    def searchsorted(self, seq: np.ndarray, v: np.ndarray, side: str) -> np.ndarray:
        """``numpy.searchsorted`` on the backend's arrays."""
        return np.searchsorted(seq, v, side=side)

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        """Concatenate the backend's arrays."""
        return np.concatenate(parts)

    def to_keys(self, a: np.ndarray) -> np.ndarray:
        """The keys of ``a`` as uint32 numpy."""
        return np.asarray(a, dtype=np.uint32)

    def size(self, a: np.ndarray) -> int:
        """The length of a one-dimensional array."""
        return int(a.shape[0])

    def total(self, a: np.ndarray) -> int:
        """The sum of ``a`` as a Python int."""
        return int(a.sum())

    def close(self) -> None:
        """Nothing to release: numpy changes no global setting."""
        pass


class TorchBackend:
    """Tiles scored with torch (CUDA for speed; any device works); keys are int64 holding the uint32 value."""

    workers = 1  # one thread drives the device: its kernels are asynchronous already

    def __init__(self, x: np.ndarray, y: np.ndarray, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        self._tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round the scores to 10-bit mantissas
        self.x = torch.from_numpy(x).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)
        self.x_numpy, self.y_numpy = x, y

    def one_thread_each(self) -> contextlib.AbstractContextManager:
        """Nothing to change: the device's own scheduling is left alone."""
        return contextlib.nullcontext()

    def fold_scores(self, counts: TileCounts, s: Any, i0: int, i1: int, j0: int, j1: int) -> None:
        """Fold one tile's scores into ``counts`` on the device."""
        fold_torch(counts, s, self.y[i0:i1], self.y[j0:j1], i0 == j0)

    def finish(self, counts: TileCounts) -> None:
        """Complete the counts folded on the device."""
        finish_torch(counts)

    def same(self, a: Any, b: Any) -> bool:
        """Bit for bit."""
        torch = self.torch
        return b is not None and a.shape == b.shape and bool(torch.equal(a.view(torch.int32), b.view(torch.int32)))

    def close(self) -> None:
        """Restore what the backend changed (torch: the TF32 setting)."""
        self.torch.backends.cuda.matmul.allow_tf32 = self._tf32

    def scores(self, i0: int, i1: int, j0: int, j1: int) -> Any:
        """The float32 cosine scores of the tile: ``x[i0:i1] @ x[j0:j1].T``."""
        return self.x[i0:i1] @ self.x[j0:j1].T

    def tile(self, i0: int, i1: int, j0: int, j1: int) -> tuple[Any, Any]:
        """(keys, same-label) of the tile's pairs i < j, flattened."""
        torch = self.torch
        bits = (self.scores(i0, i1, j0, j1) + 0.0).view(torch.int32).to(torch.int64) & ALL_BITS
        keys = torch.where(bits >= SIGN_BIT, ALL_BITS - bits, bits | SIGN_BIT)
        same = self.y[i0:i1, None] == self.y[None, j0:j1]
        if i0 == j0:
            upper = torch.triu(torch.ones(keys.shape, dtype=torch.bool, device=self.device), 1)
            return keys[upper], same[upper]
        return keys.reshape(-1), same.reshape(-1)

    def bincount(self, a: Any, length: int) -> np.ndarray:
        """Counts of each value of ``a`` below ``length``, as int64 numpy."""
        return self.torch.bincount(a, minlength=length).cpu().numpy().astype(np.int64, copy=False)

    def table(self, a: np.ndarray) -> Any:
        """A lookup table (bool or int64) where the backend indexes."""
        a = np.asarray(a)
        return self.torch.from_numpy(a if a.dtype == bool else a.astype(np.int64)).to(self.device)

    def keys_table(self, keys: np.ndarray) -> Any:
        """Sorted keys where the backend searches them."""
        return self.torch.from_numpy(keys.astype(np.int64)).to(self.device)

    def searchsorted(self, seq: Any, v: Any, side: str) -> Any:
        """``numpy.searchsorted`` on the backend's arrays."""
        return self.torch.searchsorted(seq, v, right=side == "right")

    def concat(self, parts: list[Any]) -> Any:
        """Concatenate the backend's arrays."""
        return self.torch.cat(parts)

    def to_keys(self, a: Any) -> np.ndarray:
        """The keys of ``a`` as uint32 numpy."""
        return a.cpu().numpy().astype(np.uint32)

    def size(self, a: Any) -> int:
        """The length of a one-dimensional array."""
        return int(a.shape[0])

    def total(self, a: Any) -> int:
        """The sum of ``a`` as a Python int."""
        return int(a.sum().item())


def tiled_pair_scores(embeddings: Any, labels: Any, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Materialise the (genuine, impostor) float32 scores of all pairs i < j; for tests and small sets only.

    They are computed by exactly the numpy tiles that :func:`streaming_verification` uses with the same
    ``block``: the reference its exactness is stated against.

    Args:
        embeddings: (N, D) embeddings (L2-normalised here).
        labels: (N,) labels; unknown (-1) rows are left out.
        block: The tile side.

    Returns:
        (genuine scores, impostor scores), float32, in tile order.
    """
    block = positive_int(block, "block")
    x, y = normalised_known(embeddings, labels)
    backend = NumpyBackend(x, y)
    gen, imp = [], []
    for i0, i1, j0, j1 in tiles(y.size, block):
        s = backend.scores(i0, i1, j0, j1)
        same = y[i0:i1, None] == y[None, j0:j1]
        valid = np.triu(np.ones(s.shape, dtype=bool), 1) if i0 == j0 else np.ones(s.shape, dtype=bool)
        gen.append(s[valid & same])
        imp.append(s[valid & ~same])
    empty = np.empty(0, dtype=np.float32)
    return (np.concatenate(gen) if gen else empty).astype(np.float32), (np.concatenate(imp) if imp else empty).astype(
        np.float32
    )


def make_backend(x: np.ndarray, y: np.ndarray, use_gpu: bool | None, torch_device: str | None) -> Any:
    """Pick the scoring backend: torch on ``torch_device`` if given, else CUDA when present, else numpy.

    ``use_gpu=False`` always gives numpy; ``use_gpu=True`` without CUDA warns and scores on the CPU.
    """
    if torch_device is not None:  # testing hook: the torch code path on any device (e.g. "cpu")
        return TorchBackend(x, y, torch_device)
    if use_gpu is False:
        return NumpyBackend(x, y)
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install must not break CPU evaluation
        cuda = False
    if cuda:
        return TorchBackend(x, y, "cuda")
    if use_gpu:
        warnings.warn("use_gpu=True but no CUDA device is available; scoring on the CPU", RuntimeWarning, stacklevel=3)
    return NumpyBackend(x, y)
