"""Smoke test of benchmarks/run.py: ``--quick`` runs end to end and writes valid JSON and a RESULTS.md.

Benchmarks are not tests: nothing here looks at a timing or a ratio's value, only that every section ran,
that each figure is a finite number, and that fsd's retrieval values equalled pytorch-metric-learning's.
``--out-dir`` keeps the committed benchmarks/RESULTS.md untouched.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
SECTIONS = ("training", "stream", "extraction", "dask", "amortisation", "eval")


def test_quick_benchmark_writes_valid_json(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out-dir", str(tmp_path),
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    results = json.loads((tmp_path / "run.json").read_text())
    assert results["meta"]["quick"] is True
    for section in SECTIONS:
        assert section in results, f"section {section} missing"
    assert results["eval"]["values_equal"] is True
    assert results["eval"]["max_abs_difference"] <= 1e-6

    figures = {f["key"]: f for f in results["figures"]}
    for key in ("store_kd_vs_vanilla", "kd_speedup_efficiency", "store_thkd_vs_vanilla", "thkd_speedup_efficiency",
                "store_crd_vs_vanilla", "extract_vs_bare", "dask_2_vs_1", "stream_vs_memmap", "stream_vs_training",
                "eval_vs_pml", "amortisation_k1", "amortisation_k3", "amortisation_k10"):
        assert key in figures, f"figure {key} missing"
        value = figures[key]["value"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
        assert figures[key]["met"] in (True, False, None)

    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- benchmarks/run.py:start" in markdown and "<!-- benchmarks/run.py:end -->" in markdown
    assert "| figure | measured | goal | met |" in markdown
    block = markdown[markdown.index("<!-- benchmarks/run.py:start"):markdown.index("<!-- benchmarks/run.py:end -->")]
    assert block in done.stdout  # RESULTS.md holds exactly what the script printed


def test_results_md_keeps_other_sections(tmp_path: Path) -> None:
    """Re-writing RESULTS.md replaces only the script's own block (tar_at_far.py's section survives)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsd_benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    path = tmp_path / "RESULTS.md"
    other = "## Exact TAR@FAR at N = 20,000\n\nkept as is\n"
    path.write_text("# Benchmark results\n\n" + other)
    for text in ("first", "second"):
        module.write_results_md(path, f"{module.START}\n\n## Throughput\n\n{text}\n\n{module.END}")
    content = path.read_text()
    assert content.startswith("# Benchmark results\n")
    assert "second" in content and "first" not in content
    assert content.count(module.START) == 1 and content.endswith(other)
