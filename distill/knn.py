"""Exact cosine-similarity neighbour search and pair scoring over embeddings — the only place fsd touches FAISS.

One responsibility: from embeddings to (score, index) neighbour lists and to genuine/impostor pair scores.
Turning those into metrics is :mod:`distill.metrics`' job. Similarity is the inner product of L2-normalised
copies (= cosine similarity); the callers' arrays are never modified.

Why exact search (``IndexFlatIP``): evaluation numbers must not depend on an approximate index's recall.
Why batching: the (queries x k) result and FAISS' temporary buffers stay bounded however many queries there are.
GPU: used when ``faiss`` was built with GPU support and a GPU is visible; any failure there falls back to the
CPU with a :class:`RuntimeWarning`, because an evaluation that is slower is better than one that is lost.
"""

from __future__ import annotations

import warnings
from typing import Any

import faiss
import numpy as np

from distill.metrics import UNKNOWN_LABEL
from featstore.errors import InvalidInput

PAD_INDEX: int = -1
"""Index returned where fewer than k neighbours exist (its score is ``-inf``)."""


def _matrix(x: Any, name: str) -> np.ndarray:
    """A finite 2-D float array (any float/int dtype accepted; the caller's array is not modified)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise InvalidInput(f"{name} must be a 2-D array (n, dim), got shape {a.shape}")
    if a.shape[1] == 0:
        raise InvalidInput(f"{name} has dimension 0")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InvalidInput(f"{name} must hold real numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name} contains NaN or infinite values")
    return a


def _positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise InvalidInput(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """float32, C-contiguous copy of ``x`` (n, dim) with rows of unit L2 norm; all-zero rows stay zero.

    The norm is taken in float64 so large or tiny float32 values neither overflow nor underflow; zero rows are
    divided by 1 instead of 0, so they give score 0 against everything rather than NaN.
    """
    a = _matrix(x, "embeddings")
    norms = np.linalg.norm(a.astype(np.float64, copy=False), axis=1, keepdims=True)
    out = a / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def faiss_gpu_available() -> bool:
    """True only if this faiss build has GPU support and sees at least one GPU; never raises."""
    try:
        return bool(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    except Exception:  # a broken CUDA install must not break CPU evaluation
        return False


def _search_batched(index: Any, queries: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    nq = queries.shape[0]
    scores = np.empty((nq, k), dtype=np.float32)
    ids = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, batch):
        d, i = index.search(queries[start : start + batch], k)
        scores[start : start + batch] = d
        ids[start : start + batch] = i
    return scores, ids


def _search(
    gallery: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    if use_gpu:
        try:
            return _search_batched(faiss.index_cpu_to_all_gpus(index), queries, k, batch)
        except Exception as exc:  # old GPU k limits, out of GPU memory, a CPU-only build, ...
            warnings.warn(f"FAISS GPU search failed ({exc!r}); falling back to the CPU", RuntimeWarning, stacklevel=3)
    return _search_batched(index, queries, k, batch)


def knn_search(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    exclude_self: bool = False,
    use_gpu: bool | None = None,
    query_batch: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest gallery items of each query by cosine similarity.

    Args:
        queries: ``(nq, dim)`` embeddings (normalised here; need not be).
        gallery: ``(ng, dim)`` embeddings.
        k: neighbours per query, >= 1.
        exclude_self: queries and gallery are the same set (leave-one-out) and query i must never get item i
            back. k+1 items are searched and the entry equal to i removed; if i is not among them (possible
            with duplicated rows, which tie with the query) the last one is dropped instead, so k remain.
        use_gpu: ``None`` = GPU if :func:`faiss_gpu_available`; ``True`` without a usable GPU warns and runs on
            the CPU; ``False`` = CPU.
        query_batch: queries searched per FAISS call (bounds memory).

    Returns:
        ``(scores, indices)``: float32 and int64 arrays of shape ``(nq, k)``, sorted by descending score. Where
        fewer than k items are available (ng, or ng - 1 with ``exclude_self``) the rest is padded with index
        :data:`PAD_INDEX` (-1) and score ``-inf``. Equal scores come in FAISS' order.

    Raises :class:`InvalidInput` on non-2-D or non-finite input, mismatched dimensions, k <= 0, or
    ``exclude_self`` with a gallery that is not the query set.
    """
    k = _positive_int(k, "k")
    query_batch = _positive_int(query_batch, "query_batch")
    q = l2_normalize(_matrix(queries, "queries"))
    g = q if gallery is queries else l2_normalize(_matrix(gallery, "gallery"))
    if q.shape[1] != g.shape[1]:
        raise InvalidInput(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    if exclude_self and not (gallery is queries or np.array_equal(q, g)):
        raise InvalidInput("exclude_self=True needs the gallery to be the query set itself (same rows, same order)")

    nq, ng = q.shape[0], g.shape[0]
    available = ng - 1 if exclude_self else ng
    k_search = min(k + 1 if exclude_self else k, ng)  # never ask FAISS for more than exists: it would pad oddly
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), PAD_INDEX, dtype=np.int64)
    if nq == 0 or available <= 0:
        return scores, ids

    if use_gpu is None:
        use_gpu = faiss_gpu_available()
    elif use_gpu and not faiss_gpu_available():
        warnings.warn("use_gpu=True but faiss has no usable GPU; searching on the CPU", RuntimeWarning, stacklevel=2)
        use_gpu = False
    d, i = _search(g, q, k_search, bool(use_gpu), query_batch)

    if exclude_self:
        is_self = i == np.arange(nq, dtype=np.int64)[:, None]  # at most one per row: FAISS ids are distinct
        drop = is_self.copy()
        drop[~is_self.any(axis=1), -1] = True
        keep = ~drop
        d = d[keep].reshape(nq, k_search - 1)
        i = i[keep].reshape(nq, k_search - 1)

    n = min(k, d.shape[1])
    scores[:, :n] = d[:, :n]
    ids[:, :n] = i[:, :n]
    return scores, ids


