"""The one tail every fsd architecture shares: the split between embedding and classifier head.

``forward_head(z)`` is the classifier on the embedding, and ``forward(x)`` is
``forward_head(forward_features(x))``. Subclasses define ``forward_features`` and set ``self.head``; the
embedding/head split is what lets a teacher's head be put on a student's embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.models.heads import create_head


class EmbeddingNet(nn.Module):
    """Base class of fsd's architectures: ``forward_features`` gives the embedding z, ``head`` the logits."""

    def _init_head(self, embedding_dim: int, num_classes: int, head: str, scale, margin) -> None:
        self.head = create_head(head, embedding_dim, num_classes, scale=scale, margin=margin)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """The classifier's logits on embeddings ``z`` (B, D)."""
        return self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of images ``x``."""
        return self.forward_head(self.forward_features(x))
