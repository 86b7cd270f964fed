"""Tests for distill.evaluation.verification.streaming_verification: exact equality with the materialising path
(metrics.verification_metrics over all pair scores), hand-computed cases, an independent brute force, edge cases
and bad input.

Exactness is stated for the scores the tiles produce. Two kinds of data make the comparison meaningful:

* "exact" embeddings whose float32 dot products are exact whatever the summation order (entries ±1 on 4 or 16 of
  16 coordinates → normalised entries ±0.5 / ±0.25, products multiples of 1/16): every BLAS kernel, tile shape
  and device gives the same scores, so the reference is the independent ``distill.evaluation.search.pair_scores`` — and the
  scores tie massively (17 distinct values), with -0.0 / +0.0 from zero rows.
* continuous random embeddings, where the reference must use the very tiles (:func:`tiled_pair_scores`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import distill.evaluation as ev
from distill.evaluation import pair_tiles
from distill.evaluation import verification as ver
from distill.evaluation.metrics import FARS, far_key, roc_curve, verification_metrics
from distill.evaluation.testing import brute_eer, brute_pair_scores, brute_roc_auc, brute_tar_at_far, pair_scores
from distill.evaluation.verification import float32_keys, streaming_verification, tiled_pair_scores
from featstore.errors import InvalidInput

FARS_ALL = (*FARS, 2.5e-3, 0.3, 0.5, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# data (the brute-force references are distill.evaluation.testing's)
# ----------------------------------------------------------------------------------------------------------------


def exact_embeddings(n: int, seed: int, zero_rows: int = 2) -> np.ndarray:
    """Rows whose pairwise float32 cosines are exact in any summation order (see the module docstring)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 16), dtype=np.float32)
    for i in range(n):
        if rng.random() < 0.5:
            cols = rng.choice(16, size=4, replace=False)
            x[i, cols] = rng.choice([-1.0, 1.0], size=4)
        else:
            x[i] = rng.choice([-1.0, 1.0], size=16)
    x[:zero_rows] = 0.0  # zero rows score 0 (sometimes -0.0) against everything
    return x


def check_curve(far: np.ndarray, tar: np.ndarray, gen: np.ndarray, imp: np.ndarray, max_points: int) -> None:
    full_far, full_tar = roc_curve(gen, imp, max_points=10**9)
    exact = set(zip(full_far.tolist(), full_tar.tolist()))
    assert all(p in exact for p in zip(far.tolist(), tar.tolist()))
    assert far.size <= max_points
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert tar[far == 0].max() == full_tar[full_far == 0].max()  # the left edge of a log-FAR plot


# ----------------------------------------------------------------------------------------------------------------
# keys
# ----------------------------------------------------------------------------------------------------------------


def test_float32_keys_preserve_order_and_ties() -> None:
    values = np.array([-np.inf, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, np.inf], dtype=np.float32)
    k = float32_keys(values).astype(np.int64)
    assert k.dtype == np.int64 and np.all(np.diff(k[[0, 1, 2, 3, 5, 6, 7, 8]]) > 0)
    assert k[3] == k[4]  # -0.0 == +0.0
    rng = np.random.default_rng(0)
    v = (rng.normal(size=20000) * rng.choice([1e-30, 1e-3, 1.0, 1e30], size=20000)).astype(np.float32)
    v[:50], v[50:100] = 0.0, -0.0
    v[100:200] = v[200:300]  # ties
    keys = float32_keys(v)
    order = np.argsort(v, kind="stable")
    assert np.all(np.diff(keys[order].astype(np.int64)) >= 0)
    assert np.unique(keys).size == np.unique(v).size
    assert float32_keys(np.array([0.25], np.float32))[0] == np.uint32(0x80000000 | 0x3E800000)


# ----------------------------------------------------------------------------------------------------------------
# hand-computed
# ----------------------------------------------------------------------------------------------------------------


def test_hand_computed_report() -> None:
    # a = b = (1, 0) (label 0); c = (0, 1), d = (-1, 0) (label 1)
    # genuine: ab = 1, cd = 0;  impostor: ac = 0, ad = -1, bc = 0, bd = -1  (descending: 0, 0, -1, -1)
    x = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    report, (far, tar) = streaming_verification(x, y, fars=(0.1, 0.25, 0.5, 1.0), use_gpu=False)
    # FAR .1: .1*4 < 1 -> None;  .25: k=1, t=s2=0, genuine > 0: {1} -> 1/2;  .5: k=2, t=s3=-1 -> 2/2;
    # 1: k=4=N_imp, t=-inf -> 1
    # AUC: g=1 beats all 4 -> 4; g=0 beats the two -1 and ties the two 0 -> 2 + 1/2*2 = 3; AUC = 7/8
    # EER: t=-inf (FAR 1, FRR 0), t=-1 (1/2, 0) <- |d| = 1/2 first, t=0 (0, 1/2), t=1 (0, 1) -> (1/2 + 0)/2
    assert report == {
        "num_genuine": 2,
        "num_impostor": 4,
        "tar_at_far": {"1e-01": None, "2.5e-01": 0.5, "5e-01": 1.0, "1e+00": 1.0},
        "roc_auc": 0.875,
        "eer": 0.25,
    }
    # ROC: thresholds 1, 0, -1, -inf -> (0, 0), (0, 1/2), (1/2, 1), (1, 1)
    assert far.tolist() == [0.0, 0.0, 0.5, 1.0] and tar.tolist() == [0.0, 0.5, 1.0, 1.0]
    json.dumps(report, allow_nan=False)
    assert type(report["roc_auc"]) is float and type(report["eer"]) is float
    assert all(type(v) is float for v in report["tar_at_far"].values() if v is not None)
    assert type(report["num_genuine"]) is int


