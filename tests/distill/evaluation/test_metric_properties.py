"""Property tests (hypothesis) for the metrics: invariances, bounds and monotonicity that must hold for
any input, not just the hand-computed cases."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.evaluation import metrics
from distill.evaluation.report import retrieval_report
from distill.evaluation.sources import EmbeddingSet
from distill.evaluation.testing import pair_scores

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def labelled_embeddings(draw):
    n = draw(st.integers(6, 40))
    d = draw(st.integers(2, 8))
    classes = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[:classes] = np.arange(classes)  # every class present
    embeddings = rng.normal(size=(n, d)) + 2 * np.eye(classes, d)[labels % d]
    return embeddings.astype(np.float32), labels.astype(np.int64), rng


def _verification(embeddings, labels):
    return metrics.verification_metrics(*pair_scores(embeddings, labels))


@SETTINGS
@given(labelled_embeddings(), st.floats(0.01, 100.0))
def test_verification_invariant_to_permutation_and_positive_scaling(data, scale):
    embeddings, labels, rng = data
    order = rng.permutation(len(labels))
    base = _verification(embeddings, labels)
    assert _verification(embeddings[order], labels[order]) == base
    scaled = _verification(embeddings * np.float32(scale), labels)
    assert scaled["num_genuine"] == base["num_genuine"] and scaled["num_impostor"] == base["num_impostor"]
    # scaling changes float32 rounding of the normalised rows by at most an ulp; AUC must agree closely
    assert abs(scaled["roc_auc"] - base["roc_auc"]) < 1e-3


@SETTINGS
@given(labelled_embeddings())
def test_verification_bounds_and_tar_monotone_in_far(data):
    embeddings, labels, _ = data
    genuine, impostor = pair_scores(embeddings, labels)
    fars = sorted({1e-6, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9})
    tars = [metrics.tar_at_far(genuine, impostor, f) for f in fars]
    defined = [t for t in tars if t is not None]
    assert all(0.0 <= t <= 1.0 for t in defined)
    assert defined == sorted(defined)  # more false accepts allowed → never fewer true accepts
    for far, tar in zip(fars, tars):
        assert (tar is None) == (far * len(impostor) < 1)
    report = metrics.verification_metrics(genuine, impostor)
    assert 0.0 <= report["roc_auc"] <= 1.0 and 0.0 <= report["eer"] <= 1.0


@SETTINGS
@given(labelled_embeddings(), st.floats(0.01, 100.0))
def test_retrieval_invariant_to_permutation_and_scaling_and_bounded(data, scale):
    embeddings, labels, rng = data
    base = retrieval_report(EmbeddingSet(embeddings, labels))
    order = rng.permutation(len(labels))
    permuted = retrieval_report(EmbeddingSet(embeddings[order], labels[order]))
    scaled = retrieval_report(EmbeddingSet(embeddings * np.float32(scale), labels))
    for other in (permuted, scaled):
        for key in ("precision_at_1", "r_precision", "map_at_r"):
            if base[key] is not None:
                assert abs(other[key] - base[key]) < 1e-6
    recalls = [base["recall_at_k"][k] for k in sorted(base["recall_at_k"], key=int)]
    assert recalls == sorted(recalls) and all(0 <= r <= 1 for r in recalls)  # R@k grows with k
    assert base["map_at_r"] <= base["r_precision"] + 1e-12  # P(i) ≤ 1 for every rank i ≤ R
