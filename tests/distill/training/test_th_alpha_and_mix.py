"""The paper's α_TH form (weights split between the student head and the teacher head) and the mixed
prediction p' = (1−w)·p_s + w·p_s^TH at evaluation."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from distill.evaluation.sources import mixed_prediction_logits
from distill.losses import build_criterion
from distill.losses.recipes import apply_th_alpha, resolve_weights
from distill.models.heads import frozen_head, head_state
from featstore.errors import InvalidInput


def test_th_alpha_splits_ce_and_kd_between_the_heads():
    # γ = 1, a = 1.5 (the th-kd recipe, which also has th = 0.02 on top)
    weights = resolve_weights("th-kd", th_alpha=0.25)
    assert weights == pytest.approx({"ce": 0.75, "kd": 1.125, "ce_th": 0.25, "th": 0.02 + 0.375})
    assert apply_th_alpha({"ce": 1.0, "kd": 2.0}, 0.0) == {"ce": 1.0, "kd": 2.0, "ce_th": 0.0, "th": 0.0}
    assert resolve_weights("kd", th_alpha=1.0) == {"ce_th": 1.0, "th": 1.5}  # zero-weight terms dropped
    # docs/methods.md's one rule: --loss overrides first, then the split; an existing TH weight is added to
    assert resolve_weights("kd", "th=0.1", th_alpha=0.5) == pytest.approx(
        {"ce": 0.5, "kd": 0.75, "ce_th": 0.5, "th": 0.1 + 0.75}
    )
    assert resolve_weights("crd", th_alpha=0.5) == pytest.approx({"ce": 0.5, "crd": 0.8, "ce_th": 0.5})
    with pytest.raises(InvalidInput, match="--th-alpha must lie in"):
        resolve_weights("kd", th_alpha=1.5)


def test_th_alpha_criterion_equals_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    s, th, t = (torch.randn(6, 5, generator=g) for _ in range(3))
    y = torch.randint(0, 5, (6,), generator=g)
    from distill.losses import DistillInputs
    from distill.losses.base import kl_soft_targets

    inputs = DistillInputs(
        student_embedding=torch.randn(6, 3), student_logits=s, labels=y, teacher_logits=t, student_logits_th=th
    )
    alpha = 0.3
    got = build_criterion("kd", th_alpha=alpha)(inputs).total
    ce = torch.nn.functional.cross_entropy
    # CE' = (1−α)·CE(p_s, y) + α·CE(p_s^TH, y);  H' = (1−α)·H(p_s, p_t) + α·H(p_s^TH, p_t), weight 1.5
    expected = (
        (1 - alpha) * ce(s, y)
        + alpha * ce(th, y)
        + 1.5 * ((1 - alpha) * kl_soft_targets(s, t, 4.0) + alpha * kl_soft_targets(th, t, 4.0))
    )
    torch.testing.assert_close(got, expected)


def _student_ckpt(weight: torch.Tensor, projection: torch.Tensor | None):
    head = frozen_head("linear", weight, torch.zeros(weight.shape[0]))
    extra = {"teacher_head": head_state(head), "projection": {} if projection is None else {"weight": projection}}
    return types.SimpleNamespace(kind="student", extra=extra)


def test_mixed_prediction_is_the_convex_mix_of_probabilities():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 4)).astype(np.float32)
    student_logits = rng.normal(size=(7, 3)).astype(np.float32)
    w_t = torch.from_numpy(rng.normal(size=(3, 6)).astype(np.float32))
    proj = torch.from_numpy(rng.normal(size=(6, 4)).astype(np.float32))  # P: 4 → 6
    ckpt = _student_ckpt(w_t, proj)
    p_s = torch.softmax(torch.from_numpy(student_logits), 1).numpy()
    p_th = torch.softmax(torch.from_numpy(z) @ proj.t() @ w_t.t(), 1).numpy()
    for w in (0.0, 0.4, 1.0):
        got = np.exp(mixed_prediction_logits(ckpt, z, student_logits, w))
        np.testing.assert_allclose(got, (1 - w) * p_s + w * p_th, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="--th-mix must lie in"):
        mixed_prediction_logits(ckpt, z, student_logits, 1.2)
    with pytest.raises(InvalidInput, match="student"):
        mixed_prediction_logits(types.SimpleNamespace(kind="teacher", extra={}), z, student_logits, 0.5)
