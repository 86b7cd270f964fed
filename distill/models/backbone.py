"""A backbone of pooled features made into an fsd student: an embedding layer and a fresh classifier head.

Shared by the library students (``timm:``/``torchvision:``, :mod:`distill.models.hub_students`) and the
Python-code students (:mod:`distill.models.code_models`) that return a bare backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.models.base import EmbeddingNet
from distill.models.heads import create_head


class BackboneStudent(EmbeddingNet):
    """A backbone of pooled features, a face-model style embedding layer (linear + BN) and a classifier head.

    The embedding layer maps ``backbone(x)`` (B, width) to ``embedding_dim``, the size TH-KD needs to reach the
    teacher's head.

    Args:
        backbone: The library or code backbone, returning pooled features (B, width).
        width: The backbone's feature width.
        num_classes: The head's number of classes.
        embedding_dim: The embedding's size (None: ``width``).
        head: The head type (``"linear"``, ``"arcface"``…).
        head_scale: A margin head's scale s (None: the head's default).
        head_margin: A margin head's margin m (None: the head's default).
    """

    def __init__(
        self,
        backbone: nn.Module,
        width: int,
        num_classes: int,
        embedding_dim: int | None,
        head: str,
        head_scale: float | None,
        head_margin: float | None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        dim = embedding_dim or width
        self.embed = nn.Sequential(nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim))
        self.head = create_head(head, dim, num_classes, scale=head_scale, margin=head_margin)
        self.embedding_dim, self.num_classes = dim, num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding (B, embedding_dim) of images ``x``."""
        return self.embed(self.backbone(x))
