"""iResNet and MobileFaceNet: sizes as published, the embedding/head split, any multiple-of-16 input."""

from __future__ import annotations

import pytest
import torch

from distill.models import MODELS, count_parameters, create_model
from distill.models.registry import accepts


def _backbone_parameters(name: str, **config) -> int:
    model = create_model(name, num_classes=10, **config)
    return count_parameters(model) - count_parameters(model.head)


def test_published_sizes():
    # MobileFaceNet (Chen et al. 2018): 0.99 M parameters with its 128-d embedding
    assert abs(_backbone_parameters("mobilefacenet", embedding_dim=128) / 1e6 - 0.99) < 0.02
    # iResNet-50 as arcface_torch builds it: 43.6 M including the 512·7·7 → 512 embedding layer
    assert abs(_backbone_parameters("iresnet50") / 1e6 - 43.59) < 0.05
    fc = 512 * 7 * 7 * 512 + 512
    assert _backbone_parameters("iresnet100") > _backbone_parameters("iresnet50") > _backbone_parameters("iresnet34")
    assert _backbone_parameters("iresnet18") > fc


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_split_and_sizes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_size=32).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        z = model.forward_features(x)
        assert z.shape == (3, 512)
        torch.testing.assert_close(model(x), model.forward_head(z))
    assert model.head.weight.shape == (7, 512) and accepts(name, "input_size")
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model(name, num_classes=7, input_size=40)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_gradients_reach_every_parameter_and_seeds_repeat(name):
    torch.manual_seed(3)
    model = create_model(name, num_classes=4, in_channels=1, embedding_dim=32, input_size=16).train()
    model(torch.randn(4, 1, 16, 16)).logsumexp(dim=1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    torch.manual_seed(3)
    again = create_model(name, num_classes=4, in_channels=1, embedding_dim=32, input_size=16)
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert ka == kb and (torch.equal(va, vb) or "running" in ka or "num_batches" in ka)


def test_112_faces_give_512_d():
    model = create_model("mobilefacenet", num_classes=5).eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(2, 3, 112, 112)).shape == (2, 512)
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"} <= set(MODELS.names())


def test_train_student_help_lists_the_architectures():
    from click.testing import CliRunner

    from cli.main import cli

    text = " ".join(CliRunner().invoke(cli, ["train-student", "--help"]).output.split())
    for name in ("mobilefacenet", "iresnet100", "convnet_student", "timm:NAME"):
        assert name in text
