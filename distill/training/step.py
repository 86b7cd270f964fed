"""One training step of a student as a module, what a step reports, and the student head's tie to the teacher's.

:class:`DistillStep` is the step, :class:`StepStats` its report; :func:`init_head_from` starts the student's
classifier from the teacher's and :func:`head_cosine` measures how far the two agree.

The step lives apart from the run object (:mod:`distill.training.run`) because it is the part DDP wraps and
the part a new loss input changes; the run object only drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.losses import DistillInputs
from distill.models import embedding_and_feature_map
from featstore.errors import InvalidInput


def init_head_from(student_head: nn.Module, teacher_head: nn.Module) -> None:
    """Start the student's classifier from the teacher's (official-code option; it stays trainable)."""
    if student_head.weight.shape != teacher_head.weight.shape:
        raise InvalidInput(
            f"cannot initialise the student head {tuple(student_head.weight.shape)} from the "
            f"teacher head {tuple(teacher_head.weight.shape)}: sizes differ"
        )
    with torch.no_grad():
        student_head.weight.copy_(teacher_head.weight)
        if student_head.bias is not None and teacher_head.bias is not None:
            student_head.bias.copy_(teacher_head.bias)


def head_cosine(student_head: nn.Module, teacher_head: nn.Module) -> float | None:
    """Measure how far the two classifiers agree: the mean over classes of cos(student row c, teacher row c).

    Logged per epoch, as in the official TH-KD code.

    Returns:
        The mean cosine, or None when the two heads' sizes differ.
    """
    if student_head.weight.shape != teacher_head.weight.shape:
        return None
    with torch.no_grad():
        return float(torch.nn.functional.cosine_similarity(student_head.weight, teacher_head.weight, dim=1).mean())


class DistillStep(nn.Module):
    """Everything trainable in one module, so that one DistributedDataParallel wrapper synchronises all of it.

    That is the student, the projection P and the loss parameters (e.g. CRD's projections). ``forward`` is one
    training step's loss; the frozen teacher head only ever sees stored or projected embeddings.

    The step computes only the inputs the recipe's losses declare in ``needs`` (PML's ``requires_knn``
    pattern): a recipe without TH-KD never applies the teacher head to the student, one without SP never
    keeps the feature map, so a new loss that needs a new tensor adds a line here and nothing runs for
    recipes that do not use it.

    Args:
        student: The student network.
        projection: P, from the student's embedding space to the teacher's (identity when they match).
        criterion: The recipe's weighted losses; its ``needs`` decide what ``forward`` computes.
        teacher_head: The frozen teacher classifier g_t.
    """

    def __init__(
        self, student: nn.Module, projection: nn.Module, criterion: nn.Module, teacher_head: nn.Module
    ) -> None:
        super().__init__()
        self.student, self.projection, self.criterion = student, projection, criterion
        self.teacher_head = teacher_head  # frozen: no parameter requires grad
        self.needs = criterion.needs

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, teacher_embedding: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute one step's loss from the inputs the recipe's losses need.

        Args:
            x: The rendered student input images of the batch.
            labels: The batch's class labels.
            teacher_embedding: The stored (or online) teacher embeddings of the batch.
            indices: The batch's sample ids (contrastive memories index by them).

        Returns:
            (the weighted total loss, each loss term by name).
        """
        needs = self.needs
        if "student_feature_map" in needs:
            z_s, feature_map = embedding_and_feature_map(self.student, x)
        else:
            z_s, feature_map = self.student.forward_features(x), None
        projected = needs & {"student_embedding_t", "student_logits_th"}
        z_s_t = self.projection(z_s) if projected else None
        teacher_logits = None
        if "teacher_logits" in needs:
            with torch.no_grad():
                teacher_logits = self.teacher_head(teacher_embedding)
        inputs = DistillInputs(
            student_embedding=z_s,
            student_logits=self.student.head.training_logits(z_s, labels) if "student_logits" in needs else None,
            labels=labels,
            teacher_embedding=teacher_embedding,
            teacher_logits=teacher_logits,
            student_logits_th=self.teacher_head(z_s_t) if "student_logits_th" in needs else None,
            student_embedding_t=z_s_t,
            indices=indices,
            student_feature_map=feature_map,
        )
        result = self.criterion(inputs)
        return result.total, result.terms


@dataclass
class StepStats:
    """What one step reports: its loss terms (floats), batch size, and optional phase timings."""

    total: float
    terms: dict[str, float]
    samples: int
    phases: dict[str, float]
    indices: Any  # the batch's sample ids (numpy), so benchmark variants can check they saw the same rows


__all__ = ["DistillStep", "StepStats", "head_cosine", "init_head_from"]
