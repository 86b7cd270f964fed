"""Tests for distill.evaluation.search: normalisation, exact FAISS search against a numpy brute force, leave-one-out
self-exclusion (also with duplicated rows), padding, the GPU fallback, and blockwise pair scores."""

from __future__ import annotations

import math
import warnings

import faiss
import numpy as np
import pytest

import distill.evaluation.search as knn
from distill.evaluation.search import PAD_INDEX, faiss_gpu_available, knn_search, l2_normalize, labels_at
from distill.evaluation.testing import brute_knn, brute_pair_scores, pair_scores
from featstore.errors import InvalidInput


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 16)).astype(np.float32), rng.normal(size=(300, 16)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# l2_normalize
# ----------------------------------------------------------------------------------------------------------------


def test_l2_normalize_unit_rows_zero_rows_stay_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [1e30, -1e30]], dtype=np.float64)
    before = x.copy()
    y = l2_normalize(x)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(y[1] == 0) and np.all(np.isfinite(y))
    np.testing.assert_allclose(np.linalg.norm(y[[0, 2, 3]], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(x, before)  # input untouched
    assert l2_normalize(np.asfortranarray(np.ones((3, 2)))).flags.c_contiguous
    assert l2_normalize(np.ones((2, 3), dtype=np.int64)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_l2_normalize_is_the_whole_matrix_float64_division_bit_for_bit(dtype: type, order: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1001, 300)) * (100 if dtype is np.int64 else 1)  # several blocks and a partial one
    x[::7] *= 1e4 if dtype is np.float16 else 1e30 if dtype is not np.int64 else 1
    x[5] = 0
    x = np.asarray(x.astype(dtype), order=order)
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    want = (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    got = l2_normalize(x)
    assert got.flags.c_contiguous and got.dtype == np.float32
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([1.0, 2.0]), "2-D"),
        (np.array([[1.0, math.nan]]), "NaN"),
        (np.zeros((3, 0)), "dimension 0"),
        (np.array([["a", "b"]]), "real numbers"),
        (np.array([[math.inf, 1.0]]), "infinite"),
    ],
)
def test_l2_normalize_rejects_bad_input(bad: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        l2_normalize(bad)


# ----------------------------------------------------------------------------------------------------------------
# knn_search
# ----------------------------------------------------------------------------------------------------------------


def test_knn_matches_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = data
    scores, ids = knn_search(q, g, 10, use_gpu=False)
    ref_s, ref_i = brute_knn(q, g, 10)
    assert scores.shape == ids.shape == (60, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_knn_batching_does_not_change_results(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = data
    whole = knn_search(q, g, 5, use_gpu=False)
    batched = knn_search(q, g, 5, use_gpu=False, query_batch=7)
    np.testing.assert_array_equal(whole[1], batched[1])
    np.testing.assert_array_equal(whole[0], batched[0])


def test_knn_exclude_self_never_returns_self_and_matches_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    _, g = data
    scores, ids = knn_search(g, g, 8, exclude_self=True, use_gpu=False)
    assert not np.any(ids == np.arange(g.shape[0])[:, None])
    ref_s, ref_i = brute_knn(g, g, 8, exclude_self=True)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    # passing a copy (not the same object) is accepted too
    np.testing.assert_array_equal(knn_search(g, g.copy(), 8, exclude_self=True, use_gpu=False)[1], ids)


def test_knn_exclude_self_with_duplicated_rows() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(5, 8)).astype(np.float32)
    x = np.concatenate([np.repeat(base[:1], 6, axis=0), base[1:], base[1:3]])  # 6 copies of row 0, 2 of rows 1,2
    n = x.shape[0]
    for k in (1, 2, 3, 5, n - 1):
        scores, ids = knn_search(x, x, k, exclude_self=True, use_gpu=False)
        assert not np.any(ids == np.arange(n)[:, None]), k
        assert np.all(ids >= 0)  # n - 1 others exist, so no padding for k <= n - 1
        for row in ids:
            assert len(set(row.tolist())) == k  # distinct neighbours
    # the duplicates of row 0 are each other's best neighbours, with score 1
    scores, ids = knn_search(x, x, 5, exclude_self=True, use_gpu=False)
    np.testing.assert_allclose(scores[:6], 1.0, atol=1e-6)
    assert all(set(ids[i].tolist()) == set(range(6)) - {i} for i in range(6))


def test_knn_exclude_self_drops_last_when_self_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the branch where FAISS' k+1 results omit the query itself (ties among duplicates): row 0 gets
    # [2, 1, 3] (no self) -> drop the last -> [2, 1]; rows 1..3 contain themselves -> drop that entry.
    fake_d = np.array([[1.0, 1.0, 1.0], [0.9, 0.8, 0.7], [0.6, 0.5, 0.4], [0.3, 0.2, 0.1]], dtype=np.float32)
    fake_i = np.array([[2, 1, 3], [0, 1, 2], [2, 0, 1], [0, 1, 3]], dtype=np.int64)
    monkeypatch.setattr(knn, "_search", lambda *a, **kw: (fake_d.copy(), fake_i.copy()))
    x = np.eye(4, dtype=np.float32)
    scores, ids = knn_search(x, x, 2, exclude_self=True, use_gpu=False)
    assert ids.tolist() == [[2, 1], [0, 2], [0, 1], [0, 1]]
    np.testing.assert_array_equal(scores, np.array([[1.0, 1.0], [0.9, 0.7], [0.5, 0.4], [0.3, 0.2]], np.float32))


def test_knn_pads_when_k_exceeds_available() -> None:
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    scores, ids = knn_search(g[:1], g, 5, use_gpu=False)
    assert ids.tolist() == [[0, 2, 1, PAD_INDEX, PAD_INDEX]]
    np.testing.assert_allclose(scores[0, :3], [1.0, math.sqrt(0.5), 0.0], atol=1e-6)
    assert np.all(scores[0, 3:] == -np.inf)
    scores, ids = knn_search(g, g, 3, exclude_self=True, use_gpu=False)  # only 2 others each
    assert np.all(ids[:, 2] == PAD_INDEX) and np.all(scores[:, 2] == -np.inf)
    assert np.all(ids[:, :2] >= 0)
    single = np.ones((1, 2), dtype=np.float32)
    s1, i1 = knn_search(single, single, 2, exclude_self=True, use_gpu=False)
    assert i1.tolist() == [[PAD_INDEX, PAD_INDEX]] and np.all(s1 == -np.inf)
    s0, i0 = knn_search(single, np.zeros((0, 2), dtype=np.float32), 3, use_gpu=False)
    assert i0.tolist() == [[PAD_INDEX] * 3]
    s_empty, i_empty = knn_search(np.zeros((0, 2), dtype=np.float32), g, 2, use_gpu=False)
    assert s_empty.shape == i_empty.shape == (0, 2)


def test_knn_does_not_modify_inputs(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = data
    q0, g0 = q.copy(), g.copy()
    knn_search(q, g, 3, use_gpu=False)
    np.testing.assert_array_equal(q, q0)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, None])
def test_knn_rejects_bad_k(data: tuple[np.ndarray, np.ndarray], k: object) -> None:
    q, g = data
    with pytest.raises(InvalidInput, match="k must be a positive integer"):
        knn_search(q, g, k)  # type: ignore[arg-type]


def test_knn_rejects_bad_input(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = data
    with pytest.raises(InvalidInput, match="dimension"):
        knn_search(q[:, :8], g, 3)
    with pytest.raises(InvalidInput, match="2-D"):
        knn_search(q[0], g, 3)
    bad = q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidInput, match="queries contains NaN"):
        knn_search(bad, g, 3)
    with pytest.raises(InvalidInput, match="gallery contains NaN"):
        knn_search(q, bad, 3)
    with pytest.raises(InvalidInput, match="exclude_self"):
        knn_search(q, g, 3, exclude_self=True)
    with pytest.raises(InvalidInput, match="query_batch"):
        knn_search(q, g, 3, query_batch=0)


# ----------------------------------------------------------------------------------------------------------------
# GPU selection and fallback (this machine has no GPU faiss)
# ----------------------------------------------------------------------------------------------------------------


def test_faiss_gpu_available_is_bool_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(faiss_gpu_available(), bool)

    def broken() -> int:
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", broken)
    assert faiss_gpu_available() is False


@pytest.mark.skipif(faiss_gpu_available(), reason="checks the no-GPU fallback")
def test_use_gpu_true_without_gpu_warns_and_uses_cpu(data: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = data
    cpu = knn_search(q, g, 4, use_gpu=False)
    with pytest.warns(RuntimeWarning, match="CPU"):
        gpu = knn_search(q, g, 4, use_gpu=True)
    np.testing.assert_array_equal(cpu[1], gpu[1])
    np.testing.assert_array_equal(cpu[0], gpu[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the automatic choice (None) is silent
        auto = knn_search(q, g, 4)
    np.testing.assert_array_equal(cpu[1], auto[1])


def test_gpu_failure_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]) -> None:
    q, g = data
    cpu = knn_search(q, g, 4, use_gpu=False)

    def no_gpu(index: object) -> object:
        raise RuntimeError("out of GPU memory")

    monkeypatch.setattr(knn, "faiss_gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_gpu, raising=False)
    with pytest.warns(RuntimeWarning, match="out of GPU memory"):
        got = knn_search(q, g, 4)  # None -> "GPU available" -> fails -> CPU
    np.testing.assert_array_equal(cpu[1], got[1])
    np.testing.assert_array_equal(cpu[0], got[0])


# ----------------------------------------------------------------------------------------------------------------
# labels_at
# ----------------------------------------------------------------------------------------------------------------


def test_labels_at_maps_padding_to_unknown() -> None:
    labels = np.array([10, 11, 12])
    assert labels_at(np.array([[2, 0, -1], [1, -1, -1]]), labels).tolist() == [[12, 10, -1], [11, -1, -1]]
    assert labels_at(np.array([[-1]]), np.array([], dtype=np.int64)).tolist() == [[-1]]
    with pytest.raises(InvalidInput, match="out of range"):
        labels_at(np.array([[3]]), labels)


# ----------------------------------------------------------------------------------------------------------------
# pair_scores (distill.evaluation.testing: the materialising reference)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_pair_scores_match_brute_force(block: int) -> None:
    rng = np.random.default_rng(5)
    n = 90
    x = rng.normal(size=(n, 10)).astype(np.float32)
    labels = rng.integers(0, 12, size=n)
    labels[::11] = -1  # unknowns are dropped
    gen, imp = pair_scores(x, labels, block=block)
    ref_gen, ref_imp = brute_pair_scores(x, labels)
    assert gen.dtype == imp.dtype == np.float32
    m = int(np.sum(labels != -1))
    assert gen.size + imp.size == m * (m - 1) // 2
    _, sizes = np.unique(labels[labels != -1], return_counts=True)
    assert gen.size == int(np.sum(sizes * (sizes - 1) // 2))
    np.testing.assert_allclose(gen, ref_gen, atol=1e-6)  # same (i, j) row-major order
    np.testing.assert_allclose(imp, ref_imp, atol=1e-6)


def test_pair_scores_small_cases() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    gen, imp = pair_scores(x, np.array([0, 1, 0, -1]))
    # kept: samples 0,1,2; pairs (0,1) impostor cos 0; (0,2) genuine cos 1; (1,2) impostor cos 0
    assert gen.tolist() == [1.0]
    assert imp.tolist() == [0.0, 0.0]
    g1, i1 = pair_scores(x[:1], np.array([0]))
    assert g1.size == i1.size == 0
    g0, i0 = pair_scores(np.zeros((0, 2), dtype=np.float32), np.array([], dtype=np.int64))
    assert g0.size == i0.size == 0


def test_pair_scores_rejects_bad_input() -> None:
    x = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(InvalidInput, match="one label per embedding"):
        pair_scores(x, np.array([0, 1]))
    with pytest.raises(InvalidInput, match="integers"):
        pair_scores(x, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(InvalidInput, match="block"):
        pair_scores(x, np.array([0, 1, 1]), block=0)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidInput, match="infinite"):
        pair_scores(bad, np.array([0, 1, 1]))
