"""Tests for distill.evaluation.protocols.pairs: the three pairs-file formats (parsing, name resolution, errors with line numbers),
verification over given pairs, LFW's fold-threshold accuracy by hand, and the CMC curve helper."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import distill.evaluation as ev
from distill.evaluation.metrics import count_relevant, far_key, verification_metrics
from distill.evaluation.protocols.pairs import (
    best_threshold,
    detect_format,
    lfw_accuracy,
    pair_verification,
    pairs_report,
    parse_pairs,
    read_pairs,
    resolve_pairs,
    score_pairs,
)
from distill.evaluation.testing import brute_lfw_correct
from featstore.errors import InputNotFound, InvalidInput

# 2-D unit vectors with exact float32 cosines: e0 = (1, 0), e1 = (0, 1), e2 = (-1, 0), e3 = (1, 0)
X = np.array([[1, 0], [0, 1], [-1, 0], [2, 0]], dtype=np.float32)

LFW_TEXT = """2\t3
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Akhmed_Zakayev\t2\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Abdul_Majeed_Shobokshi\t1\tCharles_Cope\t1
Amber_Tamblyn\t1\t2
Anders_Fogh_Rasmussen\t1\t3
Anders_Fogh_Rasmussen\t1\t4
Abdel_Madi_Shabneh\t1\tAkhmed_Zakayev\t2
Abel_Pacheco\t4\tDean_Barker\t1
Charles_Cope\t1\tAmber_Tamblyn\t2
"""


def lfw_names() -> list[str]:
    return sorted(
        {
            "Abel_Pacheco_0001",
            "Abel_Pacheco_0004",
            "Akhmed_Zakayev_0001",
            "Akhmed_Zakayev_0002",
            "Akhmed_Zakayev_0003",
            "Abdel_Madi_Shabneh_0001",
            "Dean_Barker_0001",
            "Giancarlo_Fisichella_0001",
            "Abdul_Majeed_Shobokshi_0001",
            "Charles_Cope_0001",
            "Amber_Tamblyn_0001",
            "Amber_Tamblyn_0002",
            "Anders_Fogh_Rasmussen_0001",
            "Anders_Fogh_Rasmussen_0003",
            "Anders_Fogh_Rasmussen_0004",
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------------


def test_index_format_with_comments_and_blank_lines() -> None:
    parsed = parse_pairs("# i j same\n0 1 0\n\n  0 3 1  \n1\t2 0\n", path="p.txt")
    assert parsed.format == "index"
    assert parsed.first == [0, 0, 1] and parsed.second == [1, 3, 2]
    assert parsed.same.tolist() == [False, True, False]
    assert parsed.lines.tolist() == [2, 4, 5]
    pairs = resolve_pairs(parsed, num_samples=4)
    assert pairs.a.tolist() == [0, 0, 1] and pairs.b.tolist() == [1, 3, 2] and pairs.folds is None
    assert pairs.describe() == {"file": "p.txt", "format": "index", "num_pairs": 3}


def test_names_format_resolves_names_and_file_stems() -> None:
    parsed = parse_pairs("alice_0001 alice_0002 1\nalice_0001 bob_0001 0\n")
    assert parsed.format == "names"
    pairs = resolve_pairs(parsed, 3, ["a/alice_0001.jpg", "a/alice_0002.jpg", "b/bob_0001.jpg"])
    assert pairs.a.tolist() == [0, 0] and pairs.b.tolist() == [1, 2] and pairs.same.tolist() == [True, False]


def test_lfw_format_folds_and_identities() -> None:
    parsed = parse_pairs(LFW_TEXT, path="pairs.txt")
    assert parsed.format == "lfw"
    assert parsed.folds.tolist() == [0] * 6 + [1] * 6
    assert parsed.same.tolist() == ([True] * 3 + [False] * 3) * 2
    assert parsed.first[0] == "Abel_Pacheco_0001" and parsed.second[0] == "Abel_Pacheco_0004"
    assert parsed.first[3] == "Abdel_Madi_Shabneh_0001" and parsed.second[3] == "Dean_Barker_0001"
    assert parsed.lines.tolist() == list(range(2, 14))
    names = lfw_names()
    pairs = resolve_pairs(parsed, len(names), names)
    assert [names[i] for i in pairs.b[:3]] == ["Abel_Pacheco_0004", "Akhmed_Zakayev_0003", "Akhmed_Zakayev_0003"]
    assert pairs.describe() == {"file": "pairs.txt", "format": "lfw", "num_pairs": 12, "folds": 2}
    one_fold = parse_pairs("2\nA 1 2\nB 1 2\nA 1 B 1\nA 2 B 2\n")  # View 1 style header: one number
    assert one_fold.folds.tolist() == [0, 0, 0, 0]


def test_detect_format() -> None:
    assert detect_format(["10", "300"]) == "lfw" and detect_format(["1100"]) == "lfw"
    assert detect_format(["3", "4", "1"]) == "index"
    assert detect_format(["a", "b", "1"]) == "names"
    assert detect_format(["a", "b"]) is None and detect_format(["1", "2", "3", "4"]) is None


@pytest.mark.parametrize(
    ("text", "fmt", "match"),
    [
        ("0 1 1\n0 1\n", "auto", "line 2: expected 'i j label' (3 fields), got 2"),
        ("0 1 1\n0 x 1\n", "auto", "line 2: 'x' is not an integer index"),
        ("0 1 1\n\n0 2 nan\n", "auto", "line 3: label must be 1 (same) or 0 (different), got 'nan'"),
        ("0 1 2\n", "index", "line 1: label must be"),
        ("a b c d e\n", "auto", "line 1: cannot tell the pairs format"),
        ("a b 1\nc d\n", "names", "line 2: expected 'name_a name_b label'"),
        ("# only a comment\n\n", "auto", "holds no pairs"),
        ("2 1\nA 1 2\nA 1 B 1\nA 1 2\n", "lfw", "promises 2 fold(s) × 2 × 1 = 4 pairs, found 3"),
        (
            "1 2\nA 1 2\nA 1 B 2\nA 1 B 1\nA 1 B 1\n",
            "lfw",
            "line 3: expected a matched pair 'name n1 n2' (fold 1, pair 2",
        ),
        ("1 1\nA 1 2\nA 1 B\n", "lfw", "line 3: expected a mismatched pair"),
        ("1 1\nA 0 2\nA 1 B 1\n", "lfw", "line 2: image number must be a positive integer, got '0'"),
        ("1 1\nA 1 2\nA 1 B x\n", "lfw", "line 3: image number must be a positive integer, got 'x'"),
        ("ten 300\n", "lfw", "line 1: an LFW pairs file starts with"),
        ("0 1 1\n", "csv", "pairs format must be one of"),
    ],
)
def test_malformed_files_name_the_line(text: str, fmt: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match.replace("(", r"\(").replace(")", r"\)")):
        parse_pairs(text, fmt, path="p.txt")


def test_resolution_errors_name_the_line() -> None:
    with pytest.raises(InvalidInput, match=r"p.txt line 3: index 4 out of range for 4 embeddings \(valid: 0..3\)"):
        resolve_pairs(parse_pairs("0 1 1\n# x\n0 4 0\n", path="p.txt"), 4)
    with pytest.raises(InvalidInput, match="line 1: index -1 out of range"):
        resolve_pairs(parse_pairs("-1 1 1\n"), 4)
    with pytest.raises(InvalidInput, match="line 2: pairs sample 2 with itself"):
        resolve_pairs(parse_pairs("0 1 1\n2 2 0\n"), 4)
    with pytest.raises(InvalidInput, match="line 2: unknown name 'carol_0001'"):
        resolve_pairs(parse_pairs("alice_0001 bob_0001 0\ncarol_0001 bob_0001 0\n"), 2, ["alice_0001", "bob_0001"])
    with pytest.raises(InvalidInput, match="line 1: name 'x' is ambiguous"):
        resolve_pairs(parse_pairs("x y 0\n"), 3, ["x", "x", "y"])
    with pytest.raises(InvalidInput, match="the embeddings have no names"):
        resolve_pairs(parse_pairs(LFW_TEXT), 15, None)
    with pytest.raises(InvalidInput, match="line 8: unknown name 'Amber_Tamblyn_0002'"):
        resolve_pairs(parse_pairs(LFW_TEXT), 14, [n for n in lfw_names() if n != "Amber_Tamblyn_0002"])


def test_read_pairs_file_errors(tmp_path) -> None:
    with pytest.raises(InputNotFound, match="does not exist"):
        read_pairs(tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidInput, match="not a UTF-8"):
        read_pairs(binary)
    good = tmp_path / "p.txt"
    good.write_text("0 1 1\n")
    assert read_pairs(good).path == str(good)


# ----------------------------------------------------------------------------------------------------------------
# metrics over pairs
# ----------------------------------------------------------------------------------------------------------------


def test_score_pairs_hand_computed() -> None:
    assert score_pairs(X, np.array([0, 0, 0, 1]), np.array([1, 2, 3, 3])).tolist() == [0.0, -1.0, 1.0, 0.0]
    with pytest.raises(InvalidInput, match="out of range"):
        score_pairs(X, np.array([0]), np.array([4]))


def test_pair_verification_hand_computed() -> None:
    # pairs (0,3) same: 1;  (1,3) same: 0;  (0,1) diff: 0;  (0,2) diff: -1
    pairs = np.array([[0, 3], [1, 3], [0, 1], [0, 2]])
    same = np.array([True, True, False, False])
    report, (far, tar) = pair_verification(X, pairs, same, fars=(0.1, 0.5, 1.0))
    # impostors descending 0, -1.  FAR .1: .2 < 1 -> None;  .5: k=1, t=-1, genuine > -1: 2/2;  1: t=-inf -> 1
    # AUC: g=1 beats both (2); g=0 beats -1, ties 0 (1 + 1/2); (3.5)/4.  EER: t=-inf (1,0), t=-1 (1/2, 0) <-,
    # t=0 (0, 1/2) ties |d| = 1/2 but is higher -> (1/2 + 0)/2 = 1/4
    assert report == {
        "num_genuine": 2,
        "num_impostor": 2,
        "tar_at_far": {"1e-01": None, "5e-01": 1.0, "1e+00": 1.0},
        "roc_auc": 0.875,
        "eer": 0.25,
    }
    assert far[0] == 0.0 and tar[-1] == 1.0
    assert report == verification_metrics([1.0, 0.0], [0.0, -1.0], fars=(0.1, 0.5, 1.0))
    with pytest.raises(InvalidInput, match=r"\(P, 2\)"):
        pair_verification(X, np.array([0, 1]), same)
    with pytest.raises(InvalidInput, match="booleans"):
        pair_verification(X, pairs, np.array([1, 1, 0, 0]))
    only_same, curve = pair_verification(X, pairs[:2], same[:2])
    assert only_same["num_impostor"] == 0 and only_same["roc_auc"] is None and curve[0].size == 0


def test_best_threshold_hand_computed() -> None:
    # same [.9, .8, .3], different [.5, .2, .1]; "same iff score > t":
    # t=-inf: 3 + 0;  .1: 3 + 1;  .2: 3 + 2 = 5 <- first maximum;  .3: 2 + 2;  .5: 2 + 3 = 5;  .8: 4;  .9: 3
    scores = [0.9, 0.8, 0.3, 0.5, 0.2, 0.1]
    same = [True, True, True, False, False, False]
    assert best_threshold(scores, same) == 0.2
    assert best_threshold([0.1, 0.2], [True, True]) == -math.inf  # accept everything
    assert best_threshold([0.1, 0.2], [False, False]) == 0.2  # reject everything


def test_lfw_accuracy_by_hand() -> None:
    # fold 0: same [.9, .8, .3], different [.5, .2, .1];  fold 1: same [.7, .6, .4], different [.45, .15, 0]
    # fold 0 held out: threshold from fold 1: t=-inf 3, 0 4, .15 5 <- first max, .4 4, .45 5, .6 4, .7 3 -> .15;
    #   on fold 0: same > .15: 3, different <= .15: {.1} 1 -> 4/6
    # fold 1 held out: threshold from fold 0 = .2 (test above); on fold 1: same > .2: 3, different <= .2: 2 -> 5/6
    scores = [0.9, 0.8, 0.3, 0.5, 0.2, 0.1, 0.7, 0.6, 0.4, 0.45, 0.15, 0.0]
    same = np.array(([True] * 3 + [False] * 3) * 2)
    folds = np.repeat([0, 1], 6)
    out = lfw_accuracy(scores, same, folds)
    assert out["fold_threshold"] == [0.15, 0.2]
    assert out["fold_accuracy"] == [4 / 6, 5 / 6]
    assert out["accuracy_mean"] == pytest.approx(0.75, abs=1e-15)
    assert out["accuracy_std"] == pytest.approx(math.sqrt(2) / 12, abs=1e-15)  # sample std, ddof = 1
    assert out["accuracy_sem"] == pytest.approx(math.sqrt(2) / 12 / math.sqrt(2), abs=1e-15)
    assert out["folds"] == 2
    with pytest.raises(InvalidInput, match="at least 2 folds"):
        lfw_accuracy(scores, same, np.zeros(12))
    with pytest.raises(InvalidInput, match="NaN"):
        lfw_accuracy([math.nan] + scores[1:], same, folds)
    with pytest.raises(InvalidInput, match="booleans"):
        lfw_accuracy(scores, same.astype(int), folds)


def test_pairs_report_for_lfw() -> None:
    names = lfw_names()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(names), 8)).astype(np.float32)
    pairs = resolve_pairs(parse_pairs(LFW_TEXT, path="pairs.txt"), len(names), names)
    report, _ = pairs_report(emb, pairs, fars=(0.5,))
    scores = score_pairs(emb, pairs.a, pairs.b)
    assert report["protocol"] == "pairs"
    assert report["pairs"] == {"file": "pairs.txt", "format": "lfw", "num_pairs": 12, "folds": 2}
    assert report["lfw"] == lfw_accuracy(scores, pairs.same, pairs.folds)
    assert report["num_genuine"] == report["num_impostor"] == 6
    assert (
        report["tar_at_far"]["5e-01"]
        == verification_metrics(scores[pairs.same], scores[~pairs.same], (0.5,))["tar_at_far"]["5e-01"]
    )


def test_pairs_protocol_needs_no_labels() -> None:
    """Embeddings without labels (all -1) are evaluated on a pairs file; retrieval is null, not a refusal."""
    names = lfw_names()
    emb = np.random.default_rng(0).normal(size=(len(names), 8)).astype(np.float32)
    pairs = resolve_pairs(parse_pairs(LFW_TEXT, path="pairs.txt"), len(names), names)
    unlabelled = ev.EmbeddingSet(emb, np.full(len(names), -1, np.int64))
    report, _ = ev.evaluate(unlabelled, pairs=pairs, fars=(0.5,), use_gpu=False)
    assert report["retrieval"]["num_queries"] == 0 and report["retrieval"]["map_at_r"] is None
    assert report["verification"]["lfw"] == pairs_report(emb, pairs, fars=(0.5,))[0]["lfw"]
    with pytest.raises(InvalidInput, match="at least 2 samples with known labels"):
        ev.evaluate(unlabelled, fars=(0.5,), use_gpu=False)  # without pairs there is nothing to evaluate


# ----------------------------------------------------------------------------------------------------------------
# CMC (distill.evaluation.metrics.cmc_from_neighbors, distill.evaluation.report.cmc_curve)
# ----------------------------------------------------------------------------------------------------------------


def test_cmc_by_hand_and_equals_recall() -> None:
    # queries 0, 0, 1 (R = 1, 1, 0 -> the third is excluded); first hits at rank 2 and 3
    nl = np.array([[1, 0, 2], [2, 1, 0], [0, 0, 0]])
    cmc = ev.cmc_from_neighbors(nl, np.array([0, 0, 1]), np.array([1, 1, 0]), 3)
    assert cmc.tolist() == [0.0, 0.5, 1.0]
    assert ev.cmc_from_neighbors(nl, np.array([0, 0, 1]), np.zeros(3, dtype=int), 3).size == 0
    with pytest.raises(InvalidInput, match="rank 4"):
        ev.cmc_from_neighbors(nl, np.array([0, 0, 1]), np.array([1, 1, 0]), 4)

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(8), 6)
    labels[:2] = [50, -1]
    emb = (rng.normal(size=(51, 6))[np.clip(labels, 0, 50)] + rng.normal(size=(48, 6))).astype(np.float32)
    queries = ev.EmbeddingSet(emb, labels)
    curve = ev.cmc_curve(queries, max_rank=50)
    assert curve.size == 46  # min(50, 47 known samples - 1)
    recall = ev.retrieval_report(queries, use_gpu=False)["recall_at_k"]
    for k, value in recall.items():
        assert curve[int(k) - 1] == pytest.approx(value, abs=1e-12)
    assert np.all(np.diff(curve) >= 0) and curve[-1] <= 1.0
    known = labels != -1
    assert count_relevant(labels[known], labels[known], leave_one_out=True).min() == 0  # the singleton


# ----------------------------------------------------------------------------------------------------------------
# independent brute force (python loops) on random data with ties
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lfw_accuracy_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_folds, per = 4, 15
    scores = np.round(rng.normal(0.3, 0.3, size=n_folds * 2 * per) * 10) / 10  # 0.1 steps: many ties
    same = np.tile(np.repeat([True, False], per), n_folds)
    scores[same] += 0.2
    folds = np.repeat(np.arange(n_folds), 2 * per)
    out = lfw_accuracy(scores, same, folds)
    expected_acc, expected_t = [], []
    for f in range(n_folds):
        train = [(float(s), bool(y)) for s, y, g in zip(scores, same, folds) if g != f]
        test = [(float(s), bool(y)) for s, y, g in zip(scores, same, folds) if g == f]
        best_t, best_correct = None, -1
        for t in [-math.inf] + sorted({s for s, _ in train}):  # ascending: the first maximum is the lowest t
            correct = brute_lfw_correct([s for s, _ in train], [y for _, y in train], t)
            if correct > best_correct:
                best_t, best_correct = t, correct
        expected_t.append(None if math.isinf(best_t) else best_t)
        expected_acc.append(brute_lfw_correct([s for s, _ in test], [y for _, y in test], best_t) / len(test))
    assert out["fold_threshold"] == expected_t
    assert out["fold_accuracy"] == expected_acc
    mean = sum(expected_acc) / n_folds
    std = math.sqrt(sum((a - mean) ** 2 for a in expected_acc) / (n_folds - 1))
    assert out["accuracy_mean"] == pytest.approx(mean, abs=1e-15)
    assert out["accuracy_std"] == pytest.approx(std, abs=1e-15)


def test_cmc_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    nq, k = 40, 12
    q = rng.integers(0, 4, size=nq)
    q[:3] = -1
    nl = rng.integers(-1, 4, size=(nq, k))
    r = rng.integers(0, 3, size=nq)
    cmc = ev.cmc_from_neighbors(nl, q, r, k)
    kept = [i for i in range(nq) if r[i] > 0 and q[i] != -1]
    for rank in range(1, k + 1):
        hits = sum(1 for i in kept if any(nl[i, j] == q[i] for j in range(rank)))
        assert cmc[rank - 1] == pytest.approx(hits / len(kept), abs=1e-15)


def test_pair_verification_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    # rows with four entries ±1 (normalised: ±0.5) or all zero: every cosine is an exact multiple of 1/4 -> ties
    x = np.zeros((30, 8), dtype=np.float32)
    for row in x[1:]:
        row[rng.choice(8, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    pairs = rng.integers(0, 30, size=(300, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    same = rng.random(pairs.shape[0]) < 0.4
    fars = (0.01, 0.1, 0.5)
    report, _ = pair_verification(x, pairs, same, fars=fars)
    rows = [[float(v) for v in row] for row in x]
    norms = [math.sqrt(sum(v * v for v in row)) for row in rows]
    scores = [
        sum(a * b for a, b in zip(rows[i], rows[j])) / (norms[i] * norms[j]) if norms[i] and norms[j] else 0.0
        for i, j in pairs
    ]
    gen = [s for s, y in zip(scores, same) if y]
    imp = [s for s, y in zip(scores, same) if not y]
    assert (report["num_genuine"], report["num_impostor"]) == (len(gen), len(imp))
    twice = sum(2 * (i < g) + (i == g) for g in gen for i in imp)
    assert report["roc_auc"] == twice / (2 * len(gen) * len(imp))
    desc = sorted(imp, reverse=True)
    for far in fars:
        k = int(Fraction(repr(far)) * len(imp))
        expected = None if k < 1 else sum(1 for g in gen if g > desc[k]) / len(gen)
        assert report["tar_at_far"][far_key(far)] == expected
