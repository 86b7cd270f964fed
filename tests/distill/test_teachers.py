"""Bring-your-own teachers: TorchScript files and module:function code (only with trust_code)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from distill.teachers import load_teacher
from featstore.datasets import load_dataset
from featstore.errors import CheckpointError, InputNotFound, InvalidInput
from featstore.extract import extract_teacher
from featstore.store import open_store


class ScriptedTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
        self.head = nn.Linear(16, 10)

    @torch.jit.export
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_torchscript_teacher_extracts_its_forward_features(tmp_path):
    torch.manual_seed(0)
    eager = ScriptedTeacher().eval()
    path = tmp_path / "teacher.ts"
    torch.jit.script(eager).save(str(path))
    source = load_teacher(f"torchscript:{path}")
    assert source.embedding_dim == 16 and source.head_weight.shape == (10, 16)
    dataset = load_dataset("digits", "test")
    url = str(tmp_path / "s.zarr")
    extract_teacher(source, dataset, url, views=1, dtype="float32", progress=False)
    stored, _, _ = open_store(url).read_chunk(0)
    with torch.no_grad():
        expected = eager.forward_features(dataset.get_images(np.arange(len(stored))))
    np.testing.assert_allclose(stored[:, 0], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert open_store(url).meta["teacher"]["input_shape"] == [1, 8, 8]  # recorded from the dataset


def test_module_function_teacher_needs_trust_code(tmp_path, monkeypatch):
    (tmp_path / "byo_teacher.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
            return body, body, nn.Linear(8, 10)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidInput, match="--trust-code"):
        load_teacher("byo_teacher:build")
    assert "byo_teacher" not in sys.modules  # refused before importing (no code ran)
    source = load_teacher("byo_teacher:build", trust_code=True)
    assert source.embedding_dim == 8 and source.arch == "byo_teacher:build"
    assert len(source.checkpoint_sha256) == 64


def test_bad_teacher_specs(tmp_path):
    with pytest.raises(InputNotFound):
        load_teacher(f"torchscript:{tmp_path / 'missing.ts'}")
    (tmp_path / "junk.ts").write_bytes(b"not torchscript")
    with pytest.raises(CheckpointError):
        load_teacher(f"torchscript:{tmp_path / 'junk.ts'}")
    with pytest.raises(InvalidInput, match="cannot import"):
        load_teacher("no_such_module_xyz:build", trust_code=True)
