"""Tests for distill.models.resnet_cifar: the RepDistiller CIFAR ResNets build by name, keep the embedding/head split,
match the published parameter counts, and let resnet32x4 and resnet8x4 share a head (both 256-d)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from distill.models import MODELS, count_parameters, create_model
from distill.models.heads import ArcFaceHead, LinearHead
from distill.models.resnet_cifar import CifarResNet

CIFAR_MODELS = {"resnet8": 64, "resnet20": 64, "resnet32": 64, "resnet56": 64, "resnet8x4": 256, "resnet32x4": 256}
# Millions of parameters (100 classes) as CRD (Tian et al. 2020) / RepDistiller list them, to 2 decimals
PUBLISHED_MILLIONS = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet8": 0.08,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The machine is shared: one torch thread is faster than a contended pool (and leaves cores to others)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build(name: str, seed: int = 0, **options) -> CifarResNet:
    torch.manual_seed(seed)
    return create_model(name, **({"num_classes": 100} | options))


def cifar_batch(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_all_cifar_models_are_registered():
    assert set(CIFAR_MODELS) <= set(MODELS.names())


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_shapes_and_split(name):
    model = build(name)
    dim = CIFAR_MODELS[name]
    assert isinstance(model, CifarResNet)
    assert model.embedding_dim == dim and model.num_classes == 100
    assert isinstance(model.head, LinearHead) and tuple(model.head.weight.shape) == (100, dim)
    assert isinstance(model.embed, torch.nn.Identity)  # z is the pooled feature itself
    x = cifar_batch()
    model.eval()
    with torch.no_grad():
        z = model.forward_features(x)
        logits = model(x)
        assert z.shape == (2, dim) and logits.shape == (2, 100)
        torch.testing.assert_close(logits, model.forward_head(z), rtol=0, atol=0)
        # z is the global average of the last stage's map: non-negative (after the final ReLU)
        assert (z >= 0).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_match_published(name):
    count = count_parameters(build(name))
    assert round(count / 1e6, 2) == PUBLISHED_MILLIONS[name], count  # equal at the published precision
    if name in ("resnet8x4", "resnet32x4"):  # the pair the recipe uses: within 2 %
        assert abs(count - PUBLISHED_MILLIONS[name] * 1e6) <= 0.02 * PUBLISHED_MILLIONS[name] * 1e6, count


def test_parameter_counts_exact():
    """Hand count of resnet8x4 (100 classes): stem 3·32·9 + BN 64 = 928; stage 1 (32→64, 1×1 shortcut):
    18432 + 128 + 36864 + 128 + 2048 + 128 = 57728; stage 2 (64→128, stride 2): 73728 + 256 + 147456 + 256
    + 8192 + 256 = 230144; stage 3 (128→256): 294912 + 512 + 589824 + 512 + 32768 + 512 = 919040; head
    256·100 + 100 = 25700. Total 1,233,540."""
    assert count_parameters(build("resnet8x4")) == 1_233_540
    assert count_parameters(build("resnet32x4")) == 7_433_860


def test_layer_layout():
    """resnet32x4: 5 blocks per stage; downsampling only at the first block of stages 2 and 3; a projection
    shortcut only where the width or stride changes."""
    model = build("resnet32x4")
    assert [len(stage) for stage in model.stages] == [5, 5, 5]
    shortcuts = [[not isinstance(b.shortcut, torch.nn.Identity) for b in stage] for stage in model.stages]
    assert shortcuts == [
        [True, False, False, False, False],
        [True, False, False, False, False],
        [True, False, False, False, False],
    ]
    strides = [[b.conv1.stride[0] for b in stage] for stage in model.stages]
    assert strides == [[1] * 5, [2, 1, 1, 1, 1], [2, 1, 1, 1, 1]]
    thin = build("resnet20")  # 16 → 16: no shortcut conv in the first stage
    assert isinstance(thin.stages[0][0].shortcut, torch.nn.Identity)
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(10, (16, 16, 32, 64), num_classes=10)


@pytest.mark.parametrize("name", ["resnet8x4", "resnet20"])
def test_embedding_dim_override_adds_projection(name):
    plain = build(name)
    same = build(name, embedding_dim=plain.embedding_dim)  # asking for the pooled size changes nothing
    assert isinstance(same.embed, torch.nn.Identity) and count_parameters(same) == count_parameters(plain)
    model = build(name, embedding_dim=128)
    assert model.embedding_dim == 128 and model.pooled_dim == CIFAR_MODELS[name]
    assert isinstance(model.embed[0], torch.nn.Linear) and isinstance(model.embed[1], torch.nn.BatchNorm1d)
    assert tuple(model.head.weight.shape) == (100, 128)
    pooled = CIFAR_MODELS[name]
    # + linear pooled→128 (no bias) + BN1d 2·128; the head grows/shrinks by (128 − pooled)·100
    assert count_parameters(model) - count_parameters(plain) == pooled * 128 + 2 * 128 + (128 - pooled) * 100
    model.eval()
    with torch.no_grad():
        z = model.forward_features(cifar_batch())
        assert z.shape == (2, 128)
        torch.testing.assert_close(model(cifar_batch()), model.forward_head(z), rtol=0, atol=0)


def test_head_swap_between_teacher_and_student():
    """TH-KD/SH-KD on CIFAR: both x4 models have 256-d z, so the teacher's classifier loads into the student
    (and back) as plain head.weight / head.bias."""
    teacher, student = build("resnet32x4", seed=1), build("resnet8x4", seed=2)
    assert teacher.embedding_dim == student.embedding_dim == 256
    head_t = {k: v for k, v in teacher.state_dict().items() if k.startswith("head.")}
    assert set(head_t) == {"head.weight", "head.bias"}
    student.head.load_state_dict({k[len("head.") :]: v for k, v in head_t.items()})
    torch.testing.assert_close(student.head.weight, teacher.head.weight, rtol=0, atol=0)
    student.eval(), teacher.eval()
    with torch.no_grad():
        z_s = student.forward_features(cifar_batch())
        torch.testing.assert_close(student(cifar_batch()), teacher.forward_head(z_s))
    # different embedding sizes refuse the swap
    with pytest.raises(RuntimeError, match="size mismatch"):
        build("resnet20").head.load_state_dict({k[len("head.") :]: v for k, v in head_t.items()})


def test_margin_head_and_other_inputs():
    model = build("resnet8x4", head="arcface", head_scale=16.0, head_margin=0.2)
    assert isinstance(model.head, ArcFaceHead) and model.head.scale == 16.0 and model.head.margin == 0.2
    assert model.head.bias is None
    gray = build("resnet8", in_channels=1, num_classes=10)
    gray.eval()
    with torch.no_grad():  # global pooling: any size ≥ 1 pixel after two stride-2 stages
        assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert gray(torch.randn(2, 1, 9, 13)).shape == (2, 10)


def test_train_step_reaches_every_parameter():
    model = build("resnet8x4", embedding_dim=64)
    model.train()
    torch.nn.functional.cross_entropy(model(cifar_batch(4)), torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_checkpoint_round_trip(tmp_path):
    """A checkpoint records arch + model_config; rebuilding gives the same network (what eval relies on)."""
    from distill.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    model = build("resnet8x4").eval()
    ckpt = Checkpoint(
        kind="student",
        arch="resnet8x4",
        model_config={"num_classes": 100, "in_channels": 3, "embedding_dim": 256},
        state_dict=model.state_dict(),
        head_type="linear",
        embedding_dim=256,
        num_classes=100,
        dataset={"spec": "cifar100:x", "split": "train", "fingerprint": "f", "image_shape": [3, 32, 32]},
    )
    path = save_checkpoint(ckpt, tmp_path / "s.pt")
    rebuilt = load_checkpoint(path).build_model()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(cifar_batch()), model(cifar_batch()), rtol=0, atol=0)
