"""Tests for the approximate indexes of distill.evaluation.search (IVF, HNSW): exact search stays the default and exact,
the approximate ones reach a high recall on random data with generous parameters, the recall measures by hand
and against a brute force, padding/self-exclusion/batching, the GPU fallback, and `--index` through
retrieval_report, evaluate and `fsd eval`."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import distill.evaluation as ev
import distill.evaluation.search as knn
from cli.main import cli
from distill.evaluation.search import (
    PAD_INDEX,
    approximate_recall,
    knn_search,
    recall_vs_exact,
    resolve_index_params,
    topk_recall,
)
from distill.evaluation.testing import brute_topk, brute_topk_recall
from featstore.errors import InvalidInput


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """HNSW inserts in parallel, so two builds of one gallery with several OpenMP threads may differ slightly;
    tests that compare two builds need them identical."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="module")
def big() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(5000, 32)).astype(np.float32), rng.normal(size=(300, 32)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# exact stays the default
# ----------------------------------------------------------------------------------------------------------------


def test_exact_is_the_default_everywhere() -> None:
    assert inspect.signature(knn_search).parameters["index"].default == "exact"
    assert inspect.signature(ev.retrieval_report).parameters["index"].default == "exact"
    assert inspect.signature(ev.evaluate).parameters["index"].default == "exact"


def test_default_search_is_exact_and_unchanged(big) -> None:
    g, q = big
    default = knn_search(q, g, 10, use_gpu=False)
    explicit = knn_search(q, g, 10, use_gpu=False, index="exact")
    np.testing.assert_array_equal(default[0], explicit[0])
    np.testing.assert_array_equal(default[1], explicit[1])
    np.testing.assert_array_equal(default[1], brute_topk(q, g, 10))
    assert approximate_recall(q, g, 10, "exact", use_gpu=False) == 1.0


def test_retrieval_report_without_index_has_no_index_section() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 20)
    emb = (rng.normal(size=(10, 16))[labels] + rng.normal(size=(200, 16))).astype(np.float32)
    report = ev.retrieval_report(ev.EmbeddingSet(emb, labels), use_gpu=False)
    assert "index" not in report


# ----------------------------------------------------------------------------------------------------------------
# approximate indexes: recall
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index, options", [("ivf", {"nprobe": 64}), ("hnsw", {"ef_search": 256})])
def test_approximate_recall_is_high_with_generous_parameters(big, index, options) -> None:
    g, q = big
    scores, ids = knn_search(q, g, 10, use_gpu=False, index=index, **options)
    exact = brute_topk(q, g, 10)
    recall = approximate_recall(q, g, 10, index, use_gpu=False, **options)
    assert recall > 0.9
    assert recall == pytest.approx(brute_topk_recall(exact, ids))  # same index, same parameters: deterministic
    assert ids.shape == (300, 10) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # sorted by descending score
    # the scores are true cosines of the returned items
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", qn, gn[ids]), atol=1e-5)


@pytest.mark.parametrize("index, options", [("ivf", {"nprobe": 64}), ("hnsw", {})])
def test_approximate_leave_one_out_never_returns_self(big, index, options) -> None:
    g, _ = big
    x = g[:2000]
    _, ids = knn_search(x, x, 8, exclude_self=True, use_gpu=False, index=index, **options)
    assert ids.shape == (2000, 8)
    assert not np.any(ids == np.arange(2000)[:, None])
    assert brute_topk_recall(brute_topk(x, x, 8, exclude_self=True), ids) > 0.9


def test_ivf_with_one_probe_pads_what_it_cannot_find() -> None:
    rng = np.random.default_rng(2)
    g = rng.normal(size=(400, 8)).astype(np.float32)
    scores, ids = knn_search(g[:20], g, 400, use_gpu=False, index="ivf", nlist=8, nprobe=1)
    missing = ids == PAD_INDEX
    assert missing.any() and not missing.all()
    assert np.all(np.isneginf(scores[missing])) and np.all(np.isfinite(scores[~missing]))
    for row in ids:  # real ids first, then padding; no id twice
        real = row[row >= 0]
        assert np.all(row[: real.size] >= 0) and len(set(real.tolist())) == real.size


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_search_is_batched_identically(big, index) -> None:
    g, q = big
    whole = knn_search(q, g, 5, use_gpu=False, index=index)
    batched = knn_search(q, g, 5, use_gpu=False, index=index, query_batch=7)
    np.testing.assert_array_equal(whole[1], batched[1])
    np.testing.assert_array_equal(whole[0], batched[0])


