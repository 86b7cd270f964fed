"""``module:function`` students: built only with trust_code, probed for shape, and rebuilt from checkpoints."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from distill.models.code_models import CodeStudent
from distill.models.hub_students import BackboneStudent
from distill.models.registry import accepts, create_model
from featstore.errors import InvalidInput

CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    CALLS = []

    def backbone(in_channels):  # takes only what it needs: fsd passes the arguments it names
        CALLS.append(in_channels)
        return nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class Shaped(nn.Module):
        def __init__(self, num_classes, in_channels, embedding_dim):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(embedding_dim))
            self.head = nn.Linear(embedding_dim, num_classes)

        def forward_features(self, x):
            return self.body(x)

    def shaped(**kwargs):
        return Shaped(kwargs["num_classes"], kwargs["in_channels"], kwargs["embedding_dim"])

    def shaped_fixed_width(num_classes, in_channels):
        return Shaped(num_classes, in_channels, 7)

    def not_a_module():
        return "a string"

    def feature_map(in_channels):
        return nn.Conv2d(in_channels, 4, 3)

    def broken(num_classes):
        raise ValueError("no such width")
    """
)


@pytest.fixture
def code(tmp_path, monkeypatch):
    name = f"fsd_test_students_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_code_student_is_refused_without_trust_code(code):
    with pytest.raises(InvalidInput, match="--trust-code"):
        create_model(f"{code}:backbone", num_classes=3, in_channels=1, embedding_dim=8, input_size=8)
    assert code not in sys.modules  # refused before anything was imported


def test_a_backbone_gets_fsd_embedding_layer_and_head(code):
    model = create_model(
        f"{code}:backbone", trust_code=True, num_classes=3, in_channels=1, embedding_dim=8, input_size=8
    )
    assert isinstance(model, BackboneStudent)
    assert sys.modules[code].CALLS == [1]  # called once, with the one argument it takes
    x = torch.randn(4, 1, 8, 8)
    assert model.forward_features(x).shape == (4, 8)
    assert model(x).shape == (4, 3)
    assert model.head.weight.shape == (3, 8)  # TH-KD puts the teacher's (C, D) head here
    assert accepts(f"{code}:backbone", "input_size") and not accepts(f"{code}:backbone", "head")
    assert len(model.code_sha256) == 64


def test_an_fsd_shaped_model_is_used_as_it_is_and_rebuilds_to_the_same_state(code):
    spec = f"{code}:shaped"
    model = create_model(spec, trust_code=True, num_classes=3, in_channels=1, embedding_dim=5, input_size=8)
    assert isinstance(model, CodeStudent)
    assert model.head is model.net.head and model.embedding_dim == 5
    x = torch.randn(2, 1, 8, 8)
    again = create_model(spec, trust_code=True, num_classes=3, in_channels=1, embedding_dim=5, input_size=8)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))
    assert set(model.state_dict()) == {"net.body.1.weight", "net.body.1.bias", "net.head.weight", "net.head.bias"}


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("shaped_fixed_width", "7-d embeddings, 5 asked for"),
        ("not_a_module", "must return a torch.nn.Module"),
        ("feature_map", "not (batch, features)"),
        ("broken", "failed: ValueError: no such width"),
        ("missing", "cannot import"),
    ],
)
def test_a_code_student_of_the_wrong_shape_is_one_clear_error(code, function, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_model(f"{code}:{function}", trust_code=True, num_classes=3, in_channels=1, embedding_dim=5, input_size=8)


def test_a_registered_name_is_never_taken_for_code():
    model = create_model("convnet_student", trust_code=False, num_classes=3, in_channels=1, embedding_dim=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
