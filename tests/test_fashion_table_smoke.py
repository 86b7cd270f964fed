"""Smoke test of ``python -m benchmarks.fashion_table`` on the Debian package's real Fashion-MNIST files: one seed, one
epoch, 200 training and 100 test images, four rows (vanilla, crd, sp and the SH-KD pipeline) — every stage
runs and writes a table with finite figures; nothing looks at their values. Skips without the package."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from featstore.datasets.idx import DEBIAN_FASHION_MNIST

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("vanilla", "crd", "sp", "sh-kd")


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_table_runs_end_to_end(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    results.write_text(
        "# Results\n\nintro\n\n## Fashion-MNIST\n\n<!-- fashion-table:start -->\nold\n<!-- fashion-table:end -->\nkept\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fashion_table", "--seeds", "1", "--epochs", "1", "--teacher-epochs", "1",
         "--train-limit", "200", "--teacher-limit", "200", "--test-limit", "100", "--recipes", ",".join(ROWS),
         "--jobs", "1", "--workdir", str(tmp_path / "work"), "--out", str(results), "--json", str(tmp_path / "f.json")],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads((tmp_path / "f.json").read_text())
    assert set(data["students"]) == set(ROWS)
    for runs in data["students"].values():
        assert len(runs) == 1 and all(math.isfinite(v) and 0 <= v <= 1 for v in runs[0].values())
    text = results.read_text()
    assert "old" not in text and text.startswith("# Results\n\nintro") and text.rstrip().endswith("kept")
    for row in ("teacher", *ROWS):
        assert f"| {row}" in text
    assert "--train-limit 200 --teacher-limit 200 --test-limit 100" in text


CONVERGED_ROWS = ("vanilla", "kd", "sh-kd", "kd-triplet")


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_converged_table_runs_end_to_end(tmp_path: Path) -> None:
    """``--converged`` at tiny sizes (10 images per class, 2 epochs, 2 seeds, two rows on 1 seed): the
    stratified subset, curves, an SH-KD fine-tuned teacher, verdicts and the short-seed note all appear."""
    results = tmp_path / "results.md"
    results.write_text("# Results\n\n## Other\n\nkept\n")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.fashion_table", "--converged", "--seeds", "2", "--epochs", "2",
         "--teacher-epochs", "1", "--teacher-limit", "100", "--per-class", "10", "--test-limit", "100",
         "--sh-teacher-epochs", "1", "--recipes", ",".join(CONVERGED_ROWS), "--short-seeds", "sh-kd=1,kd-triplet=1",
         "--jobs", "1", "--workdir", str(tmp_path / "work"), "--out", str(results), "--json",
         str(tmp_path / "c.json"), "--png", str(tmp_path / "curves.png")],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.startswith("estimate: ")
    data = json.loads((tmp_path / "c.json").read_text())
    assert {r: len(s) for r, s in data["students"].items()} == {"vanilla": 2, "kd": 2, "sh-kd": 1, "kd-triplet": 1}
    for seeds in data["students"].values():
        for run in seeds.values():
            assert len(run["loss"]) == 2 and all(math.isfinite(v) and v > 0 for v in run["loss"])
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in run["metrics"].values())
    assert len(data["sh_teacher_top1"]) == 1
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = results.read_text()
    assert "## Fashion-MNIST, students trained to convergence" in text and "kept" in text
    assert "first 10 of each class" in text and "`sh-kd` 1, `kd-triplet` 1" in text
    for row in ("teacher", *CONVERGED_ROWS):
        assert f"| {row}" in text
    assert "**SH-KD vs KD** (`sh-kd` − `kd`): top-1" in text and "**KD + triplet vs KD** (`kd-triplet`" in text
    assert "**TH-KD vs KD**: not measured" in text and "cross-model retrieval" in text
    assert "--short-seeds sh-kd=1,kd-triplet=1" in text
