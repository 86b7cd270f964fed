"""timm and torchvision for real (not stand-ins): teachers from local weights, students, and the CLI.

``make test`` installs both (torchvision pinned to the torch wheel). Beside the CPU torch wheel PyPI's
torchvision cannot load its compiled operators; fsd then imports it without them (a warning), which is
what these tests exercise on CI. The networks are built with random weights: nothing is downloaded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from distill.models.registry import create_model
from distill.models.teacher_hub import _library
from distill.models.teachers import load_teacher
from featstore.errors import InvalidInput


def _import(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the compiled-operators warning, on a CPU torch
        try:
            return _library(name)
        except InvalidInput as exc:
            if "No module named" in str(exc):
                pytest.skip(f"{name} is not installed ({exc})")
            raise


@pytest.fixture(scope="module")
def timm():
    return _import("timm")


@pytest.fixture(scope="module")
def tv_models():
    return _import("torchvision.models")


def test_a_timm_teacher_embeds_with_the_pre_logits_of_its_own_network(tmp_path, timm):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    weights = tmp_path / "r18.pt"
    torch.save(net.state_dict(), weights)
    source = load_teacher(f"timm:resnet18?weights={weights}")
    assert source.head_weight.shape == (5, 512) and source.embedding_dim == 512
    np.testing.assert_array_equal(source.head_weight, net.get_classifier().weight.detach().numpy())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(x), pre_logits=True)
        got = source.model.forward_features(x)
    torch.testing.assert_close(got, expected)
    assert load_teacher(f"timm:resnet18?weights={weights}&head=0").head_weight is None


def test_a_torchvision_teacher_splits_at_its_last_linear(tmp_path, tv_models):
    torch.manual_seed(0)
    net = tv_models.get_model("mobilenet_v3_small", weights=None, num_classes=4).eval()
    weights = tmp_path / "mnv3.pt"
    torch.save(net.state_dict(), weights)
    source = load_teacher(f"torchvision:mobilenet_v3_small?weights={weights}")
    assert source.head_weight.shape == (4, 1024)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = torch.from_numpy(source.head_weight) @ source.model.forward_features(x).T
        logits = logits.T + torch.from_numpy(source.head_bias)
        torch.testing.assert_close(logits, net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["timm:resnet18", "torchvision:resnet18"])
def test_library_students_have_the_embedding_head_split(arch, timm, tv_models):
    student = create_model(arch, num_classes=3, in_channels=3, embedding_dim=16).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = student.forward_features(x)
        assert z.shape == (2, 16) and student.head.weight.shape == (3, 16)
        torch.testing.assert_close(student(x), student.forward_head(z))
