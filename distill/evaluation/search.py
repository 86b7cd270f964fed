"""Cosine-similarity neighbour search (exact by default) and pair scoring — the only place fsd touches FAISS.

One responsibility: from embeddings to (score, index) neighbour lists and to genuine/impostor pair scores.
Turning those into metrics is :mod:`distill.evaluation.metrics`' job. Similarity is the inner product of L2-normalised
copies (= cosine similarity); the callers' arrays are never modified.

Why exact search (``IndexFlatIP``) by default: evaluation numbers must not depend on an approximate index's
recall. For galleries too large for exact search, ``knn_search(..., index="ivf" | "hnsw")`` uses an approximate
index (``IndexIVFFlat`` / ``IndexHNSWFlat``, inner product); :func:`approximate_recall` and
:func:`recall_vs_exact` measure how many of the exact top-k neighbours it finds, so a report can say how far
its retrieval numbers may be off.
Why batching: the (queries x k) result and FAISS' temporary buffers stay bounded however many queries there are.
GPU: used when ``faiss`` was built with GPU support and a GPU is visible (exact and IVF; HNSW is CPU-only in
FAISS); any failure there falls back to the CPU with a :class:`RuntimeWarning`, because an evaluation that is
slower is better than one that is lost.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import faiss
import numpy as np

from distill.evaluation.validate import UNKNOWN_LABEL, as_matrix, l2_normalize, positive_int
from featstore.errors import InvalidInput

PAD_INDEX: int = -1
"""Index returned where fewer than k neighbours exist (its score is ``-inf``)."""

INDEX_TYPES: tuple[str, ...] = ("exact", "ivf", "hnsw")
"""Values of ``knn_search(..., index=...)``: exact (``IndexFlatIP``, the default) or an approximate index."""

DEFAULT_HNSW_M: int = 32
"""Neighbours per node of the HNSW graph."""

DEFAULT_EF_SEARCH: int = 128
"""HNSW search breadth when none is given (raised to k when k is larger)."""


def faiss_gpu_available() -> bool:
    """True only if this faiss build has GPU support and sees at least one GPU; never raises."""
    try:
        return bool(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    except Exception:  # noqa: BLE001 - a broken CUDA install must not break CPU evaluation
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
        except Exception as exc:  # noqa: BLE001 - old GPU k limits, out of GPU memory, a CPU-only build, ...
            warnings.warn(f"FAISS GPU search failed ({exc!r}); falling back to the CPU", RuntimeWarning, stacklevel=3)
    return _search_batched(index, queries, k, batch)


def resolve_index_params(
    index: str,
    num_gallery: int,
    k: int,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_search: int | None = None,
) -> dict[str, Any]:
    """The parameters an index of ``num_gallery`` items searched for ``k`` neighbours is built with.

    * ``exact``: ``{"type": "exact"}``.
    * ``ivf``: ``nlist`` inverted lists (default ≈ 4·sqrt(N), capped at N/39 so k-means has the 39 training
      points per centroid FAISS asks for, at least 1) and ``nprobe`` lists visited per query (default
      max(16, nlist/4), at most nlist). ``nlist`` may not exceed N.
    * ``hnsw``: ``M`` = ``hnsw_m`` graph neighbours per node, ``efConstruction`` = max(40, 2·M) and ``efSearch``
      = max(``ef_search`` (default 128), k): HNSW never returns more than efSearch results.

    Raises :class:`InvalidInput` on an unknown index type or non-positive parameters.
    """
    if index not in INDEX_TYPES:
        raise InvalidInput(f"index must be one of {', '.join(INDEX_TYPES)}, got {index!r}")
    if index == "exact":
        return {"type": "exact"}
    n = max(int(num_gallery), 1)
    if index == "ivf":
        if nlist is None:
            nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
        nlist = positive_int(nlist, "nlist")
        if nlist > n:
            raise InvalidInput(f"nlist={nlist} exceeds the {num_gallery} gallery items (k-means needs one per list)")
        nprobe = max(16, nlist // 4) if nprobe is None else positive_int(nprobe, "nprobe")
        return {"type": "ivf", "nlist": nlist, "nprobe": min(nprobe, nlist)}
    hnsw_m = positive_int(hnsw_m, "hnsw_m")
    ef = DEFAULT_EF_SEARCH if ef_search is None else positive_int(ef_search, "ef_search")
    return {"type": "hnsw", "M": hnsw_m, "efConstruction": max(40, 2 * hnsw_m), "efSearch": max(ef, int(k))}


def _build_approximate(gallery: np.ndarray, params: dict[str, Any]) -> Any:
    """A CPU FAISS index over the (normalised) gallery, inner-product metric, built as ``params`` say."""
    dim = gallery.shape[1]
    if params["type"] == "ivf":
        # IndexIVFFlat over an IndexFlatIP quantizer; the factory's index owns its quantizer
        index = faiss.index_factory(dim, f"IVF{params['nlist']},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(gallery)
        index.add(gallery)
        index.nprobe = params["nprobe"]
        return index
    index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["efConstruction"]
    index.add(gallery)
    index.hnsw.efSearch = params["efSearch"]
    return index


def _search_approximate(
    gallery: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool, batch: int, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    index = _build_approximate(gallery, params)
    if use_gpu and params["type"] == "ivf":  # FAISS has no GPU HNSW
        try:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
            try:
                faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", params["nprobe"])
            except AttributeError:  # older builds copy nprobe with the index
                pass
            d, i = _search_batched(gpu_index, queries, k, batch)
            return _mark_missing(d, i)
        except Exception as exc:  # noqa: BLE001 - GPU nprobe/k limits, out of GPU memory, a CPU-only build, ...
            warnings.warn(f"FAISS GPU search failed ({exc!r}); falling back to the CPU", RuntimeWarning, stacklevel=3)
    return _mark_missing(*_search_batched(index, queries, k, batch))


def _mark_missing(d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate indexes return id -1 (and a huge negative score) where they found fewer than k items."""
    missing = i < 0
    if missing.any():
        d[missing] = -np.inf
        i[missing] = PAD_INDEX
    return d, i


