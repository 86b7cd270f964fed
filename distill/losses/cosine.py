"""Cosine embedding distillation: mean over the batch of 1 − cos(z_s, z_t).

Batch-size independent sibling of KDE (KDE = 2·B·this), convenient when the batch size changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss
from featstore.errors import InvalidInput


@LOSSES.register("cos")
class CosineEmbedding(DistillLoss):
    needs = ("student_embedding_t", "teacher_embedding")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        z_s, z_t = inputs.student_embedding_t, inputs.teacher_embedding
        if z_s.shape != z_t.shape:
            raise InvalidInput(
                f"cos needs equal embedding shapes, got student {tuple(z_s.shape)} and teacher {tuple(z_t.shape)}"
            )
        return (1.0 - F.cosine_similarity(z_s, z_t, dim=1)).mean()
