"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Each side's batch is turned into conditional probabilities p(j | i) from cosine similarities shifted to
[0, 1] and normalised per row; the loss is the mean over all (i, j) of p_t log(p_t / p_s), a KL divergence
between the two neighbourhood distributions. Dimension-free, like RKD. Rows are divided by ‖z‖ + ε
(ε = 1e-7) exactly as in the authors' and RepDistiller's code.
"""

from __future__ import annotations

import torch

from distill.losses.base import LOSSES, DistillInputs, DistillLoss


def _conditional(z: torch.Tensor, eps: float) -> torch.Tensor:
    z = z / (z.norm(p=2, dim=1, keepdim=True) + eps)  # ‖z‖ + eps, as the official code (not max(‖z‖, eps))
    similarity = (z @ z.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


@LOSSES.register("pkt")
class ProbabilisticKT(DistillLoss):
    """PKT: the KL divergence between teacher and student in-batch conditional probabilities.

    Args:
        eps: Keeps the divisions and the logarithm finite.
    """

    needs = ("student_embedding", "teacher_embedding")

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def compute(self, inputs: DistillInputs) -> torch.Tensor:
        """The mean of p_t · log(p_t / p_s) over the batch's pairs."""
        p_s = _conditional(inputs.student_embedding, self.eps)
        with torch.no_grad():
            p_t = _conditional(inputs.teacher_embedding, self.eps)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()
