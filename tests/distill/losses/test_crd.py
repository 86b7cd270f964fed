"""``crd`` as RepDistiller's CRDLoss runs it: value and gradients equal, to 1e-5, an independent float64
evaluation of the official formulas (NCE with Z fixed from the first batch, P_n = 1/N, detached momentum
memories) given the same memory contents and contrast indices, over two steps (so the fixed Z and the
memory update are exercised too); per-anchor negatives come from other classes."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from distill.losses import DistillInputs, TrainingContext, build_criterion
from distill.losses.crd import ContrastiveRepresentationKD, OtherClassNegatives
from featstore.errors import InvalidInput

N, CLASSES, D_S, D_T, FEAT, K, TAU = 40, 4, 6, 5, 8, 7, 0.07


class _Store:
    shape = types.SimpleNamespace(num_samples=N, dim=D_T, num_views=1)

    def labels(self) -> np.ndarray:
        return np.arange(N) % CLASSES


def _loss(negatives: int = K) -> ContrastiveRepresentationKD:
    loss = ContrastiveRepresentationKD(feat_dim=FEAT, negatives=negatives, tau=TAU, momentum=0.5)
    torch.manual_seed(0)
    loss.setup(TrainingContext(_Store(), D_S, D_T, N, torch.device("cpu"), seed=3))
    return loss


def _contrast(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official sampling, written here: own sample, then K of the other classes without replacement."""
    labels = np.arange(N) % CLASSES
    rows = [np.concatenate([[i], rng.choice(np.flatnonzero(labels != labels[i]), K, replace=False)]) for i in idx]
    return np.stack(rows)


def _reference_side(anchor: torch.Tensor, memory: np.ndarray, contrast: np.ndarray, z: float | None):
    """One side of RepDistiller's CRD, element by element in float64: (loss, Z)."""
    b = anchor.shape[0]
    scores = torch.stack(
        [
            torch.stack([torch.exp(torch.dot(torch.from_numpy(memory[j]), anchor[i]) / TAU) for j in contrast[i]])
            for i in range(b)
        ]
    )
    if z is None:
        z = float(scores.detach().mean()) * N
    p = scores / z
    m, pn = K, 1.0 / N
    total = 0.0
    for i in range(b):
        total = total + torch.log(p[i, 0] / (p[i, 0] + m * pn + 1e-7))
        for k in range(1, K + 1):
            total = total + math.log(m * pn) - torch.log(p[i, k] + m * pn + 1e-7)
    return -total / b, z


def _embed(z: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    w, bias = linear.weight.detach().double().requires_grad_(), linear.bias.detach().double().requires_grad_()
    v = z @ w.t() + bias
    return v / v.pow(2).sum(1, keepdim=True).sqrt(), w, bias


def test_value_gradients_fixed_z_and_memories_equal_the_official_formulas():
    loss = _loss()
    rng = np.random.default_rng(0)
    memory_s = rng.normal(size=(N, FEAT))
    memory_t = rng.normal(size=(N, FEAT))
    memory_s /= np.linalg.norm(memory_s, axis=1, keepdims=True)
    memory_t /= np.linalg.norm(memory_t, axis=1, keepdims=True)
    loss.memory_s.copy_(torch.from_numpy(memory_s))
    loss.memory_t.copy_(torch.from_numpy(memory_t))
    z_ref: list[float | None] = [None, None]
    for step, idx in enumerate((np.array([0, 5, 9, 14, 22]), np.array([5, 1, 30, 17]))):
        contrast = _contrast(idx, rng)
        loss.sampler.draw = lambda indices, labels, c=contrast: torch.from_numpy(c)
        z_s = torch.from_numpy(rng.normal(size=(len(idx), D_S))).float().requires_grad_()
        z_t = torch.from_numpy(rng.normal(size=(len(idx), D_T))).float()
        inputs = DistillInputs(
            student_embedding=z_s,
            student_logits=torch.zeros(len(idx), CLASSES),
            labels=torch.from_numpy(idx % CLASSES),
            teacher_embedding=z_t,
            indices=torch.from_numpy(idx),
        )
        # the reference, from copies of the projections (before the step changes anything)
        zs64 = z_s.detach().double().requires_grad_()
        v_s, w_s, b_s = _embed(zs64, loss.embed_s)
        v_t, w_t, b_t = _embed(z_t.double(), loss.embed_t)
        ref_s, z_ref[0] = _reference_side(v_s, memory_t, contrast, z_ref[0])  # student anchor, teacher memory
        ref_t, z_ref[1] = _reference_side(v_t, memory_s, contrast, z_ref[1])
        reference = ref_s + ref_t
        reference.backward()

        loss.embed_s.zero_grad()
        loss.embed_t.zero_grad()
        value = loss(inputs)
        value.backward()
        assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-5), step
        for ours, theirs in ((z_s.grad, zs64.grad), (loss.embed_s.weight.grad, w_s.grad),
                             (loss.embed_s.bias.grad, b_s.grad), (loss.embed_t.weight.grad, w_t.grad),
                             (loss.embed_t.bias.grad, b_t.grad)):  # fmt: skip
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loss.normaliser.numpy(), z_ref, rtol=1e-6)  # Z from the first batch only
        # the momentum update, after the scores: M[i] ← normalise(0.5·M[i] + 0.5·v_i)
        for memory, v in ((memory_s, v_s), (memory_t, v_t)):
            new = 0.5 * memory[idx] + 0.5 * v.detach().numpy()
            memory[idx] = new / np.linalg.norm(new, axis=1, keepdims=True)
        np.testing.assert_allclose(loss.memory_s.numpy(), memory_s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loss.memory_t.numpy(), memory_t, rtol=1e-5, atol=1e-6)


