"""Logit KD (Hinton et al. 2015): KL_T between the teacher's and the student's softened predictions.

The teacher logits are the stored head applied to the stored embedding — the teacher network never runs.
"""

from __future__ import annotations

import torch

from distill.losses.base import LOSSES, DistillInputs, DistillLoss, kl_soft_targets


@LOSSES.register("kd")
class LogitKD(DistillLoss):
    """Hinton's KD between the student's logits and the stored teacher logits.

    Args:
        temperature: T, the softening temperature.
    """

    needs = ("student_logits", "teacher_logits")

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """KL_T(teacher ‖ student) × T², averaged over the batch."""
        return kl_soft_targets(inputs.student_logits, inputs.teacher_logits, self.temperature)
