"""`fsd eval --gallery-model`: cross-model retrieval against another checkpoint's embeddings of the same
split; a model against itself is perfect leave-one-out-compatible retrieval."""

from __future__ import annotations

import json


def test_gallery_model_reports_cross_model_retrieval(h, work):
    out = work.dir / "x.json"
    h.run_ok(
        "eval", "--faiss", "--model", work.student, "--dataset", "digits", "--gallery-model", work.teacher, "--out", out
    )
    cross = json.loads(out.read_text())["cross_model"]
    assert set(cross["recall_at_k"]) == {"1", "2", "4", "8"} and cross["gallery"]["kind"] == "teacher"
    # against itself (same split, so each query's own counterpart is excluded) it equals leave-one-out
    self_out = work.dir / "self.json"
    h.run_ok(
        "eval",
        "--faiss",
        "--model",
        work.teacher,
        "--dataset",
        "digits",
        "--gallery-model",
        work.teacher,
        "--out",
        self_out,
    )
    report = json.loads(self_out.read_text())
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert abs(report["cross_model"][key] - report["retrieval"][key]) < 1e-9


def test_gallery_model_usage_errors(h, work):
    before = work.snapshot()
    result = h.invoke(
        "eval",
        "--faiss",
        "--model",
        work.student,
        "--dataset",
        "digits",
        "--gallery-model",
        work.teacher,
        "--gallery-store",
        work.store,
    )
    h.assert_refused(result, before, work.dir, match="at most one")
    result = h.invoke("eval", "--faiss", "--store", work.store, "--gallery-model", work.teacher)
    h.assert_refused(result, before, work.dir, match="needs --dataset")
