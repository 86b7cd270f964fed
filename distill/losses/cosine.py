"""Cosine embedding distillation: mean over the batch of 1 − cos(z_s, z_t).

Batch-size independent sibling of KDE (KDE = 2·B·this), convenient when the batch size changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss, matched_embeddings


@LOSSES.register("cos")
class CosineEmbedding(DistillLoss):
    """1 − cos(P z_s, z_t): the student embedding's angle to the teacher's."""

    needs = ("student_embedding_t", "teacher_embedding")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The batch mean of 1 − cos(P z_s, z_t)."""
        z_s, z_t = matched_embeddings(inputs, "cos")
        return (1.0 - F.cosine_similarity(z_s, z_t, dim=1)).mean()
