"""KDE: embedding distillation by the squared L2 distance of L2-normalised embeddings.

As in the HeadSharingKD code: sum over dimensions *and* over the batch (MSE with reduction "sum") of
(z_s/‖z_s‖ − z_t/‖z_t‖)², i.e. Σ_i (2 − 2 cos(z_s,i, z_t,i)). Its weight β therefore scales with the
batch size, which is why the recipes give it small weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss, matched_embeddings


@LOSSES.register("kde")
class NormalisedEmbeddingL2(DistillLoss):
    """KDE: the squared L2 distance of L2-normalised student and teacher embeddings, summed."""

    needs = ("student_embedding_t", "teacher_embedding")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """Σ over the batch and the dimensions of (z_s/‖z_s‖ − z_t/‖z_t‖)²."""
        z_s, z_t = matched_embeddings(inputs, "kde")
        return (F.normalize(z_s, dim=1) - F.normalize(z_t, dim=1)).pow(2).sum()
