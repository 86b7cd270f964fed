"""CE of the teacher-head prediction: CE(g_t(P z_s), y) — the α_TH part of CE' in the paper's Eq. 2.

With ``th`` it forms the paper's form of TH-KD (docs/methods.md): H' = (1−α)·H(p_s, p_t) + α·H(p_s^TH, p_t) and
CE' = (1−α)·CE(p_s, y) + α·CE(p_s^TH, y); :func:`distill.losses.recipes.apply_th_alpha` builds those weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss


@LOSSES.register("ce_th")
class TeacherHeadCrossEntropy(DistillLoss):
    """Cross-entropy of the frozen teacher head on the student embedding against the labels."""

    needs = ("student_logits_th", "labels")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The batch mean of the cross-entropy of g_t(P z_s)."""
        return F.cross_entropy(inputs.student_logits_th, inputs.labels)
