"""Tests for distill.models: every registered backbone exposes the embedding/head split the store and TH-KD
rely on; create_model drops None options; unknown names are UnknownName; the student is much smaller."""

from __future__ import annotations

import pytest
import torch

from distill.models import MODELS, count_parameters, create_model
from distill.models.heads import LinearHead, frozen_head_from_weights
from distill.models.registry import accepts
from featstore.errors import UnknownName

CONFIG = {"num_classes": 10, "in_channels": 1, "embedding_dim": 32}
# the backbones that take any input size; the face backbones (a fixed-size embedding layer, sized by their
# input_size option) have their own conformance tests in test_face_models.py
NAMES = [n for n in MODELS.names() if not accepts(n, "input_size")]


def build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **(CONFIG | overrides))


def images(batch: int = 4, channels: int = 1, size: tuple[int, int] = (28, 28), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *size, generator=g)


def test_models_are_registered():
    assert {"convnet_teacher", "convnet_student"} <= set(NAMES)


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (9, 13)])
@pytest.mark.parametrize("name", NAMES)
def test_shapes(name, size):
    model = build(name)
    assert model.embedding_dim == 32 and model.num_classes == 10
    x = images(size=size)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        z = model.forward_features(x)
        assert z.shape == (4, 32)
        logits = model.forward_head(z)
        assert logits.shape == (4, 10)
        assert torch.isfinite(z).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_head_of_features(name):
    model = build(name)
    x = images()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), rtol=0, atol=0)
    model.train()  # batch statistics: the same batch gives the same output
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_in_channels_option(name):
    model = build(name, in_channels=3)
    model.eval()
    assert model(images(channels=3)).shape == (4, 10)


@pytest.mark.parametrize("name", NAMES)
def test_head_is_linear_and_shareable(name):
    """The head is a LinearHead (10×32); its weights become a frozen g_t applicable to any 32-d embedding."""
    model = build(name)
    assert isinstance(model.head, LinearHead) and model.head.head_type == "linear"
    assert tuple(model.head.weight.shape) == (10, 32)
    model.eval()
    x = images()
    with torch.no_grad():
        z = model.forward_features(x)
        g_t = frozen_head_from_weights(model.head.weight, model.head.bias)
        torch.testing.assert_close(g_t(z), model.forward_head(z))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = build(name)
    model.train()
    model(images()).logsumexp(dim=1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("convnet")])  # digits defaults: 1 channel, 64-d
def test_create_model_drops_none_options(name):
    model = create_model(name, num_classes=10, in_channels=None, embedding_dim=None, head=None)
    default = MODELS.get(name)(num_classes=10)
    assert model.embedding_dim == default.embedding_dim == 64  # the constructor default survives
    assert isinstance(model.head, LinearHead)
    assert count_parameters(model) == count_parameters(default)
    model.eval()
    assert model.forward_features(images()).shape == (4, 64)


@pytest.mark.parametrize("name", NAMES)
def test_create_model_is_deterministic_under_seed(name):
    a, b = build(name, seed=3), build(name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)


def test_unknown_model_is_unknown_name():
    with pytest.raises(UnknownName, match="unknown model 'resnet9000'") as info:
        create_model("resnet9000", **CONFIG)
    msg = str(info.value)
    assert "resnet9000" in msg
    for name in MODELS.names():
        assert name in msg
    assert isinstance(info.value, KeyError)


def test_unknown_head_is_unknown_name():
    with pytest.raises(UnknownName, match="linear"):
        create_model(NAMES[0], head="sphereface", **CONFIG)


def test_count_parameters_by_hand():
    # convnet_student, 1 input channel, embedding 32, 10 classes:
    # conv 1→8: 8·1·9 = 72, BN 2·8 = 16; conv 8→16: 16·8·9 = 1152, BN 32;
    # embed linear 16·32 = 512 (no bias), BN1d 64; head 32·10 + 10 = 330. Total 2178.
    assert count_parameters(build("convnet_student")) == 2178
    # convnet_teacher: 288 + 64 + 18432 + 128 + 73728 + 256 + 4096 + 64 + 330 = 97386
    assert count_parameters(build("convnet_teacher")) == 97386


def test_student_is_much_smaller_than_teacher():
    student, teacher = count_parameters(build("convnet_student")), count_parameters(build("convnet_teacher"))
    assert student * 20 < teacher
    # every registered "*_student" has a "*_teacher" at least 20× larger
    for name in NAMES:
        if name.endswith("_student"):
            partner = name[: -len("_student")] + "_teacher"
            assert partner in MODELS
            assert count_parameters(build(name)) * 20 < count_parameters(build(partner))
