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