def test_ivf_gpu_failure_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch, big) -> None:
    g, q = big
    cpu = knn_search(q, g, 4, use_gpu=False, index="ivf")

    def no_gpu(index: object) -> object:
        raise RuntimeError("out of GPU memory")

    monkeypatch.setattr(knn, "faiss_gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_gpu, raising=False)
    with pytest.warns(RuntimeWarning, match="out of GPU memory"):
        got = knn_search(q, g, 4, index="ivf")
    np.testing.assert_array_equal(cpu[1], got[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # HNSW never tries the GPU
        knn_search(q, g, 4, index="hnsw")


# ----------------------------------------------------------------------------------------------------------------
# recall measures
# ----------------------------------------------------------------------------------------------------------------


def test_topk_recall_by_hand() -> None:
    exact = np.array([[1, 2, 3], [4, 5, -1]])
    approx = np.array([[3, 9, 1], [5, 4, 7]])
    # row 0 finds 1 and 3 of {1, 2, 3}; row 1 finds both of {4, 5} (padding ignored): 4 / 5
    assert topk_recall(exact, approx) == pytest.approx(4 / 5)
    assert topk_recall(exact, exact) == 1.0
    assert topk_recall(np.full((2, 3), -1), approx) is None
    with pytest.raises(InvalidInput, match="one row per query"):
        topk_recall(exact, approx[:1])
    with pytest.raises(InvalidInput, match="integers"):
        topk_recall(exact.astype(float), approx)


def test_topk_recall_against_brute_force() -> None:
    rng = np.random.default_rng(4)
    exact = rng.integers(-1, 50, size=(700, 12))
    approx = rng.integers(-1, 50, size=(700, 9))
    assert topk_recall(exact, approx) == pytest.approx(brute_topk_recall(exact, approx))


def test_recall_vs_exact_samples_queries(big) -> None:
    g, q = big
    _, approx = knn_search(q, g, 10, use_gpu=False, index="ivf", nlist=64, nprobe=2)
    full, n_full = recall_vs_exact(q, g, approx, max_queries=None, use_gpu=False)
    assert n_full == 300 and full == pytest.approx(brute_topk_recall(brute_topk(q, g, 10), approx))
    part, n_part = recall_vs_exact(q, g, approx, max_queries=50, seed=3, use_gpu=False)
    assert n_part == 50 and 0 < part <= 1
    rows = np.sort(np.random.default_rng(3).choice(300, size=50, replace=False))
    assert part == pytest.approx(brute_topk_recall(brute_topk(q[rows], g, 10), approx[rows]))
    # leave-one-out: the exact reference excludes each sampled query's own row too
    x = g[:1000]
    _, loo = knn_search(x, x, 8, exclude_self=True, use_gpu=False, index="ivf", nlist=32, nprobe=2)
    got, _ = recall_vs_exact(x, x, loo, exclude_self=True, max_queries=100, seed=0, use_gpu=False)
    rows = np.sort(np.random.default_rng(0).choice(1000, size=100, replace=False))
    sims = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    sims[np.arange(1000), np.arange(1000)] = -np.inf
    want = np.argsort(-sims[rows], axis=1, kind="stable")[:, :8]
    assert got == pytest.approx(brute_topk_recall(want, loo[rows]))


def test_resolve_index_params_and_bad_parameters(big) -> None:
    g, q = big
    assert resolve_index_params("exact", 10, 3) == {"type": "exact"}
    assert resolve_index_params("ivf", 5000, 10) == {"type": "ivf", "nlist": 128, "nprobe": 32}  # min(283, 5000//39)
    assert resolve_index_params("ivf", 10**6, 10)["nlist"] == 4000  # 4·sqrt(N)
    assert resolve_index_params("ivf", 10, 3) == {"type": "ivf", "nlist": 1, "nprobe": 1}
    assert resolve_index_params("hnsw", 100, 500) == {"type": "hnsw", "M": 32, "efConstruction": 64, "efSearch": 500}
    with pytest.raises(InvalidInput, match="index must be one of"):
        knn_search(q, g, 3, index="lsh")
    with pytest.raises(InvalidInput, match="nlist=9000 exceeds"):
        knn_search(q, g, 3, index="ivf", nlist=9000)
    for bad in ({"nprobe": 0}, {"nlist": -1}, {"nprobe": 2.5}):
        with pytest.raises(InvalidInput, match="positive integer"):
            knn_search(q, g, 3, index="ivf", **bad)
    with pytest.raises(InvalidInput, match="ef_search"):
        knn_search(q, g, 3, index="hnsw", ef_search=0)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        knn_search(bad, g, 3, index="hnsw")
    with pytest.raises(InvalidInput, match="approx_ids"):
        recall_vs_exact(q, g, np.zeros((5, 3), dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------
# through evaluate and the CLI
# ----------------------------------------------------------------------------------------------------------------


def clustered(n_classes: int = 40, per: int = 25, dim: int = 16, seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per)
    emb = (3 * rng.normal(size=(n_classes, dim))[labels] + rng.normal(size=(labels.size, dim))).astype(np.float32)
    return emb, labels


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_retrieval_report_with_an_approximate_index(index) -> None:
    emb, labels = clustered()
    queries = ev.EmbeddingSet(emb, labels)
    exact = ev.retrieval_report(queries, use_gpu=False)
    approx = ev.retrieval_report(queries, use_gpu=False, index=index, recall_queries=None)
    section = approx.pop("index")
    assert section["type"] == index and section["k"] == 24 and section["num_queries_checked"] == 1000
    assert set(section) == {"type", "k", "recall_vs_exact@k", "num_queries_checked", "params"}
    assert section["recall_vs_exact@k"] > 0.9
    _, ids = knn_search(emb, emb, 24, exclude_self=True, use_gpu=False, index=index)
    assert section["recall_vs_exact@k"] == pytest.approx(brute_topk_recall(brute_topk(emb, emb, 24, True), ids))
    for key in ("precision_at_1", "map_at_r"):
        assert approx[key] == pytest.approx(exact[key], abs=0.05)
    # cross-model retrieval against a gallery uses the index too
    gal = ev.EmbeddingSet(emb[::-1].copy(), labels[::-1].copy())
    cross = ev.retrieval_report(
        queries, gal, use_gpu=False, index=index, index_options={"hnsw_m": 16}, recall_queries=100
    )
    assert cross["index"]["num_queries_checked"] == 100 and cross["index"]["type"] == index
    # evaluate passes it on
    report, _ = ev.evaluate(queries, use_gpu=False, index=index)
    assert report["retrieval"]["index"]["type"] == index
    assert "index" in ev.report_table(report)


def test_cli_index_option(tmp_path: Path) -> None:
    emb, labels = clustered()
    with h5py.File(tmp_path / "e.h5", "w") as h:
        h.create_dataset("embeddings", data=emb)
        h.create_dataset("labels", data=labels)
    out = tmp_path / "r.json"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "eval",
            "--faiss",
            "--embeddings",
            str(tmp_path / "e.h5"),
            "--index",
            "hnsw",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    section = json.loads(out.read_text())["retrieval"]["index"]
    assert section["type"] == "hnsw" and section["recall_vs_exact@k"] > 0.9
    assert "recall vs exact@24" in result.stdout
    plain = runner.invoke(
        cli,
        [
            "eval",
            "--faiss",
            "--embeddings",
            str(tmp_path / "e.h5"),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "plain.json"),
        ],
    )
    assert plain.exit_code == 0 and "index" not in json.loads((tmp_path / "plain.json").read_text())["retrieval"]
    bad = runner.invoke(cli, ["eval", "--faiss", "--embeddings", str(tmp_path / "e.h5"), "--index", "lsh"])
    assert bad.exit_code == 2 and "--index" in bad.stderr