# ----------------------------------------------------------------------------------------------------------------
# exact equality with the materialising path
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [3, 7, 64, 100, 2048])  # none divides 301; 3 leaves an empty 1x1 diagonal tile
def test_exact_data_equals_pair_scores_path(block: int) -> None:
    n = 301
    x = exact_embeddings(n, seed=block)
    rng = np.random.default_rng(block)
    y = rng.integers(0, 15, size=n)
    y[2:5] = [100, 101, 102]  # single-sample classes
    y[5:8] = -1  # unknown: dropped
    gen, imp = pair_scores(x, y)
    assert np.unique(np.concatenate([gen, imp])).size <= 33  # heavy ties
    expected = verification_metrics(gen, imp, FARS_ALL)
    report, (far, tar) = streaming_verification(x, y, FARS_ALL, block=block, use_gpu=False)
    assert report == expected  # bit for bit, None where undefined
    check_curve(far, tar, gen, imp, 1000)


@pytest.mark.parametrize(
    ("bins", "cap", "block"), [(1 << 12, 10**9, 50), (1 << 20, 10**9, 97), (1 << 16, 700, 64), (1 << 12, 2500, 128)]
)
def test_radix_sizes_and_multi_pass_auc(bins: int, cap: int, block: int, monkeypatch) -> None:
    # cap below the genuine count: the exact AUC collects genuine keys group by group over several passes
    n = 260
    x = exact_embeddings(n, seed=3)
    y = np.random.default_rng(3).integers(0, 6, size=n)
    gen, imp = pair_scores(x, y)
    passes = []
    tiles = ver.tiles
    monkeypatch.setattr(ver, "tiles", lambda *a: passes.append(1) or tiles(*a))
    report, _ = streaming_verification(x, y, FARS_ALL, block=block, bins=bins, genuine_cap=cap, use_gpu=False)
    assert report == verification_metrics(gen, imp, FARS_ALL)
    # every genuine key fits: one pass; otherwise pass 1, refine + collect, count groups
    assert len(passes) == 1 if cap >= gen.size else len(passes) >= 4


def test_torch_code_path_on_cpu() -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tiles: a thread pool only adds overhead on a shared machine
    try:
        _check_torch_path()
    finally:
        torch.set_num_threads(threads)


def _check_torch_path() -> None:
    n = 150
    x = exact_embeddings(n, seed=5)
    y = np.random.default_rng(5).integers(0, 8, size=n)
    gen, imp = pair_scores(x, y)
    expected = verification_metrics(gen, imp, FARS_ALL)
    for cap in (10**9, 400):
        report, (far, tar) = streaming_verification(x, y, FARS_ALL, block=40, genuine_cap=cap, _torch_device="cpu")
        assert report == expected
        check_curve(far, tar, gen, imp, 1000)


@pytest.mark.parametrize("block", [13, 128, 2048])
def test_continuous_data_equals_the_same_tiles(block: int) -> None:
    rng = np.random.default_rng(block)
    n, dim = 400, 24
    y = rng.integers(0, 25, size=n)
    centres = rng.normal(size=(25, dim))
    x = (centres[y] + 1.2 * rng.normal(size=(n, dim))).astype(np.float32)
    gen, imp = tiled_pair_scores(x, y, block)
    assert gen.size + imp.size == n * (n - 1) // 2
    report, (far, tar) = streaming_verification(x, y, FARS_ALL, block=block, use_gpu=False, roc_points=50)
    assert report == verification_metrics(gen, imp, FARS_ALL)
    check_curve(far, tar, gen, imp, 50)


