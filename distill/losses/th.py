"""TH-KD (Ben-Baruch et al. 2022, "It's All in the Head"), official-code form.

The teacher's frozen classifier g_t is applied to the student embedding z_s and its softened output is
matched to the teacher's own logits: KL_T(softmax(g_t(z_t)/T) ‖ softmax(g_t(z_s)/T)) × T² / B. Gradients
flow into the student's backbone only; g_t stays frozen. It matches the teacher's logits, not the labels.
"""

from __future__ import annotations

import torch

from distill.losses.base import LOSSES, DistillInputs, DistillLoss, kl_soft_targets


@LOSSES.register("th")
class TeacherHeadKD(DistillLoss):
    """TH-KD: Hinton's KD of the frozen teacher head on the student embedding against the teacher logits.

    Args:
        temperature: T, the softening temperature.
    """

    needs = ("student_logits_th", "teacher_logits")

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """KL_T(teacher ‖ g_t(P z_s)) × T², averaged over the batch."""
        return kl_soft_targets(inputs.student_logits_th, inputs.teacher_logits, self.temperature)
