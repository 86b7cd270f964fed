"""Bring-your-own teachers: TorchScript files and module:function code (only with trust_code)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from distill.models.teachers import load_teacher
from featstore.datasets import load_dataset
from featstore.errors import CheckpointError, InputNotFound, InvalidInput, StoreError
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
    (tmp_path / "byo_teacher.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
            return body, body, nn.Linear(8, 10)
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidInput, match="--trust-code"):
        load_teacher("byo_teacher:build")
    assert "byo_teacher" not in sys.modules  # refused before importing (no code ran)
    source = load_teacher("byo_teacher:build", trust_code=True)
    assert source.embedding_dim == 8 and source.arch == "byo_teacher:build"
    assert len(source.checkpoint_sha256) == 64


def test_bad_teacher_specs(tmp_path):
    with pytest.raises(InputNotFound, match="does not exist"):
        load_teacher(f"torchscript:{tmp_path / 'missing.ts'}")
    (tmp_path / "junk.ts").write_bytes(b"not torchscript")
    with pytest.raises(CheckpointError, match="not a loadable TorchScript"):
        load_teacher(f"torchscript:{tmp_path / 'junk.ts'}")
    with pytest.raises(InvalidInput, match="cannot import"):
        load_teacher("no_such_module_xyz:build", trust_code=True)


WEIGHTS_FROM_FILE = """
    import os
    import torch
    from torch import nn

    def build():
        body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
        body.load_state_dict(torch.load(os.environ["FSD_TEST_WEIGHTS"], weights_only=True))
        head = nn.Linear(8, 10)
        head.load_state_dict(torch.load(os.environ["FSD_TEST_WEIGHTS"] + ".head", weights_only=True))
        return body, body, head

    def wrong_width():
        body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
        return body, body, nn.Linear(32, 10)
    """


def _save_weights(path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 8)).state_dict(), path)
    torch.save(nn.Linear(8, 10).state_dict(), str(path) + ".head")


def test_module_function_identity_follows_the_weights(tmp_path, monkeypatch):
    """A factory that loads its weights from a file keeps its source when they change; the recorded identity
    (and so resume) must not: resuming with other weights is refused."""
    (tmp_path / "byo_file_teacher.py").write_text(textwrap.dedent(WEIGHTS_FROM_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w.pt"
    monkeypatch.setenv("FSD_TEST_WEIGHTS", str(weights))
    _save_weights(weights, 1)
    first = load_teacher("byo_file_teacher:build", trust_code=True)
    assert load_teacher("byo_file_teacher:build", trust_code=True).checkpoint_sha256 == first.checkpoint_sha256
    dataset = load_dataset("digits", "test")
    url = str(tmp_path / "s.zarr")
    extract_teacher(first, dataset, url, views=1, chunk_rows=64, progress=False)
    _save_weights(weights, 2)
    second = load_teacher("byo_file_teacher:build", trust_code=True)
    assert second.checkpoint_sha256 != first.checkpoint_sha256
    with pytest.raises(StoreError, match="different teacher"):
        extract_teacher(second, dataset, url, views=1, chunk_rows=64, progress=False)


def test_resume_refuses_a_store_holding_another_head(tmp_path):
    """Even with the same recorded identity, a store whose head differs from the teacher's is not resumed."""
    torch.manual_seed(0)
    eager = ScriptedTeacher().eval()
    path = tmp_path / "teacher.ts"
    torch.jit.script(eager).save(str(path))
    source = load_teacher(f"torchscript:{path}")
    dataset = load_dataset("digits", "test")
    url = str(tmp_path / "s.zarr")
    extract_teacher(source, dataset, url, views=1, chunk_rows=64, progress=False)
    group = zarr.open_group(url, mode="r+")
    group["head/weight"][0, 0] = group["head/weight"][0, 0] + 1.0
    group["progress/done"][3] = False
    meta = dict(group.attrs["fsd"])
    meta["complete"] = False
    group.attrs["fsd"] = meta
    with pytest.raises(StoreError, match="another head"):
        extract_teacher(source, dataset, url, views=1, chunk_rows=64, progress=False)


def test_teacher_whose_embeddings_do_not_fit_its_head_is_refused_before_writing(tmp_path, monkeypatch):
    (tmp_path / "byo_file_teacher.py").write_text(textwrap.dedent(WEIGHTS_FROM_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    source = load_teacher("byo_file_teacher:wrong_width", trust_code=True)
    url = tmp_path / "s.zarr"
    with pytest.raises(InvalidInput, match=r"embeddings of shape \(8, 16\) but its head expects \(batch, 32\)"):
        extract_teacher(source, load_dataset("digits", "test"), str(url), views=1, progress=False)
    assert not url.exists()
