"""Tests for distill.models.heads: hand-computed margin logits (ArcFace, CosFace), the ArcFace fallback branch,
gradients, defaults, frozen heads for every type, head_state round trips, and head_from_store on a real
store extracted with a margin-head teacher.

Reference: /work/shared/docs/methods.md ("with a margin (ArcFace-type) teacher head, the shared head works on
normalised embeddings and normalised class centres (cosine logits × scale)").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.models import create_model
from distill.models.heads import (
    HEADS,
    ArcFaceHead,
    CosFaceHead,
    LinearHead,
    frozen_head,
    frozen_head_from_weights,
    head_from_store,
    head_state,
)
from featstore.datasets import ImageDataset, load_dataset
from featstore.errors import InvalidInput, UnknownName
from featstore.extract import TeacherSource, extract_teacher
from featstore.store import open_store

MARGIN_HEADS = (ArcFaceHead, CosFaceHead)


def margin_head(cls, weight, scale: float, margin: float, dtype=torch.float64):
    weight = torch.as_tensor(weight, dtype=dtype)
    head = cls(weight.shape[1], weight.shape[0], scale=scale, margin=margin).to(dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------
# hand-computed logits
# ------------------------------------------------------------------------------------------------------
W2 = [[1.0, 0.0], [0.0, 1.0]]


def test_arcface_hand_case_at_the_class_centre():
    """z = [1, 0] lies on centre 0: cos = [1, 0]. Target logit s·cos(0 + m), other logit s·0.

    At exactly cos θ = 1 the head clamps cos to 1 − 1e-7 (to keep sqrt differentiable), which costs
    about s·sin(m)·sqrt(2e-7) ≈ 4e-4 here: hence the loose tolerance; see the off-centre case below.
    """
    head = margin_head(ArcFaceHead, W2, scale=2.0, margin=0.5)
    z = t64([[1.0, 0.0]])
    logits = head.training_logits(z, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(0.5), abs=1e-3)
    assert logits[0, 1].item() == pytest.approx(0.0, abs=1e-12)
    # label 1 instead: target θ = π/2 → s·cos(π/2 + m) = −s·sin(m); class 0 keeps s·cos 0 = s
    logits = head.training_logits(z, torch.tensor([1]))
    assert logits[0, 1].item() == pytest.approx(-2 * math.sin(0.5), abs=1e-9)
    assert logits[0, 0].item() == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize("theta", [0.3, 1.0, 2.0, math.pi - 0.5 - 0.01])
def test_arcface_off_centre_matches_cos_theta_plus_m_tightly(theta):
    head = margin_head(ArcFaceHead, W2, scale=2.0, margin=0.5)
    z = t64([[3.0 * math.cos(theta), 3.0 * math.sin(theta)]])  # norm 3: normalisation must remove it
    logits = head.training_logits(z, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(theta + 0.5), abs=1e-9)
    assert logits[0, 1].item() == pytest.approx(2 * math.sin(theta), abs=1e-9)


def test_cosface_hand_case():
    head = margin_head(CosFaceHead, W2, scale=2.0, margin=0.35)
    z = t64([[1.0, 0.0], [0.0, 5.0]])
    logits = head.training_logits(z, torch.tensor([0, 0]))
    expected = t64([[2 * (1 - 0.35), 0.0], [2 * (0 - 0.35), 2.0]])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", MARGIN_HEADS)
def test_margin_free_forward_is_scaled_cosine(cls):
    head = margin_head(cls, W2, scale=2.0, margin=0.5)
    z = t64([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
    expected = 2.0 * F.normalize(z, dim=1) @ F.normalize(t64(W2), dim=1).T
    torch.testing.assert_close(head(z), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(head(t64([[1.0, 0.0]])), t64([[2.0, 0.0]]), rtol=0, atol=1e-12)


def test_margin_heads_normalise_the_class_centres():
    """Unnormalised centres: only their directions matter."""
    w = t64([[4.0, 0.0], [0.0, 0.1], [3.0, 4.0]])
    z = t64([[2.0, 1.0]])
    for cls in MARGIN_HEADS:
        head = margin_head(cls, w, scale=5.0, margin=0.2)
        cos = F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
        torch.testing.assert_close(head(z), 5.0 * cos, rtol=0, atol=1e-12)


def test_arcface_fallback_branch_past_pi_minus_m():
    """θ > π − m: cos(θ + m) is no longer monotonic, the head uses cos θ − sin(π − m)·m instead."""
    m, s = 0.5, 2.0
    head = margin_head(ArcFaceHead, W2, scale=s, margin=m)
    theta = math.pi - 0.2  # > π − 0.5
    z = t64([[math.cos(theta), math.sin(theta)]])  # nearly opposite centre 0
    logits = head.training_logits(z, torch.tensor([0]))
    expected = s * (math.cos(theta) - math.sin(math.pi - m) * m)
    assert logits[0, 0].item() == pytest.approx(expected, abs=1e-9)
    assert logits[0, 0].item() != pytest.approx(s * math.cos(theta + m), abs=1e-3)
    assert logits[0, 1].item() == pytest.approx(s * math.sin(theta), abs=1e-9)
    # exactly opposite (cos = −1, clamped by 1e-7)
    logits = head.training_logits(t64([[-1.0, 0.0]]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(s * (-1.0 - math.sin(math.pi - m) * m), abs=1e-5)


def test_arcface_target_logit_is_monotonic_in_theta():
    """The fallback keeps the target logit decreasing in θ over the whole [0, π] range."""
    head = margin_head(ArcFaceHead, W2, scale=1.0, margin=0.5)
    thetas = torch.linspace(0.0, math.pi, 400, dtype=torch.float64)
    z = torch.stack([thetas.cos(), thetas.sin()], dim=1)
    target = head.training_logits(z, torch.zeros(400, dtype=torch.long))[:, 0]
    assert (target[1:] < target[:-1]).all()
    # and the margin always lowers the target logit
    assert (target <= head(z)[:, 0] + 1e-9).all()


@pytest.mark.parametrize("cls", MARGIN_HEADS)
def test_margin_only_on_the_target_column(cls):
    torch.manual_seed(0)
    head = cls(6, 5, scale=10.0, margin=0.3).double()
    z = torch.randn(8, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    free, trained = head(z), head.training_logits(z, labels)
    mask = F.one_hot(labels, 5).bool()
    torch.testing.assert_close(trained[~mask], free[~mask], rtol=0, atol=0)
    assert (trained[mask] < free[mask]).all()


# ------------------------------------------------------------------------------------------------------
# gradients, defaults, construction
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "arcface", "cosface"])
def test_gradients_flow_to_weight_and_embedding(name):
    torch.manual_seed(0)
    head = HEADS.get(name)(6, 4)
    z = torch.randn(5, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0])
    loss = F.cross_entropy(head.training_logits(z, labels), labels)
    loss.backward()
    for grad in (z.grad, head.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("cls", MARGIN_HEADS)
def test_margin_gradient_finite_on_the_class_centre(cls):
    """z exactly on its class centre (cos = 1): sqrt(1 − cos²) must not give NaN gradients."""
    head = margin_head(cls, W2, scale=2.0, margin=0.5, dtype=torch.float32)
    z = torch.tensor([[1.0, 0.0]], requires_grad=True)
    head.training_logits(z, torch.tensor([0])).sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(head.weight.grad).all()


def test_margin_logits_gradcheck():
    torch.manual_seed(1)
    for cls in MARGIN_HEADS:
        head = cls(3, 4, scale=3.0, margin=0.3).double()
        z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([0, 1, 2, 3])
        assert torch.autograd.gradcheck(lambda x: head.training_logits(x, labels), (z,))


def test_defaults():
    arc, cos, lin = ArcFaceHead(4, 3), CosFaceHead(4, 3), LinearHead(4, 3)
    assert (arc.scale, arc.margin) == (30.0, 0.5)
    assert (cos.scale, cos.margin) == (30.0, 0.35)
    assert (lin.scale, lin.margin) == (None, None)
    assert arc.bias is None and cos.bias is None and lin.bias is not None
    assert (arc.head_type, cos.head_type, lin.head_type) == ("arcface", "cosface", "linear")
    assert arc.weight.shape == (3, 4) and lin.weight.shape == (3, 4)
    custom = ArcFaceHead(4, 3, scale=16, margin=0.2)
    assert (custom.scale, custom.margin) == (16.0, 0.2) and isinstance(custom.scale, float)
    # scale/margin are not parameters (never trained)
    assert {n for n, _ in arc.named_parameters()} == {"weight"}


@pytest.mark.parametrize("cls", MARGIN_HEADS)
def test_margin_heads_reject_bias(cls):
    with pytest.raises(InvalidInput, match="bias"):
        cls(4, 3, bias=True)


def test_linear_head_training_logits_ignore_labels():
    torch.manual_seed(0)
    head = LinearHead(4, 3)
    z = torch.randn(5, 4)
    torch.testing.assert_close(head.training_logits(z, torch.tensor([0, 1, 2, 0, 1])), head(z))
    torch.testing.assert_close(head(z), z @ head.weight.T + head.bias)


def test_registry_knows_the_three_heads():
    for name in ("linear", "arcface", "cosface"):
        assert HEADS.get(name).head_type == name
    with pytest.raises(UnknownName, match="unknown head 'sphereface'"):
        HEADS.get("sphereface")


# ------------------------------------------------------------------------------------------------------
# frozen heads and head_state
# ------------------------------------------------------------------------------------------------------
def _weights(classes=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, dim, generator=g), torch.randn(classes, generator=g)


def test_frozen_linear_head():
    w, b = _weights()
    head = frozen_head("linear", w, b)
    assert isinstance(head, LinearHead) and not head.training
    assert all(not p.requires_grad for p in head.parameters())
    assert torch.equal(head.weight, w) and torch.equal(head.bias, b)
    assert head.weight.data_ptr() != w.data_ptr()  # a copy, not a view of the caller's tensor
    z = torch.randn(3, 6)
    torch.testing.assert_close(head(z), z @ w.T + b)
    w.add_(1.0)  # the caller changing its tensor does not change the frozen head
    assert not torch.equal(head.weight, w)


def test_frozen_linear_head_without_bias():
    w, _ = _weights()
    head = frozen_head("linear", w, None)
    assert head.bias is None
    z = torch.randn(3, 6)
    torch.testing.assert_close(head(z), z @ w.T)
    legacy = frozen_head_from_weights(w, None)
    assert isinstance(legacy, LinearHead) and legacy.bias is None and torch.equal(legacy.weight, w)


@pytest.mark.parametrize("name,cls", [("arcface", ArcFaceHead), ("cosface", CosFaceHead)])
def test_frozen_margin_head_gives_margin_free_scaled_cosine(name, cls):
    w, _ = _weights()
    head = frozen_head(name, w, None, scale=7.0, margin=0.4)
    assert isinstance(head, cls) and not head.training
    assert all(not p.requires_grad for p in head.parameters())
    assert torch.equal(head.weight, w)
    assert (head.scale, head.margin) == (7.0, 0.4)
    z = torch.randn(4, 6)
    expected = 7.0 * F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
    torch.testing.assert_close(head(z), expected, rtol=1e-5, atol=1e-5)
    # defaults when the store records no scale/margin
    default = frozen_head(name, w, None)
    assert default.scale == 30.0 and default.margin == cls.default_margin


def test_frozen_head_passes_gradient_to_its_input_only():
    """TH-KD: g_t(z_s) must give gradients to z_s while g_t itself stays frozen."""
    for name in ("linear", "arcface", "cosface"):
        w, b = _weights()
        head = frozen_head(name, w, b if name == "linear" else None, scale=4.0, margin=0.3)
        z = torch.randn(3, 6, requires_grad=True)
        head(z).pow(2).sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0
        assert head.weight.grad is None


def test_frozen_head_unknown_type():
    w, _ = _weights()
    with pytest.raises(UnknownName, match="unknown head 'nope'"):
        frozen_head("nope", w)


@pytest.mark.parametrize("name", ["linear", "arcface", "cosface"])
def test_head_state_round_trip(name):
    torch.manual_seed(3)
    head = HEADS.get(name)(6, 5) if name == "linear" else HEADS.get(name)(6, 5, scale=12.0, margin=0.25)
    state = head_state(head)
    assert state["type"] == name
    assert torch.equal(state["weight"], head.weight.detach())
    assert not state["weight"].requires_grad
    if name == "linear":
        assert torch.equal(state["bias"], head.bias.detach()) and state["scale"] is None and state["margin"] is None
    else:
        assert state["bias"] is None and (state["scale"], state["margin"]) == (12.0, 0.25)
    # a detached copy: training the head further does not change the saved state
    original = head.weight.detach().clone()
    with torch.no_grad():
        head.weight.add_(1.0)
    assert not torch.equal(state["weight"], head.weight.detach())
    with torch.no_grad():
        head.weight.copy_(original)
    rebuilt = frozen_head(state["type"], state["weight"], state["bias"], state["scale"], state["margin"])
    assert head_state(rebuilt).keys() == state.keys()
    for key, value in head_state(rebuilt).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state[key])
        else:
            assert value == state[key]
    z = torch.randn(4, 6)
    torch.testing.assert_close(rebuilt(z), head(z))


def test_head_state_survives_torch_save_weights_only(tmp_path):
    head = ArcFaceHead(6, 5, scale=12.0, margin=0.25)
    torch.save(head_state(head), tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)
    assert loaded["type"] == "arcface" and torch.equal(loaded["weight"], head.weight.detach())


# ------------------------------------------------------------------------------------------------------
# head_from_store on a real store
# ------------------------------------------------------------------------------------------------------
DIM, CLASSES, N = 16, 10, 60


@pytest.fixture(scope="module")
def small_digits() -> ImageDataset:
    d = load_dataset("digits", "train")
    return ImageDataset(
        spec=d.spec,
        split=d.split,
        images=d.images[:N],
        labels=d.labels[:N],
        num_classes=d.num_classes,
        view_policy=d.view_policy,
    )


def _teacher(head_type: str, *, bias: bool, scale=None, margin=None, seed=0) -> TeacherSource:
    torch.manual_seed(seed)
    model = create_model("convnet_teacher", num_classes=CLASSES, embedding_dim=DIM).eval()
    rng = np.random.default_rng(seed)
    return TeacherSource(
        model=model,
        arch="convnet_teacher",
        checkpoint_sha256="h" * 64,
        embedding_dim=DIM,
        input_shape=[1, 8, 8],
        head_type=head_type,
        head_weight=rng.standard_normal((CLASSES, DIM)).astype(np.float32),
        head_bias=rng.standard_normal(CLASSES).astype(np.float32) if bias else None,
        head_scale=scale,
        head_margin=margin,
    )


@pytest.fixture(scope="module")
def arcface_store(tmp_path_factory, small_digits):
    teacher = _teacher("arcface", bias=False, scale=16.0, margin=0.2)
    url = str(tmp_path_factory.mktemp("heads") / "arc.zarr")
    extract_teacher(teacher, small_digits, url, views=2, dtype="float32", chunk_rows=25, progress=False)
    return open_store(url), teacher


def test_head_from_store_margin_head(arcface_store):
    store, teacher = arcface_store
    assert store.meta["head"]["type"] == "arcface"
    assert store.meta["head"]["scale"] == 16.0 and store.meta["head"]["margin"] == 0.2
    head = head_from_store(store)
    assert isinstance(head, ArcFaceHead) and not head.training and head.bias is None
    assert all(not p.requires_grad for p in head.parameters())
    assert (head.scale, head.margin) == (16.0, 0.2)
    np.testing.assert_array_equal(head.weight.detach().numpy(), teacher.head_weight)
    embeddings, labels, _ = store.read_rows(0, N)
    z = torch.from_numpy(embeddings.reshape(-1, DIM))
    w = torch.from_numpy(teacher.head_weight)
    expected = 16.0 * F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
    with torch.no_grad():
        got = head(z)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the same thing in float64 numpy, independent of torch's normalize
    zn = z.double().numpy() / np.linalg.norm(z.double().numpy(), axis=1, keepdims=True)
    wn = teacher.head_weight.astype(np.float64) / np.linalg.norm(
        teacher.head_weight.astype(np.float64), axis=1, keepdims=True
    )
    np.testing.assert_allclose(got.numpy(), 16.0 * zn @ wn.T, rtol=1e-4, atol=1e-4)
    # no margin at distillation time, whatever the labels
    assert np.abs(got.numpy()).max() <= 16.0 + 1e-4


def test_head_from_store_margin_head_default_scale(tmp_path, small_digits):
    """A margin teacher whose source records no scale/margin: the head's own defaults apply."""
    teacher = _teacher("cosface", bias=False)
    url = str(tmp_path / "cos.zarr")
    extract_teacher(teacher, small_digits, url, views=1, dtype="float32", progress=False)
    head = head_from_store(open_store(url))
    assert isinstance(head, CosFaceHead) and (head.scale, head.margin) == (30.0, 0.35)


@pytest.mark.parametrize("bias", [True, False])
def test_head_from_store_linear(tmp_path, small_digits, bias):
    teacher = _teacher("linear", bias=bias)
    url = str(tmp_path / "lin.zarr")
    extract_teacher(teacher, small_digits, url, views=1, dtype="float32", progress=False)
    store = open_store(url)
    head = head_from_store(store)
    assert isinstance(head, LinearHead) and not head.training
    assert (head.bias is not None) == bias
    embeddings, _, _ = store.read_rows(0, N)
    z = torch.from_numpy(embeddings[:, 0])
    expected = z @ torch.from_numpy(teacher.head_weight).T
    if bias:
        expected = expected + torch.from_numpy(teacher.head_bias)
    with torch.no_grad():
        torch.testing.assert_close(head(z), expected)
