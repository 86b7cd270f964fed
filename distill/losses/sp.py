"""Similarity-preserving KD (Tung & Mori, ICCV 2019): the batch's pairwise similarities should agree.

For features f (B, ·) flattened per sample, G = f fᵀ with each row L2-normalised, and
loss = ‖Ĝ_s − Ĝ_t‖²_F / B² — samples that are similar for the teacher must be similar for the student.
Because G is B × B, the two sides may have any feature sizes.

``sp`` follows RepDistiller on the student side: f_s is the student's **last pre-pool feature map**
(C·H·W values per sample), the tensor its β = 3000 was tuned on (fsd's recipe uses β = 3: against a stored
embedding 3000 swamps cross-entropy, see distill/losses/recipes.py). The teacher side is the stored teacher
embedding: a feature store keeps embeddings, not maps, so the teacher's map (RepDistiller's other side) is
not available. For fsd's backbones the pooled embedding is the map's spatial mean (resnet_cifar's z is
exactly that; convnet adds linear + BN on top), so G_t keeps the teacher's sample-to-sample structure.

``sp-embed`` compares the embeddings on both sides (z_s against z_t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss


def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """‖normalise_rows(f_s f_sᵀ) − normalise_rows(f_t f_tᵀ)‖²_F / B², f flattened per sample; no gradient to f_t."""
    batch = f_s.shape[0]
    f_s, f_t = f_s.reshape(batch, -1), f_t.reshape(batch, -1)
    g_s = F.normalize(f_s @ f_s.t(), p=2, dim=1)
    with torch.no_grad():
        g_t = F.normalize(f_t @ f_t.t(), p=2, dim=1)
    return (g_t - g_s).pow(2).sum() / batch**2


@LOSSES.register("sp")
class SimilarityPreserving(DistillLoss):
    """SP on the student's last feature map against the teacher embedding."""

    needs = ("student_feature_map", "teacher_embedding")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The squared Frobenius distance of the two normalised batch similarity matrices, / B²."""
        return similarity_loss(inputs.student_feature_map, inputs.teacher_embedding)


@LOSSES.register("sp-embed")
class SimilarityPreservingEmbedding(DistillLoss):
    """SP on the student embedding against the teacher embedding."""

    needs = ("student_embedding", "teacher_embedding")

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The squared Frobenius distance of the two normalised batch similarity matrices, / B²."""
        return similarity_loss(inputs.student_embedding, inputs.teacher_embedding)
