"""Classifier heads: g(z) = W z + b, the piece TH-KD and SH-KD share between teacher and student.

Kept apart from the backbones because sharing a head means moving exactly this module (its weights) from
one network to another — from the store onto the student (TH-KD), or from a student into a teacher (SH-KD).
"""

from __future__ import annotations

import torch
from torch import nn

from featstore.registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Linear):
    """A plain linear classifier; ``head_type`` is what the store records."""

    head_type = "linear"

    def __init__(self, embedding_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(embedding_dim, num_classes, bias=bias)


def frozen_head_from_weights(weight: torch.Tensor, bias: torch.Tensor | None) -> LinearHead:
    """A non-trainable linear head holding the given (teacher's) weights — TH-KD's g_t."""
    num_classes, dim = weight.shape
    head = LinearHead(dim, num_classes, bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    head.requires_grad_(False)
    return head.eval()
