"""Smoke test of the benchmarks: ``python -m benchmarks.run --quick`` runs every section end to end and writes
valid JSON and a RESULTS.md; the report writer keeps other sections; eval_floor runs and certifies.

Benchmarks are not tests: nothing here looks at a timing or a ratio's value, only that every section ran,
that each figure is a finite number, and that fsd's retrieval values equalled pytorch-metric-learning's.
``--out-dir`` keeps the committed benchmarks/RESULTS.md untouched.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("training", "stream", "extraction", "dask", "amortisation", "eval")


def _run_benchmark(*args: str) -> subprocess.CompletedProcess:
    """``python -m ARGS`` from the repository root, output captured, at most 10 minutes."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_quick_benchmark_writes_valid_json(tmp_path: Path) -> None:
    done = _run_benchmark("benchmarks.run", "--quick", "--out-dir", str(tmp_path), "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]

    results = json.loads((tmp_path / "run.json").read_text())
    assert results["meta"]["quick"] is True
    for section in SECTIONS:
        assert section in results, f"section {section} missing"
    assert results["eval"]["values_equal"] is True
    assert results["eval"]["max_abs_difference"] <= 1e-6

    figures = {f["key"]: f for f in results["figures"]}
    for key in (
        "store_kd_vs_vanilla",
        "kd_speedup_efficiency",
        "store_thkd_vs_vanilla",
        "thkd_speedup_efficiency",
        "store_crd_vs_vanilla",
        "extract_vs_bare",
        "dask_2_vs_1",
        "stream_vs_memmap",
        "stream_vs_training",
        "eval_vs_pml",
        "amortisation_k1",
        "amortisation_k3",
        "amortisation_k10",
    ):
        assert key in figures, f"figure {key} missing"
        value = figures[key]["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
        assert figures[key]["met"] in (True, False, None)

    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- benchmarks/run.py:start" in markdown and "<!-- benchmarks/run.py:end -->" in markdown
    assert "| figure | measured | goal | met |" in markdown
    block = markdown[markdown.index("<!-- benchmarks/run.py:start") : markdown.index("<!-- benchmarks/run.py:end -->")]
    assert block in done.stdout  # RESULTS.md holds exactly what the script printed


def test_results_md_keeps_other_sections(tmp_path: Path) -> None:
    """Re-writing RESULTS.md replaces only the script's own block (tar_at_far.py's section survives)."""
    from benchmarks import report as module

    path = tmp_path / "RESULTS.md"
    other = "## Exact TAR@FAR at N = 20,000\n\nkept as is\n"
    path.write_text("# Benchmark results\n\n" + other)
    for text in ("first", "second"):
        module.write_results_md(path, f"{module.START}\n\n## Throughput\n\n{text}\n\n{module.END}")
    content = path.read_text()
    assert content.startswith("# Benchmark results\n")
    assert "second" in content and "first" not in content
    assert content.count(module.START) == 1 and content.endswith(other)


def test_eval_floor_runs_and_its_certified_rows_are_exact(tmp_path: Path) -> None:
    """benchmarks/eval_floor.py at a small N: valid JSON, its section written, and on every row its
    certificate accepts, the reranked top-k equals FAISS' exact top-k (the script checks that itself)."""
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n## Exact TAR@FAR at N = 20,000\n\nkept as is\n")
    done = _run_benchmark(
        "benchmarks.eval_floor",
        "--n",
        "3000",
        "--classes",
        "100",
        "--block",
        "1024",
        "--results",
        str(results_md),
        "--json",
        str(tmp_path / "floor.json"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "floor.json").read_text())
    assert result["params"]["k"] == 101 and result["params"]["k_prime"] == 202
    assert 0.0 < result["certified_fraction"] <= 1.0
    assert result["max_abs_difference_vs_faiss_on_certified_rows"] <= 1e-5
    for key in ("pml", "fsd", "faiss_exact_search", "bf16_half_gemm", "select", "exact_rerank"):
        assert math.isfinite(result["seconds"][key]) and result["seconds"][key] > 0  # each stage did real work
    content = results_md.read_text()
    assert "kept as is" in content and "## Exact retrieval: the floor on this machine" in content


def test_eval_floor_verification_writes_its_ratio(tmp_path: Path) -> None:
    """eval_floor --verification at a small N: every round's report agrees, the ratio and the section are written."""
    out, md = tmp_path / "v.json", tmp_path / "R.md"
    cmd = [sys.executable, "-m", "benchmarks.eval_floor", "--verification", "1200", "--dim", "32", "--classes", "40"]
    cmd += ["--repeats", "2", "--json", str(out), "--results", str(md)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text())
    assert result["sizes"]["1200"]["median_ratio"] > 0 and len(result["sizes"]["1200"]["rounds"]) == 2
    assert "## Exact verification: ratio to the GEMM floor" in md.read_text()


def test_eval_floor_certificate_is_a_bound() -> None:
    """The ε of eval_floor bounds |bf16 score − exact score| on real bf16 products, and the certificate
    accepts a row only when its k-th approximate score clears the (k')-th by more than the error allows."""
    import numpy as np
    import torch

    from benchmarks import eval_floor as module

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xb = torch.from_numpy(x).bfloat16()
    eps = module.score_error_bound(x, xb.float().numpy())
    approx_before_output_rounding = (xb.float() @ xb.float().T).numpy().astype(np.float64)
    exact = x.astype(np.float64) @ x.astype(np.float64).T
    assert np.abs(approx_before_output_rounding - exact).max() <= eps
    assert 1e-4 < eps < 2e-2  # 8 significant bits on unit vectors: a few 2⁻⁹
    u = module.BF16_UNIT_ROUNDOFF
    vals = np.array([[0.9, 0.5, 0.3], [0.9, 0.5, 0.5 - 1e-3]], dtype=np.float32)  # k = 2, k' = 3
    assert module.certified(vals, 2, eps=0.01).tolist() == [True, False]
    edge = 0.5 / (1 + u) - 0.3 / (1 - u)  # the gap the output rounding alone eats; ε must fit in the rest
    assert module.certified(vals[:1], 2, eps=edge / 2 * 0.999).tolist() == [True]
    assert module.certified(vals[:1], 2, eps=edge / 2 * 1.001).tolist() == [False]


def test_replace_marked_keeps_the_hand_written_doc(tmp_path: Path) -> None:
    """The docs tables (paper_table, margin_heads, store_dtypes): only the text between the markers changes;
    absent markers are appended once, under the heading given."""
    from benchmarks.results_md import replace_marked

    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nintro\n\n<!-- t:start -->\nold\n<!-- t:end -->\n\noutro\n")
    replace_marked(doc, "<!-- t:start -->", "<!-- t:end -->", "| new |")
    assert doc.read_text() == "# Results\n\nintro\n\n<!-- t:start -->\n| new |\n<!-- t:end -->\n\noutro\n"
    for body in ("first", "second"):
        replace_marked(doc, "<!-- m:start -->", "<!-- m:end -->", body, heading="## Margin heads")
    text = doc.read_text()
    assert text.endswith("outro\n\n## Margin heads\n\n<!-- m:start -->\nsecond\n<!-- m:end -->\n")
    assert text.count("## Margin heads") == 1 and "first" not in text


def test_a_subject_script_runs_alone(tmp_path: Path) -> None:
    """``python -m benchmarks.eval`` is the driver with its one section: only that section and its figure are
    written, and RESULTS.md names the equivalent ``benchmarks.run`` call."""
    done = _run_benchmark("benchmarks.eval", "--quick", "--eval-n", "2000", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "run.json").read_text())
    assert results["meta"]["sections"] == ["eval"]
    assert not (set(SECTIONS) - {"eval"}) & set(results)  # no other section ran
    assert results["eval"]["n"] == 2000 and results["eval"]["values_equal"] is True
    assert [f["key"] for f in results["figures"]] == ["eval_vs_pml"]
    assert "`python -m benchmarks.run --sections eval --quick --eval-n 2000" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow  # every figure of the data-pipeline benchmark; its loader and store paths have fast tests
def test_quick_data_pipeline_benchmark_runs_every_figure(tmp_path: Path) -> None:
    """``benchmarks.data_pipeline --quick``: loader, extraction, training, memory (through the real CLI
    processes) and fingerprint figures all computed and finite; the committed RESULTS.md is not touched."""
    out = tmp_path / "data_pipeline.json"
    done = _run_benchmark(
        "benchmarks.data_pipeline", "--quick", "--results", str(tmp_path / "R.md"), "--json", str(out)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(out.read_text())
    ratios = [r["loader"]["ratio"], r["extraction"]["ratio"], r["training"]["ratio"], r["fingerprint"]["seconds"]]
    ratios += [r["memory"]["extract_growth"], r["memory"]["train_growth"]]
    assert all(isinstance(v, float) and math.isfinite(v) for v in ratios), ratios
    assert all(r["memory"][f"{kind}_{n}_mb"] > 50 for kind in ("extract", "train") for n in r["meta"]["memory_sizes"])
    assert "Real-scale data" in (tmp_path / "R.md").read_text()


def test_quick_crd_step_benchmark_checks_values_then_times(tmp_path: Path) -> None:
    """``benchmarks.crd_step --quick``: the three CRD routes agree on the loss (the script asserts it before
    timing), every step time and ratio is finite, and the section lands in the given RESULTS.md."""
    done = _run_benchmark("benchmarks.crd_step", "--quick", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads((tmp_path / "crd_step.json").read_text())["crd"]
    figures = [*r["step_s"].values(), r["fsd_over_repdistiller_gather"], r["fsd_over_dense_autograd"]]
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in figures), figures
    assert "CRD loss step" in (tmp_path / "RESULTS.md").read_text()
