"""``train-student --arch module:function --trust-code`` end to end: train, evaluate, export, each gated."""

from __future__ import annotations

import json
import sys

import pytest
import torch

MODULE = "fsd_cli_code_student"
CODE = (
    "from torch import nn\n"
    "def tiny(in_channels, input_size):\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, 32), nn.ReLU())\n"
)


@pytest.fixture
def code_dir(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(CODE)
    monkeypatch.chdir(tmp_path)  # like a module beside the user's data: the current directory is importable
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_a_code_student_trains_evaluates_and_exports_only_with_trust_code(h, work, code_dir):
    out = code_dir / "code_student.pt"
    train = ["train-student", "--store", work.store, "--dataset", "digits", "--out", out, "--arch", f"{MODULE}:tiny"]
    train += ["--epochs", 1, "--quiet"]
    before = h.snapshot(code_dir)
    h.assert_refused(h.invoke(*train), before, code_dir, "--trust-code")

    h.run_ok(*train, "--trust-code")
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["arch"] == f"{MODULE}:tiny" and len(ckpt["extra"]["code_sha256"]) == 64
    assert ckpt["model_config"]["input_size"] == 8 and ckpt["embedding_dim"] == 64  # the teacher's width

    report = code_dir / "r.json"
    evaluate = ["eval", "--faiss", "--model", out, "--dataset", "digits", "--out", report]
    before = h.snapshot(code_dir)
    h.assert_refused(h.invoke(*evaluate), before, code_dir, "--trust-code")
    h.run_ok(*evaluate, "--trust-code")
    assert json.loads(report.read_text())["classification"]["top1"] > 0.3  # learnt something in one epoch

    onnx = code_dir / "code_student.onnx"
    before = h.snapshot(code_dir)
    h.assert_refused(h.invoke("export", out, "--onnx", onnx), before, code_dir, "--trust-code")
    exported = h.run_ok("export", out, "--onnx", onnx, "--trust-code")
    assert json.loads((code_dir / "code_student.onnx.parity.json").read_text())["max_abs_diff_embedding"] < 1e-4, (
        exported.stdout
    )

    (code_dir / f"{MODULE}.py").write_text(CODE + "# edited\n")  # same shapes, other code: a warning, not silence
    sys.modules.pop(MODULE, None)
    with pytest.warns(RuntimeWarning, match="changed since this checkpoint was trained"):
        h.run_ok(*evaluate, "--trust-code", "--overwrite")
