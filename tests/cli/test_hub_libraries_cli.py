"""A real timm teacher extracts a store and a real timm student trains from it, through the CLI (see
tests/distill/models/test_hub_libraries.py for how torchvision is imported beside the CPU torch)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from distill.models.hub import import_library
from featstore.errors import InvalidInput


@pytest.fixture(scope="module")
def timm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return import_library("timm")
        except InvalidInput as exc:
            if "No module named" in str(exc):
                pytest.skip(f"timm is not installed ({exc})")
            raise


def test_a_timm_teacher_extracts_and_a_timm_student_trains_through_the_cli(tmp_path, h, timm):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for i in range(n):
            path = tmp_path / "imgs" / split / f"c{i % 2}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    torch.manual_seed(0)
    weights = tmp_path / "t.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=2).state_dict(), weights)
    spec, store = f"folder:{tmp_path / 'imgs'}?size=32", tmp_path / "s.zarr"
    h.run_ok("extract-teacher", "--teacher", f"timm:resnet18?weights={weights}", "--dataset", spec, "--out", store,
             "--views", 2, "--chunk-rows", 8, "--loader-workers", 0, "--quiet")  # fmt: skip
    verified = h.run_ok("store", "verify", store, "--teacher", f"timm:resnet18?weights={weights}", "--sample", 4)
    assert "0 bad" in verified.stdout and "live check: 4 rows" in verified.stdout, verified.stdout  # same embeddings
    out = tmp_path / "student.pt"
    h.run_ok("train-student", "--store", store, "--dataset", spec, "--out", out, "--arch", "timm:resnet18",
             "--recipe", "th-kd", "--epochs", 1, "--batch-size", 8, "--loader-workers", 0, "--quiet")  # fmt: skip
    assert torch.load(out, weights_only=True)["arch"] == "timm:resnet18"
