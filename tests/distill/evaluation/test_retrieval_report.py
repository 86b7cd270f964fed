"""retrieval_report always reports Recall@{1,2,4,8} (docs/evaluation.md), even with fewer than 8 other samples."""

from __future__ import annotations

import numpy as np

from distill.evaluation.report import retrieval_report
from distill.evaluation.sources import EmbeddingSet


def test_small_sets_keep_every_recall_key() -> None:
    # 0 and 1 share a label; 2 is alone (no relevant item: not a query). Sample 0's nearest other is 2.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], dtype=np.float32)
    report = retrieval_report(EmbeddingSet(x, np.array([0, 0, 1])), use_gpu=False)
    assert set(report["recall_at_k"]) == {"1", "2", "4", "8"}
    # queries 0 and 1: each finds the other only at rank 2 (sample 2 is nearer to both)
    assert report["recall_at_k"] == {"1": 0.0, "2": 1.0, "4": 1.0, "8": 1.0}  # k > 2 others: all of them
    assert report["num_queries"] == 2 and report["precision_at_1"] == 0.0