def test_negatives_are_per_anchor_from_other_classes():
    labels = np.arange(N) % CLASSES
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1, 2, 7, 8])
    drawn = OtherClassNegatives(labels, K, gen).draw(idx, torch.from_numpy(labels[idx.numpy()])).numpy()
    assert drawn.shape == (5, K + 1) and (drawn[:, 0] == idx.numpy()).all()
    for row in drawn:
        negatives = row[1:]
        assert (labels[negatives] != labels[row[0]]).all()
        assert len(set(negatives.tolist())) == K  # without replacement: 30 others ≥ K
    assert len({tuple(r[1:]) for r in drawn}) == 5  # each anchor its own draw
    many = OtherClassNegatives(labels, 35, gen).draw(idx[:2], torch.tensor([0, 1])).numpy()  # 35 > 30 others
    assert (labels[many[:, 1:]] != np.array([[0], [1]])).all()  # with replacement, still other classes


def test_k_capped_memory_initialisation_and_refusals():
    loss = _loss(negatives=16384)
    assert loss.k == N - 1
    bound = 1 / math.sqrt(FEAT / 3)  # RepDistiller's uniform ±1/√(d/3) initial memory
    assert loss.memory_s.abs().max() <= bound and loss.memory_s.std() > bound / 3
    assert (loss.normaliser < 0).all()  # Z not yet set
    with pytest.raises(InvalidInput, match="must be positive"):
        ContrastiveRepresentationKD(tau=0)
    one_class = types.SimpleNamespace(shape=_Store.shape, labels=lambda: np.zeros(N, np.int64))
    with pytest.raises(InvalidInput, match="only one class"):
        ContrastiveRepresentationKD().setup(TrainingContext(one_class, D_S, D_T, N, torch.device("cpu")))


def test_recipes_name_both_crds():
    assert set(build_criterion("crd").losses) == {"ce", "crd"}
    assert set(build_criterion("crd-exact").losses) == {"ce", "crd-exact"}
    assert type(build_criterion("crd").losses["crd"]).__name__ == "ContrastiveRepresentationKD"


def test_scores_stay_float32_under_bf16_autocast_and_the_gradient_keeps_the_anchor_dtype():
    """--amp: the 16k-term NCE is summed in float32 whatever autocast does to the projections; the loss
    under bf16 autocast equals the float32 loss to bf16 rounding of the inputs, and gradients flow."""
    rng = np.random.default_rng(1)
    idx = np.array([0, 5, 9, 14])
    contrast = torch.from_numpy(_contrast(idx, rng))
    student = torch.from_numpy(rng.normal(size=(len(idx), D_S))).float()
    values = []
    for autocast in (False, True):
        loss = _loss()
        loss.sampler.draw = lambda indices, labels, c=contrast: c
        z_s = student.clone().requires_grad_()
        inputs = DistillInputs(
            student_embedding=z_s,
            student_logits=torch.zeros(len(idx), CLASSES),
            labels=torch.from_numpy(idx % CLASSES),
            teacher_embedding=torch.ones(len(idx), D_T),
            indices=torch.from_numpy(idx),
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = loss(inputs)
        value.backward()
        assert value.dtype == torch.float32 and z_s.grad.dtype == torch.float32 and torch.isfinite(z_s.grad).all()
        values.append(float(value.detach()))
    assert values[1] == pytest.approx(values[0], rel=2e-2)
    assert values[1] != values[0]  # autocast did act on the projections