def _drop_self(d: np.ndarray, i: np.ndarray, self_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, where it is absent, the row's last entry): one column fewer."""
    nq, width = i.shape
    is_self = i == self_ids[:, None]  # at most one per row: FAISS ids are distinct (padding never equals self)
    drop = is_self.copy()
    drop[~is_self.any(axis=1), -1] = True
    keep = ~drop
    return d[keep].reshape(nq, width - 1), i[keep].reshape(nq, width - 1)


def _knn(
    q: np.ndarray,
    g: np.ndarray,
    k: int,
    self_ids: np.ndarray | None,
    use_gpu: bool | None,
    query_batch: int,
    params: dict[str, Any],
    stacklevel: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Search normalised ``q`` in normalised ``g``; ``self_ids[r]`` = the gallery row query r must not get."""
    exclude = self_ids is not None
    nq, ng = q.shape[0], g.shape[0]
    available = ng - 1 if exclude else ng
    k_search = min(k + 1 if exclude else k, ng)  # never ask FAISS for more than exists: it would pad oddly
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), PAD_INDEX, dtype=np.int64)
    if nq == 0 or available <= 0:
        return scores, ids

    if use_gpu is None:
        use_gpu = faiss_gpu_available()
    elif use_gpu and not faiss_gpu_available():
        warnings.warn(
            "use_gpu=True but faiss has no usable GPU; searching on the CPU", RuntimeWarning, stacklevel=stacklevel
        )
        use_gpu = False
    if params["type"] == "exact":
        d, i = _search(g, q, k_search, bool(use_gpu), query_batch)
    else:
        d, i = _search_approximate(g, q, k_search, bool(use_gpu), query_batch, params)

    if exclude:
        d, i = _drop_self(d, i, self_ids)

    n = min(k, d.shape[1])
    scores[:, :n] = d[:, :n]
    ids[:, :n] = i[:, :n]
    return scores, ids


def knn_search(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    exclude_self: bool = False,
    use_gpu: bool | None = None,
    query_batch: int = 4096,
    index: str = "exact",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery items of each query by cosine similarity — exact unless ``index`` says otherwise.

    Args:
        queries: ``(nq, dim)`` embeddings (normalised here; need not be).
        gallery: ``(ng, dim)`` embeddings.
        k: neighbours per query, >= 1.
        exclude_self: queries and gallery are the same set (leave-one-out) and query i must never get item i
            back. k+1 items are searched and the entry equal to i removed; if i is not among them (possible
            with duplicated rows, which tie with the query, or with an approximate index that misses it) the
            last one is dropped instead, so k remain.
        use_gpu: ``None`` = GPU if :func:`faiss_gpu_available`; ``True`` without a usable GPU warns and runs on
            the CPU; ``False`` = CPU. HNSW always runs on the CPU.
        query_batch: queries searched per FAISS call (bounds memory).
        index: ``"exact"`` (default: ``IndexFlatIP``, exact), ``"ivf"`` (``IndexIVFFlat``, trained on the
            gallery) or ``"hnsw"`` (``IndexHNSWFlat``) — approximate, for large galleries; measure what they
            miss with :func:`approximate_recall` / :func:`recall_vs_exact`.
        nlist: IVF lists. Defaults and limits of this and the next three: :func:`resolve_index_params`; the
            exact search ignores them. The index is built for this call (IVF: k-means on the gallery, seeded,
            so repeatable; HNSW: FAISS inserts in parallel, so with several OpenMP threads two builds may
            differ in a few neighbours).
        nprobe: IVF lists probed per query.
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search breadth.

    Returns:
        ``(scores, indices)``: float32 and int64 arrays of shape ``(nq, k)``, sorted by descending score. Where
        fewer than k items are available (ng, or ng - 1 with ``exclude_self``) or an approximate index found
        fewer, the rest is padded with index :data:`PAD_INDEX` (-1) and score ``-inf``. Equal scores come in
        FAISS' order.

    Raises :class:`InvalidInput` on non-2-D or non-finite input, mismatched dimensions, k <= 0, an unknown
    ``index`` or bad index parameters, or ``exclude_self`` with a gallery that is not the query set.
    """
    k = positive_int(k, "k")
    query_batch = positive_int(query_batch, "query_batch")
    q = l2_normalize(as_matrix(queries, "queries"))
    g = q if gallery is queries else l2_normalize(as_matrix(gallery, "gallery"))
    if q.shape[1] != g.shape[1]:
        raise InvalidInput(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    if exclude_self and not (gallery is queries or np.array_equal(q, g)):
        raise InvalidInput("exclude_self=True needs the gallery to be the query set itself (same rows, same order)")
    params = resolve_index_params(
        index,
        g.shape[0],
        min(k + int(exclude_self), g.shape[0]),
        nlist=nlist,
        nprobe=nprobe,
        hnsw_m=hnsw_m,
        ef_search=ef_search,
    )
    self_ids = np.arange(q.shape[0], dtype=np.int64) if exclude_self else None
    return _knn(q, g, k, self_ids, use_gpu, query_batch, params)


def topk_recall(exact_ids: Any, approx_ids: Any) -> float | None:
    """Fraction of the exact neighbours that also appear in the same row of ``approx_ids``, pooled over queries.

    The exact neighbours are the ids >= 0 of ``exact_ids``, one row per query; the fraction is
    sum_r |E_r ∩ A_r| / sum_r |E_r|. Order within a row does not matter; padding (-1) is ignored. ``None``
    when there is no exact neighbour at all.
    """
    e = np.asarray(exact_ids)
    a = np.asarray(approx_ids)
    if e.ndim != 2 or a.ndim != 2 or e.shape[0] != a.shape[0]:
        raise InvalidInput(
            f"exact and approximate neighbour ids must be 2-D with one row per query, got shapes "
            f"{e.shape} and {a.shape}"
        )
    if (e.size and not np.issubdtype(e.dtype, np.integer)) or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InvalidInput("neighbour ids must be integers")
    total = int((e >= 0).sum())
    if total == 0:
        return None
    found = 0
    rows = max(1, (1 << 22) // max(1, e.shape[1] * max(a.shape[1], 1)))  # bounds the (rows, ke, ka) comparison
    for start in range(0, e.shape[0], rows):
        es, as_ = e[start : start + rows], a[start : start + rows]
        hit = (es[:, :, None] == as_[:, None, :]).any(axis=2) & (es >= 0)
        found += int(hit.sum())
    return found / total


def recall_vs_exact(
    queries: Any,
    gallery: Any,
    approx_ids: Any,
    *,
    exclude_self: bool = False,
    max_queries: int | None = 1000,
    seed: int = 0,
    use_gpu: bool | None = None,
    query_batch: int = 4096,
) -> tuple[float | None, int]:
    """Recall of an approximate search's result ``approx_ids`` against the exact search.

    ``approx_ids`` is ``(nq, k)``, as :func:`knn_search` returned it for these queries/gallery. The check runs
    on at most ``max_queries`` queries drawn without replacement with ``seed`` (all queries when ``None`` or
    when there are fewer).

    Only the sampled queries are searched exactly, so the check costs ``max_queries / nq`` of an exact search.
    Returns ``(recall, num_queries_checked)`` with recall as in :func:`topk_recall`.
    """
    query_batch = positive_int(query_batch, "query_batch")
    q = l2_normalize(as_matrix(queries, "queries"))
    g = q if gallery is queries else l2_normalize(as_matrix(gallery, "gallery"))
    a = np.asarray(approx_ids)
    if a.ndim != 2 or a.shape[0] != q.shape[0] or a.shape[1] == 0:
        raise InvalidInput(f"approx_ids must be (num_queries={q.shape[0]}, k), got shape {a.shape}")
    if exclude_self and not (gallery is queries or np.array_equal(q, g)):
        raise InvalidInput("exclude_self=True needs the gallery to be the query set itself (same rows, same order)")
    nq = q.shape[0]
    rows = np.arange(nq)
    if max_queries is not None and nq > positive_int(max_queries, "max_queries"):
        rows = np.sort(np.random.default_rng(seed).choice(nq, size=max_queries, replace=False))
    self_ids = rows.astype(np.int64) if exclude_self else None
    _, exact = _knn(q[rows], g, a.shape[1], self_ids, use_gpu, query_batch, {"type": "exact"})
    return topk_recall(exact, a[rows]), int(rows.size)


def approximate_recall(
    queries: Any,
    gallery: Any,
    k: int,
    index: str,
    *,
    exclude_self: bool = False,
    use_gpu: bool | None = None,
    query_batch: int = 4096,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_search: int | None = None,
) -> float | None:
    """Fraction of the exact top-k neighbours of every query that the approximate ``index`` finds in its top k.

    ``index`` is "ivf" or "hnsw", built with the given parameters (:func:`topk_recall`; 1.0 for ``"exact"``).
    """
    kwargs = {"exclude_self": exclude_self, "use_gpu": use_gpu, "query_batch": query_batch}
    _, approx = knn_search(
        queries, gallery, k, index=index, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search, **kwargs
    )
    _, exact = knn_search(queries, gallery, k, **kwargs)
    return topk_recall(exact, approx)


def labels_at(indices: np.ndarray, labels: Any) -> np.ndarray:
    """Labels of neighbour ``indices`` (as from :func:`knn_search`), ready for the retrieval metrics.

    Padding (-1) is mapped to :data:`~distill.evaluation.metrics.UNKNOWN_LABEL`, as
    :func:`distill.evaluation.metrics.retrieval_metrics` expects.
    """
    idx = np.asarray(indices)
    lab = np.asarray(labels).astype(np.int64, copy=False)
    if lab.ndim != 1:
        raise InvalidInput(f"labels must be 1-D, got shape {lab.shape}")
    if idx.size and (idx.max() >= lab.size or idx.min() < PAD_INDEX):
        raise InvalidInput(f"neighbour indices out of range for {lab.size} labels")
    out = lab[np.where(idx >= 0, idx, 0)] if lab.size else np.zeros(idx.shape, dtype=np.int64)
    return np.where(idx >= 0, out, UNKNOWN_LABEL).astype(np.int64)
