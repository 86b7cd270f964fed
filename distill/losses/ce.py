"""Cross-entropy of the student's own head against the labels (the γ·CE term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss


@LOSSES.register("ce")
class CrossEntropy(DistillLoss):
    """γ·CE: cross-entropy of the student's own logits against the labels."""

    needs = ("student_logits", "labels")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The batch mean of the cross-entropy."""
        return F.cross_entropy(inputs.student_logits, inputs.labels)
