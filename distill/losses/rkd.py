"""RKD: relational knowledge distillation (Park et al., CVPR 2019) on embeddings.

Matches the *structure* of a batch rather than individual embeddings: pairwise distances (each side
normalised by its mean off-diagonal distance) and the angles formed by triplets, both compared with the
Huber (smooth-L1) loss. Internal weights 25 (distance) and 50 (angle) as in the paper's experiments, so a
recipe weight of 1 gives the published balance. Works across different student/teacher dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.base import LOSSES, DistillInputs, DistillLoss


def _pairwise_distances(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    squared = z.pow(2).sum(1)
    d2 = (squared[:, None] + squared[None, :] - 2 * z @ z.t()).clamp_min(eps)
    d = d2.sqrt()
    return d - torch.diag(torch.diag(d))  # exact zeros on the diagonal


def distance_loss(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """Huber loss between mean-normalised pairwise distance matrices (diagonal excluded from the mean)."""
    with torch.no_grad():
        d_t = _pairwise_distances(z_t)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pairwise_distances(z_s)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _angles(z: torch.Tensor) -> torch.Tensor:
    """Cos ∠(e_i - e_j, e_k - e_j) for all triplets: (B, B, B) flattened."""
    diff = F.normalize(z.unsqueeze(0) - z.unsqueeze(1), p=2, dim=2)  # diff[j, i] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def angle_loss(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the student's and the teacher's triplet angles (RKD-A)."""
    with torch.no_grad():
        a_t = _angles(z_t)
    return F.smooth_l1_loss(_angles(z_s), a_t)


@LOSSES.register("rkd")
class RelationalKD(DistillLoss):
    """RKD: the distance and angle relations of the batch's student embeddings matched to the teacher's.

    Args:
        distance_weight: Weight of the distance term (RKD-D).
        angle_weight: Weight of the angle term (RKD-A).
    """

    needs = ("student_embedding", "teacher_embedding")

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The weighted sum of the distance and angle terms."""
        z_s, z_t = inputs.student_embedding, inputs.teacher_embedding
        return self.distance_weight * distance_loss(z_s, z_t) + self.angle_weight * angle_loss(z_s, z_t)
