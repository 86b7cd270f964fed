"""The needs-driven training step gives the same loss and gradients as computing every input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.losses import RECIPES, DistillInputs, build_criterion
from distill.models import create_model, embedding_and_feature_map
from distill.training.run import DistillStep

CLASSES, DIM = 4, 16
# recipes whose losses need a store-backed setup (memory banks) are covered by their own tests
STORELESS = sorted(r for r, weights in RECIPES.items() if not {"crd", "crd-exact"} & set(weights))


def _every_input(step: DistillStep, x, labels, teacher_embedding, indices):
    """The step as it computes every input, whatever the recipe reads."""
    z_s, feature_map = embedding_and_feature_map(step.student, x)
    z_s_t = step.projection(z_s)
    with torch.no_grad():
        teacher_logits = step.teacher_head(teacher_embedding)
    inputs = DistillInputs(
        student_embedding=z_s,
        student_logits=step.student.head.training_logits(z_s, labels),
        labels=labels,
        teacher_embedding=teacher_embedding,
        teacher_logits=teacher_logits,
        student_logits_th=step.teacher_head(z_s_t),
        student_embedding_t=z_s_t,
        indices=indices,
        student_feature_map=feature_map,
    )
    return step.criterion(inputs).total


def _loss_and_grads(recipe: str, head: str, th_alpha: float | None, full: bool):
    torch.manual_seed(0)
    student = create_model("convnet_student", num_classes=CLASSES, in_channels=1, embedding_dim=DIM, head=head)
    projection = nn.Linear(DIM, DIM)
    teacher_head = nn.Linear(DIM, CLASSES).requires_grad_(False)
    step = DistillStep(student, projection, build_criterion(recipe, th_alpha=th_alpha), teacher_head)
    x, labels = torch.randn(8, 1, 8, 8), torch.arange(8) % CLASSES
    args = (x, labels, torch.randn(8, DIM), torch.arange(8))
    total = _every_input(step, *args) if full else step(*args)[0]
    total.backward()
    grads = {n: p.grad.clone() for n, p in step.named_parameters() if p.grad is not None}
    return total.detach(), grads


@pytest.mark.parametrize("head", ["linear", "cosface"])
@pytest.mark.parametrize("th_alpha", [None, 0.5])
@pytest.mark.parametrize("recipe", STORELESS)
def test_step_equals_computing_every_input(recipe, th_alpha, head):
    total, grads = _loss_and_grads(recipe, head, th_alpha, full=False)
    expected_total, expected_grads = _loss_and_grads(recipe, head, th_alpha, full=True)
    torch.testing.assert_close(total, expected_total)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)
