"""Tests for distill.evaluation.request (the one evaluation entry), the METRICS table and the public API:
run_eval from Python writes what `fsd eval` writes, the CLI's defaults are the request's, the report's
sections are the table's, and `import distill.evaluation` stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import distill.evaluation as ev
from cli.main import cli
from distill.evaluation import metrics
from distill.evaluation.request import parse_fars
from featstore.errors import InvalidInput, OutputExists


@pytest.fixture
def h5(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 8)
    x = (rng.normal(size=(6, 8))[labels] + 0.6 * rng.normal(size=(48, 8))).astype(np.float32)
    path = tmp_path / "e.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"], f["labels"] = x, labels
        f["names"] = [f"img{i}" for i in range(48)]
    return path


def test_run_eval_writes_what_the_command_writes(h5: Path, tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("img0 img1 1\nimg0 img9 0\nimg2 img3 1\nimg4 img20 0\n")
    cli_out, api_out = tmp_path / "cli.json", tmp_path / "api.json"
    args = ["eval", "--faiss", "--embeddings", str(h5), "--pairs", str(tmp_path / "pairs.txt"), "--device", "cpu"]
    result = CliRunner().invoke(cli, [*args, "--out", str(cli_out)])
    assert result.exit_code == 0, result.output
    lines: list[str] = []
    request = ev.EvalRequest(embeddings=h5, pairs=tmp_path / "pairs.txt", device="cpu", out=api_out)
    got = ev.run_eval(request, echo=lines.append)
    assert api_out.read_bytes() == cli_out.read_bytes()
    assert json.loads(api_out.read_text()) == got.report
    assert got.report["verification"]["num_genuine"] == 2 and got.report["verification"]["num_impostor"] == 2
    assert "\n".join(lines) + "\n" == result.output.replace(str(cli_out), str(api_out))
    assert got.written == [api_out]
    # silent without echo; refuses to replace the report unless asked
    with pytest.raises(OutputExists, match="already exists"):
        ev.run_eval(request)
    assert ev.run_eval(ev.EvalRequest(embeddings=str(h5), fars=(1e-3,), device="cpu")).written == []


def test_the_command_shows_and_uses_the_request_defaults() -> None:
    help_text = " ".join(CliRunner().invoke(cli, ["eval", "--help"]).output.split())  # wrapping aside
    request = ev.EvalRequest()
    assert f"[default: {','.join(f'{f:g}' for f in request.fars)}]" in help_text
    assert request.fars == metrics.FARS and request.split == "test" and request.index == "exact"
    for option, value in (("--split", request.split), ("--pairs-format", request.pairs_format)):
        assert option in help_text and f"[default: {value}]" in help_text


def test_request_checks_come_in_the_command_order(h5: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="exactly one of --model, --store, --embeddings"):
        ev.run_eval(ev.EvalRequest(embeddings=h5, store="s.zarr", fars="2"))  # sources before FARs
    with pytest.raises(InvalidInput, match=r"--far values must lie in \(0, 1\]"):
        ev.run_eval(ev.EvalRequest(embeddings=h5, fars="0.1,2"))
    with pytest.raises(InvalidInput, match="--index applies to retrieval"):
        ev.run_eval(ev.EvalRequest(embeddings=h5, ijb_meta=tmp_path, index="ivf"))
    assert parse_fars("1e-3, 0.1,") == (1e-3, 0.1)
    with pytest.raises(InvalidInput, match="comma-separated list of numbers"):
        parse_fars("1e-3;0.1")


def test_report_sections_are_the_metrics_table(h5: Path) -> None:
    queries = ev.embeddings_from_h5(h5)
    queries.logits = np.eye(6)[queries.labels] + 0.1  # a perfect classifier head
    report, _ = ev.evaluate(queries, use_gpu=False)
    per_sample = [name for name, m in metrics.METRICS.items() if m.requires != "gallery_ranks"]
    assert [k for k in report if k in metrics.METRICS] == per_sample == ["classification", "retrieval", "verification"]
    for name in per_sample:
        assert set(metrics.METRICS[name].keys) <= set(report[name])
    assert report["classification"]["top1"] == 1.0
    assert metrics.get_function_dict("knn") == {"retrieval": metrics.retrieval_metrics}
    assert list(metrics.get_function_dict()) == list(metrics.METRICS)
    with pytest.raises(InvalidInput, match="unknown requirement"):
        metrics.get_function_dict("labels")


def test_public_api_is_complete_and_lazy() -> None:
    assert sorted(ev.__all__) == sorted(set(ev.__all__)) and set(ev.__all__) <= set(dir(ev))
    for name in ev.__all__:
        assert getattr(ev, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ev.nope
    code = "import sys, distill.evaluation as e; e.EvalRequest; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # FAISS loads when a search runs, not on import
