"""Similarity-preserving KD (Tung & Mori, ICCV 2019) on embeddings.

The batch Gram matrices G = z zᵀ of student and teacher, each row L2-normalised, should agree:
loss = ‖Ĝ_s − Ĝ_t‖²_F / B². Samples that are similar for the teacher must be similar for the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss


@LOSSES.register("sp")
class SimilarityPreserving(DistillLoss):
    needs = ("student_embedding", "teacher_embedding")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        z_s, z_t = inputs.student_embedding, inputs.teacher_embedding
        g_s = F.normalize(z_s @ z_s.t(), p=2, dim=1)
        with torch.no_grad():
            g_t = F.normalize(z_t @ z_t.t(), p=2, dim=1)
        batch = z_s.shape[0]
        return (g_s - g_t).pow(2).sum() / batch**2
