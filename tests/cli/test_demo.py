"""``fsd demo``: the whole pipeline in one command leaves every promised file and prints the comparison table."""

from __future__ import annotations

import json
import re

from distill.models.checkpoint import load_checkpoint
from featstore.store import open_store

RECIPES = ("vanilla", "kd", "th-kd", "kde-th")


def test_demo_runs_the_pipeline_and_prints_the_table(h, tmp_path):
    workdir = tmp_path / "demo"
    result = h.run_ok("demo", "--workdir", workdir, "--epochs", 2, "--quiet")
    names = {p.name for p in workdir.iterdir()}

    teachers = [n for n in names if "teacher" in n and n.endswith(".pt")]
    assert teachers, names
    assert load_checkpoint(workdir / teachers[0]).kind == "teacher"

    stores = [n for n in names if n.endswith(".zarr")]
    assert len(stores) == 1, names
    store = open_store(workdir / stores[0])
    assert store.complete and store.shape.num_views == 2

    for recipe in RECIPES:
        ckpt = load_checkpoint(workdir / f"student_{recipe}.pt", kind="student")
        assert ckpt.extra["recipe"] == recipe
    reports = sorted(n for n in names if n.startswith("report_") and n.endswith(".json"))
    assert len(reports) == 1 + len(RECIPES), reports
    for name in reports:
        report = json.loads((workdir / name).read_text())
        assert {"retrieval", "verification", "cross_model"} <= set(report)
    assert (workdir / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((workdir / "demo_summary.json").read_text())
    assert set(summary["reports"]) == {"teacher", *(f"student {r}" for r in RECIPES)}

    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model") and "top-1" in line)
    assert set(lines[header + 1]) == {"-"}
    rows = lines[header + 2 : header + 3 + len(RECIPES)]
    assert [row.split("  ")[0].strip() for row in rows] == ["teacher", *(f"student {r}" for r in RECIPES)]
    for row in rows:
        assert len(re.findall(r"\d+\.\d\d", row)) >= 5, row  # top-1, R@1, MAP@R, TAR, AUC, x-R@1 in percent
    assert "demo finished" in result.stdout