def test_matches_independent_brute_force() -> None:
    n = 60
    x = exact_embeddings(n, seed=11)
    y = np.random.default_rng(11).integers(0, 5, size=n)
    y[0], y[1] = 50, -1
    gen, imp = brute_pair_scores(x, y)
    fars = (1e-3, 3e-3, 1e-2, 0.1, 0.5)
    report, _ = streaming_verification(x, y, fars, block=16, use_gpu=False)
    assert report["num_genuine"] == len(gen) and report["num_impostor"] == len(imp)
    for far in fars:
        assert report["tar_at_far"][far_key(far)] == brute_tar_at_far(gen, imp, far)
    assert report["roc_auc"] == pytest.approx(brute_roc_auc(gen, imp), abs=1e-15)
    assert report["eer"] == pytest.approx(brute_eer(gen, imp), abs=1e-15)


# ----------------------------------------------------------------------------------------------------------------
# edge cases
# ----------------------------------------------------------------------------------------------------------------


def test_no_impostors_or_no_genuine_gives_none() -> None:
    x = exact_embeddings(6, seed=0)
    same_label = streaming_verification(x, np.zeros(6, dtype=np.int64), use_gpu=False)
    assert same_label[0] == verification_metrics(*pair_scores(x, np.zeros(6, dtype=np.int64)))
    assert same_label[0]["num_impostor"] == 0 and same_label[0]["roc_auc"] is None and same_label[0]["eer"] is None
    assert all(v is None for v in same_label[0]["tar_at_far"].values())
    assert same_label[1][0].size == 0
    singletons, _ = streaming_verification(x, np.arange(6), use_gpu=False)  # every class has one sample
    assert singletons["num_genuine"] == 0 and singletons["num_impostor"] == 15 and singletons["roc_auc"] is None
    nothing, _ = streaming_verification(x[:1], np.array([0]), use_gpu=False)
    assert nothing["num_genuine"] == nothing["num_impostor"] == 0
    unknown, _ = streaming_verification(x, np.full(6, -1), use_gpu=False)
    assert unknown["num_genuine"] == unknown["num_impostor"] == 0


def test_far_below_one_impostor_is_none() -> None:
    x = exact_embeddings(40, seed=2)
    y = np.arange(40) // 10
    report, _ = streaming_verification(x, y, fars=(1e-6, 1e-3, 1.0 / 600, 1e-2), use_gpu=False)
    n_imp = report["num_impostor"]
    assert n_imp == 600
    assert report["tar_at_far"]["1e-06"] is None and report["tar_at_far"]["1e-03"] is None  # 0.6 impostors
    assert report["tar_at_far"][far_key(1.0 / 600)] is not None  # 1/600 of 600: exactly k = 1
    assert report["tar_at_far"]["1e-02"] is not None


def test_nondeterministic_backend_is_refused(monkeypatch) -> None:
    x = exact_embeddings(60, seed=4)
    y = np.arange(60) % 4
    calls = {"n": 0}
    original = pair_tiles.NumpyBackend.scores

    def drifting(self, i0, i1, j0, j1):
        calls["n"] += 1
        s = original(self, i0, i1, j0, j1)
        return s if calls["n"] == 1 else s * np.float32(0.5)  # pass 2 sees other scores

    monkeypatch.setattr(pair_tiles.NumpyBackend, "scores", drifting)
    with pytest.raises(RuntimeError, match="not deterministic"):
        streaming_verification(x, y, block=1000, use_gpu=False)


def test_bad_input() -> None:
    x = exact_embeddings(10, seed=0)
    y = np.arange(10) % 3
    with pytest.raises(InvalidInput, match="bins"):
        streaming_verification(x, y, bins=1000)
    with pytest.raises(InvalidInput, match="bins"):
        streaming_verification(x, y, bins=1 << 24)
    with pytest.raises(InvalidInput, match="block"):
        streaming_verification(x, y, block=0)
    with pytest.raises(InvalidInput, match="roc_points"):
        streaming_verification(x, y, roc_points=2)
    with pytest.raises(InvalidInput, match="duplicate"):
        streaming_verification(x, y, fars=(2e-3, 0.002))  # the same rate twice
    with pytest.raises(InvalidInput, match="FAR"):
        streaming_verification(x, y, fars=(0.0,))
    with pytest.raises(InvalidInput, match="one label per embedding"):
        streaming_verification(x, y[:-1])
    with pytest.raises(InvalidInput, match="integers"):
        streaming_verification(x, y.astype(float))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        streaming_verification(bad, y)


# ----------------------------------------------------------------------------------------------------------------
# evaluate() uses it
# ----------------------------------------------------------------------------------------------------------------


def test_evaluate_reports_streaming_verification() -> None:
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(6), 12)
    emb = (rng.normal(size=(6, 10))[labels] + rng.normal(size=(72, 10))).astype(np.float32)
    report, curves = ev.evaluate(ev.EmbeddingSet(emb, labels), use_gpu=False)
    gen, imp = tiled_pair_scores(emb, labels)
    assert report["verification"] == verification_metrics(gen, imp)
    assert set(curves) == {""} and curves[""][0][0] == 0.0 and curves[""][0][-1] == 1.0
