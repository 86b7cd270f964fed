"""Tests for distill.evaluation.metrics: hand-computed cases, an independent brute-force reference, and a cross-check of the
retrieval metrics against pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distill.evaluation.metrics import (
    FARS,
    UNKNOWN_LABEL,
    count_relevant,
    equal_error_rate,
    far_key,
    known_mask,
    retrieval_metrics,
    roc_auc,
    roc_curve,
    tar_at_far,
    top1_accuracy,
    verification_metrics,
)
from distill.evaluation.search import knn_search, l2_normalize, labels_at
from distill.evaluation.testing import brute_eer, brute_retrieval, brute_roc_auc, brute_tar_at_far
from featstore.errors import InvalidInput

PAD = UNKNOWN_LABEL


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------


def test_far_keys() -> None:
    assert [far_key(f) for f in FARS] == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    # lossless: a key always reads back as the rate computed (0.0015 was reported as "2e-03")
    assert far_key(0.0015) == "1.5e-03" and far_key(0.25) == "2.5e-01" and far_key(0.2) == "2e-01"
    for far in (0.0015, 0.25, 1 / 3, 2.5e-7, 0.123456789):
        assert float(far_key(far)) == far


def test_count_relevant_leave_one_out_and_gallery_mode() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, -1, -1])
    # class 0 has 3 members -> R = 2; class 1 -> 1; class 2 (singleton) -> 0; unknown -> 0
    assert count_relevant(labels, labels, leave_one_out=True).tolist() == [2, 2, 2, 1, 1, 0, 0, 0]
    gallery = np.array([0, 0, 1, -1, -1, 7])
    queries = np.array([0, 1, 2, -1, 7])
    assert count_relevant(queries, gallery, leave_one_out=False).tolist() == [2, 1, 0, 0, 1]
    assert count_relevant(np.array([3]), np.array([], dtype=np.int64), leave_one_out=False).tolist() == [0]
    with pytest.raises(InvalidInput, match="leave_one_out"):
        count_relevant(queries, gallery, leave_one_out=True)
    with pytest.raises(InvalidInput, match="integers"):
        count_relevant(np.array([0.5]), np.array([0.5]), leave_one_out=True)


def test_known_mask() -> None:
    assert known_mask([3, -1, 0, -2]).tolist() == [True, False, True, True]


# ----------------------------------------------------------------------------------------------------------------
# retrieval: hand-computed
# ----------------------------------------------------------------------------------------------------------------


def test_retrieval_hand_computed_leave_one_out() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])  # sample 5 is the only member of class 2
    # neighbours of each query (the query itself excluded), best first; padded to K=8 with the sentinel
    order = [
        [3, 1, 5, 2, 4],  # q0 labels [1,0,2,0,1] rel [0,1,0,1,0]
        [0, 2, 3, 4, 5],  # q1 labels [0,0,1,1,2] rel [1,1,0,0,0]
        [5, 3, 4, 1, 0],  # q2 labels [2,1,1,0,0] rel [0,0,0,1,1]
        [0, 4, 1, 2, 5],  # q3 labels [0,1,0,0,2] rel [0,1,0,0,0]
        [3, 0, 1, 2, 5],  # q4 labels [1,0,0,0,2] rel [1,0,0,0,0]
        [0, 1, 2, 3, 4],  # q5: R = 0 -> excluded from everything
    ]
    nl = np.full((6, 8), PAD)
    nl[:, :5] = labels[np.array(order)]
    r = count_relevant(labels, labels, leave_one_out=True)
    assert r.tolist() == [2, 2, 2, 1, 1, 0]
    m = retrieval_metrics(nl, labels, r)
    # per query (R; recall@1,@2,@4,@8; R-precision; MAP@R = (1/R) sum_{i<=R} P(i) rel(i)):
    # q0 (R=2): 0,1,1,1; RP 1/2; MAP (1/2)(P(2)=1/2) = 1/4
    # q1 (R=2): 1,1,1,1; RP 2/2; MAP (1/2)(1/1 + 2/2) = 1
    # q2 (R=2): 0,0,1,1; RP 0;   MAP 0 (its hits are at ranks 4,5 > R)
    # q3 (R=1): 0,1,1,1; RP 0;   MAP 0
    # q4 (R=1): 1,1,1,1; RP 1;   MAP 1
    assert m["num_queries"] == 5
    assert m["recall_at_k"] == {"1": 2 / 5, "2": 4 / 5, "4": 1.0, "8": 1.0}
    assert m["precision_at_1"] == 2 / 5
    assert m["r_precision"] == pytest.approx((0.5 + 1 + 0 + 0 + 1) / 5, abs=1e-15)
    assert m["map_at_r"] == pytest.approx((0.25 + 1 + 0 + 0 + 1) / 5, abs=1e-15)
    json.dumps(m, allow_nan=False)
    assert all(type(v) is float for v in m["recall_at_k"].values())


def test_retrieval_hand_computed_gallery_mode_map_at_r() -> None:
    # One query of label 7 against a separate gallery with R = 3 items of label 7.
    # rel = [1,0,1,1]: R-precision = 2/3 (two hits in the top 3);
    # MAP@R = (1/3) * (P(1)*1 + P(2)*0 + P(3)*1) = (1/3) * (1 + 2/3) = 5/9
    gallery = np.array([7, 1, 7, 7, 2])
    q = np.array([7])
    r = count_relevant(q, gallery, leave_one_out=False)
    assert r.tolist() == [3]
    nl = np.array([[7, 1, 7, 7, 2, PAD, PAD, PAD]])
    m = retrieval_metrics(nl, q, r)
    assert m["r_precision"] == pytest.approx(2 / 3, abs=1e-15)
    assert m["map_at_r"] == pytest.approx(5 / 9, abs=1e-15)
    assert m["precision_at_1"] == 1.0
    assert m["recall_at_k"]["1"] == 1.0


def test_retrieval_sentinel_never_matches_and_unknown_queries_excluded() -> None:
    q = np.array([4, -1])
    nl = np.array([[PAD, 4], [PAD, PAD]])
    m = retrieval_metrics(nl, q, np.array([1, 5]), ks=(1, 2))  # the -1 query is excluded whatever R says
    assert m["num_queries"] == 1
    assert m["recall_at_k"] == {"1": 0.0, "2": 1.0}
    assert m["r_precision"] == 0.0 and m["map_at_r"] == 0.0


def test_retrieval_no_valid_query_gives_none() -> None:
    m = retrieval_metrics(np.full((2, 8), PAD), np.array([1, 2]), np.array([0, 0]))
    assert m["num_queries"] == 0
    assert m["precision_at_1"] is None and m["map_at_r"] is None and m["recall_at_k"]["1"] is None
    json.dumps(m, allow_nan=False)


def test_retrieval_rejects_too_short_lists_and_bad_input() -> None:
    q = np.array([0, 0, 0, 0, 0, 0])  # R = 5 for each under leave-one-out
    r = count_relevant(q, q, leave_one_out=True)
    with pytest.raises(InvalidInput, match="K >= "):
        retrieval_metrics(np.zeros((6, 4), dtype=np.int64), q, r, ks=(1, 2))  # K=4 < max R=5
    with pytest.raises(InvalidInput, match="K >= "):
        retrieval_metrics(np.zeros((6, 5), dtype=np.int64), q, r)  # K=5 < max k=8
    with pytest.raises(InvalidInput, match="2-D"):
        retrieval_metrics(np.zeros(6, dtype=np.int64), q, r)
    with pytest.raises(InvalidInput, match="same queries"):
        retrieval_metrics(np.zeros((5, 8), dtype=np.int64), q, r)
    with pytest.raises(InvalidInput, match="positive"):
        retrieval_metrics(np.zeros((6, 8), dtype=np.int64), q, r, ks=(0, 1))
    with pytest.raises(InvalidInput, match="integers"):
        retrieval_metrics(np.zeros((6, 8)), q, r)
    with pytest.raises(InvalidInput, match=">= 0"):
        retrieval_metrics(np.zeros((6, 8), dtype=np.int64), q, -r)
    # a list with more same-label items than R can only mean the query retrieved itself
    with pytest.raises(InvalidInput, match="exclude_self"):
        retrieval_metrics(np.zeros((6, 8), dtype=np.int64), q, r)


def test_retrieval_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n, dim = 240, 12
    labels = rng.integers(0, 40, size=n)
    labels[:3] = [100, 101, 102]  # guaranteed singleton classes -> excluded queries
    x = rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T  # float64, continuous: no ties
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]  # every other sample, best first
    order_labels = labels[order]
    rs = [int(np.sum(labels == labels[i])) - 1 for i in range(n)]
    expected = brute_retrieval(order_labels.tolist(), labels.tolist(), rs)

    r = count_relevant(labels, labels, leave_one_out=True)
    assert r.tolist() == rs
    k_needed = max(8, max(rs))
    got = retrieval_metrics(order_labels[:, :k_needed], labels, r)
    assert got["num_queries"] == expected["num_queries"] == sum(1 for v in rs if v > 0) <= n - 3
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
    for k in ("1", "2", "4", "8"):
        assert got["recall_at_k"][k] == pytest.approx(expected["recall_at_k"][k], abs=1e-12)
    # more columns than needed change nothing
    assert retrieval_metrics(order_labels, labels, r) == got


def test_retrieval_matches_pytorch_metric_learning() -> None:
    torch = pytest.importorskip("torch")
    ac_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 15, size=25)
    sizes[:2] = 1  # singletons: PML calls them "lone" queries and skips them, as we do
    labels = np.repeat(np.arange(sizes.size), sizes)
    centers = rng.normal(size=(sizes.size, 32))
    x = (centers[labels] + 0.9 * rng.normal(size=(labels.size, 32))).astype(np.float32)
    x = l2_normalize(x)

    r = count_relevant(labels, labels, leave_one_out=True)
    k = max(8, int(r.max()))
    _, idx = knn_search(x, x, k, exclude_self=True, use_gpu=False)
    ours = retrieval_metrics(labels_at(idx, labels), labels, r)

    calc = ac_mod.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        device=torch.device("cpu"),
    )
    pml = calc.get_accuracy(x, labels, x, labels, ref_includes_query=True)
    assert ours["num_queries"] == int(np.sum(sizes[sizes > 1]))
    assert ours["precision_at_1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# verification: hand-computed
# ----------------------------------------------------------------------------------------------------------------

GEN = [0.9, 0.5, 0.5]
IMP = [0.5, 0.5, 0.3, 0.1]  # descending s1..s4 = 0.5, 0.5, 0.3, 0.1


def test_tar_at_far_hand_computed_with_ties() -> None:
    # FAR 0.25: k = floor(0.25*4) = 1, t = s2 = 0.5, genuine > 0.5: {0.9} -> 1/3 (the tied 0.5s are rejected)
    assert tar_at_far(GEN, IMP, 0.25) == 1 / 3
    # FAR 0.5: k = 2, t = s3 = 0.3, all three genuine > 0.3 -> 1
    assert tar_at_far(GEN, IMP, 0.5) == 1.0
    # FAR 0.75: k = 3, t = s4 = 0.1 -> 1
    assert tar_at_far(GEN, IMP, 0.75) == 1.0
    # FAR 1: k = 4 = N_imp, t = -inf -> 1
    assert tar_at_far(GEN, IMP, 1.0) == 1.0
    # FAR 0.2: 0.2*4 = 0.8 < 1 -> None (no threshold certifies it)
    assert tar_at_far(GEN, IMP, 0.2) is None
    assert tar_at_far(GEN, [], 0.5) is None


def test_far_is_read_as_its_decimal() -> None:
    # In floats 0.29 * 100 = 28.999999999999996, whose floor is 28; the FAR "0.29" means k = 29 of 100.
    imp = list(np.linspace(1.0, 0.0, 100))
    gen = [float(v) for v in imp]
    k = 29
    t = sorted(imp, reverse=True)[k]
    assert tar_at_far(gen, imp, 0.29) == sum(1 for g in gen if g > t) / len(gen)


def test_roc_auc_hand_computed_with_ties() -> None:
    # 12 genuine/impostor pairs. 0.9 beats all 4 -> 4. Each 0.5 beats {0.3, 0.1} and ties {0.5, 0.5}:
    # 2 + 2 * 1/2 = 3. AUC = (4 + 3 + 3) / 12 = 5/6
    assert roc_auc(GEN, IMP) == pytest.approx(5 / 6, abs=1e-15)
    assert roc_auc([1.0], [1.0]) == 0.5
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0


def test_eer_hand_computed() -> None:
    # accept iff score > t.  t:    FAR=#imp>t/4  FRR=#gen<=t/3  |FAR-FRR|
    #                        -inf   1             0              1
    #                        0.1    3/4           0              3/4
    #                        0.3    2/4           0              1/2   <- minimal
    #                        0.5    0             2/3            2/3
    #                        0.9    0             1              1
    # EER = (1/2 + 0) / 2 = 1/4
    assert equal_error_rate(GEN, IMP) == 0.25
    assert equal_error_rate([1.0, 2.0], [-1.0, 0.0]) == 0.0  # separable: FAR = FRR = 0 at t = 0
    # inverted scores: t=-inf (FAR 1, FRR 0), t=0 (1, 1) <- |diff| 0, t=1 (0, 1) -> EER = (1 + 1) / 2 = 1
    assert equal_error_rate([0.0], [1.0]) == 1.0


def test_roc_curve_hand_computed() -> None:
    # thresholds descending 0.9, 0.5, 0.3, 0.1, -inf -> (FAR, TAR) = (0,0), (0,1/3), (1/2,1), (3/4,1), (1,1)
    far, tar = roc_curve(GEN, IMP)
    assert far.tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]
    assert tar.tolist() == pytest.approx([0.0, 1 / 3, 1.0, 1.0, 1.0], abs=1e-15)


def test_roc_curve_downsampled_keeps_ends_and_is_monotone() -> None:
    rng = np.random.default_rng(2)
    gen = rng.normal(1.0, 1.0, size=3000)
    imp = rng.normal(-1.0, 1.0, size=5000)
    full_far, full_tar = roc_curve(gen, imp, max_points=10**9)
    far, tar = roc_curve(gen, imp, max_points=50)
    assert full_far.size > 1000
    assert far.size <= 50
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    tar_at_zero = full_tar[full_far == 0].max()
    assert tar_at_zero > 0
    assert tar[far == 0].max() == tar_at_zero
    # every kept point lies on the exact curve
    exact = set(zip(full_far.tolist(), full_tar.tolist()))
    assert all(p in exact for p in zip(far.tolist(), tar.tolist()))
    with pytest.raises(InvalidInput, match="max_points"):
        roc_curve(gen, imp, max_points=2)


def test_verification_metrics_report() -> None:
    m = verification_metrics(GEN, IMP, fars=(0.1, 0.25, 0.5))
    assert m == {
        "num_genuine": 3,
        "num_impostor": 4,
        "tar_at_far": {"1e-01": None, "2.5e-01": 1 / 3, "5e-01": 1.0},
        "roc_auc": pytest.approx(5 / 6, abs=1e-15),
        "eer": 0.25,
    }
    default = verification_metrics(GEN, IMP)
    assert list(default["tar_at_far"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert all(v is None for v in default["tar_at_far"].values())  # every default FAR * 4 < 1
    json.dumps(default, allow_nan=False)
    assert type(m["num_genuine"]) is int and type(m["roc_auc"]) is float and type(m["eer"]) is float


def test_verification_metrics_without_genuine_pairs_is_all_none() -> None:
    m = verification_metrics(np.array([], dtype=np.float32), np.array([0.1, 0.2], dtype=np.float32))
    assert m["num_genuine"] == 0 and m["num_impostor"] == 2
    assert m["roc_auc"] is None and m["eer"] is None
    assert all(v is None for v in m["tar_at_far"].values())


def test_verification_input_checks() -> None:
    for bad in (0.0, -0.1, 1.5, math.nan, True, "0.1"):
        with pytest.raises(InvalidInput, match="FAR"):
            tar_at_far(GEN, IMP, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="NaN"):
        roc_auc([0.5, math.nan], IMP)
    with pytest.raises(InvalidInput, match="1-D"):
        equal_error_rate(np.zeros((2, 2)), IMP)
    with pytest.raises(InvalidInput, match="empty"):
        roc_auc([], IMP)
    with pytest.raises(InvalidInput, match="empty"):
        equal_error_rate(GEN, [])
    with pytest.raises(InvalidInput, match="empty"):
        tar_at_far([], IMP, 0.5)
    with pytest.raises(InvalidInput, match="duplicate"):
        verification_metrics(GEN, IMP, fars=(2e-3, 0.002))  # the same rate twice


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verification_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_gen = int(rng.integers(50, 400))
    n_imp = [1000, 2000, 3333][seed]  # 1000: FAR 1e-3 sits exactly on k = 1
    # quantised to 0.05 steps in float32 -> many ties within and across the two sets
    gen = (np.round(rng.normal(0.5, 0.2, size=n_gen) * 20) / 20).astype(np.float32)
    imp = (np.round(rng.normal(0.1, 0.2, size=n_imp) * 20) / 20).astype(np.float32)
    fars = (*FARS, 0.3, 0.5, 1.0)
    m = verification_metrics(gen, imp, fars=fars)
    gl, il = gen.tolist(), imp.tolist()
    for far in fars:
        expected = brute_tar_at_far(gl, il, far)
        assert m["tar_at_far"][far_key(far)] == expected  # exactly
        assert tar_at_far(gen, imp, far) == expected
    assert m["roc_auc"] == pytest.approx(brute_roc_auc(gen.astype(np.float64), imp.astype(np.float64)), abs=1e-12)
    assert m["eer"] == pytest.approx(brute_eer(gl, il), abs=1e-12)
    assert roc_auc(gen, imp) == m["roc_auc"] and equal_error_rate(gen, imp) == m["eer"]


def test_verification_matches_brute_force_continuous() -> None:
    rng = np.random.default_rng(7)
    gen = rng.normal(0.6, 0.2, size=300)
    imp = rng.normal(0.0, 0.3, size=4000)
    assert roc_auc(gen, imp) == pytest.approx(brute_roc_auc(gen, imp), abs=1e-12)
    assert equal_error_rate(gen, imp) == pytest.approx(brute_eer(gen.tolist(), imp.tolist()), abs=1e-12)
    for far in (1e-3, 1e-2, 0.1):
        assert tar_at_far(gen, imp, far) == brute_tar_at_far(gen.tolist(), imp.tolist(), far)


# ----------------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------------


def test_top1_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])  # argmax: 1, 0, 0 (first on tie), 1
    labels = np.array([1, 1, 0, -1])  # last one unknown -> dropped; hits: yes, no, yes -> 2/3
    assert top1_accuracy(logits, labels) == pytest.approx(2 / 3, abs=1e-15)
    assert top1_accuracy(np.array([3, 2, 1]), np.array([3, 2, 0])) == pytest.approx(2 / 3, abs=1e-15)
    torch = pytest.importorskip("torch")
    assert top1_accuracy(torch.tensor(logits, requires_grad=True), torch.tensor(labels)) == pytest.approx(2 / 3)
    with pytest.raises(InvalidInput, match="labels"):
        top1_accuracy(logits, labels[:3])
    with pytest.raises(InvalidInput, match="finite"):
        top1_accuracy(np.array([[math.nan, 1.0]]), np.array([0]))
    with pytest.raises(InvalidInput, match="known label"):
        top1_accuracy(np.array([1]), np.array([-1]))
    with pytest.raises(InvalidInput, match="shape"):
        top1_accuracy(np.zeros((1, 2, 3)), np.array([0]))
