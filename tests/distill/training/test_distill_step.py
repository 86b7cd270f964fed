"""The training step computes only the inputs its recipe's losses declare in ``needs``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import distill.training.step as step_module
from distill.losses import build_criterion
from distill.models import create_model, embedding_and_feature_map
from distill.training.run import DistillStep

CLASSES, DIM = 10, 16


class Counting(nn.Module):
    """Wraps a module and counts its calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def _step(recipe: str) -> tuple[DistillStep, Counting, Counting]:
    torch.manual_seed(0)
    student = create_model("convnet_student", num_classes=CLASSES, in_channels=1, embedding_dim=DIM)
    projection = Counting(nn.Identity())
    teacher_head = Counting(nn.Linear(DIM, CLASSES).requires_grad_(False))
    return DistillStep(student, projection, build_criterion(recipe), teacher_head), projection, teacher_head


def _run(step: DistillStep, monkeypatch) -> dict[str, int]:
    """Run one step; return how often the step asked for the student's feature map."""
    calls = {"feature_map": 0}

    def counted(model, x):
        calls["feature_map"] += 1
        return embedding_and_feature_map(model, x)

    monkeypatch.setattr(step_module, "embedding_and_feature_map", counted)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % CLASSES
    total, terms = step(x, y, torch.randn(8, DIM), torch.arange(8))
    assert torch.isfinite(total) and set(terms) == set(step.criterion.weights)
    total.backward()
    return calls


@pytest.mark.parametrize(
    "recipe,projection_calls,teacher_head_calls,feature_map",
    [
        ("vanilla", 0, 0, 0),  # CE only: no teacher head, no projection, no feature map
        ("kd", 0, 1, 0),  # the teacher head on the stored embedding only
        ("th-kd", 1, 2, 0),  # ... and on the projected student embedding
        ("sp", 0, 0, 1),  # SP reads the student's last feature map
    ],
)
def test_step_computes_only_what_the_recipe_needs(
    recipe, projection_calls, teacher_head_calls, feature_map, monkeypatch
):
    step, projection, teacher_head = _step(recipe)
    calls = _run(step, monkeypatch)
    assert (projection.calls, teacher_head.calls, calls["feature_map"]) == (
        projection_calls,
        teacher_head_calls,
        feature_map,
    )


def test_criterion_needs_is_the_union_of_its_terms():
    needs = build_criterion("th-kd").needs
    assert needs == {"student_logits", "labels", "teacher_logits", "student_logits_th"}