def labels_at(indices: np.ndarray, labels: Any) -> np.ndarray:
    """Labels of neighbour ``indices`` (as from :func:`knn_search`), with padding (-1) mapped to
    :data:`~distill.metrics.UNKNOWN_LABEL`, ready for :func:`distill.metrics.retrieval_metrics`."""
    idx = np.asarray(indices)
    lab = np.asarray(labels).astype(np.int64, copy=False)
    if lab.ndim != 1:
        raise InvalidInput(f"labels must be 1-D, got shape {lab.shape}")
    if idx.size and (idx.max() >= lab.size or idx.min() < PAD_INDEX):
        raise InvalidInput(f"neighbour indices out of range for {lab.size} labels")
    out = lab[np.where(idx >= 0, idx, 0)] if lab.size else np.zeros(idx.shape, dtype=np.int64)
    return np.where(idx >= 0, out, UNKNOWN_LABEL).astype(np.int64)


def pair_scores(embeddings: Any, labels: Any, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of all unordered pairs i < j, split into (genuine, impostor) float32 arrays.

    Genuine = same label, impostor = different labels; samples labelled -1 (unknown) are dropped first. The
    score matrix is computed ``block`` rows at a time against the rows from the block on (only the upper
    triangle is needed), so at most ``block x n`` scores exist besides the outputs, which are preallocated from
    the class sizes. Pairs come in row-major (i, j) order of the kept samples. Note that the outputs alone hold
    n(n-1)/2 floats: all-pairs verification is for evaluation sets of moderate size.
    """
    block = _positive_int(block, "block")
    x = _matrix(embeddings, "embeddings")
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.size != x.shape[0]:
        raise InvalidInput(f"labels must be 1-D with one label per embedding ({x.shape[0]}), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    keep = y != UNKNOWN_LABEL
    x = l2_normalize(x[keep])
    y = y[keep]
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
