"""Small conv-net backbones (the digits teacher and student) with an explicit embedding/head split.

Every model exposes ``forward_features(x) -> z`` (the embedding the store keeps and the representation
losses compare) and ``forward_head(z) -> logits``; ``forward`` is their composition. fsd's own backbones also
split ``forward_features`` into ``forward_feature_map`` (the last pre-pool map) and ``embed_feature_map``, so
the trainer gets both in one pass (:func:`embedding_and_feature_map`) for feature-map losses (SP). That split is what
lets fsd attach a teacher's head to a student's embedding. Constructors are registered by name and take
only the numbers a checkpoint needs to rebuild them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.models.base import EmbeddingNet
from distill.models.heads import create_head
from distill.models.registry import MODELS


class ConvNet(EmbeddingNet):
    """A small CNN with fsd's embedding/head split.

    Conv-BN-ReLU stages (max-pool between stages), global average pooling, then a face-model style embedding
    layer (linear + BN) giving z, and a classifier head on z. It works for any input size ≥ 2^(stages-1) pixels
    thanks to the global pooling.

    Args:
        widths: Channels of each stage.
        embedding_dim: Size of the embedding z.
        num_classes: Classes of the head.
        in_channels: Channels of the input images.
        head: The registered head type.
        head_scale: A margin head's scale s (None: its default).
        head_margin: A margin head's margin m (None: its default).
    """

    def __init__(
        self,
        widths: Sequence[int],
        embedding_dim: int,
        num_classes: int,
        in_channels: int = 1,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(channels, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        self.head = create_head(head, embedding_dim, num_classes, scale=head_scale, margin=head_margin)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last pre-pool feature map (B, C, H, W): what RepDistiller's SP compares."""
        return self.features(x)

    def embed_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The embedding z from the feature map: global average pooling, then the embedding layer."""
        return self.embed(feature_map.mean(dim=(2, 3)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding z of images ``x``."""
        return self.embed_feature_map(self.forward_feature_map(x))


@MODELS.register("convnet_teacher")
def convnet_teacher(
    num_classes: int,
    in_channels: int = 1,
    embedding_dim: int = 64,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> ConvNet:
    """The digits teacher: 3 stages of 32/64/128 channels (~0.1 M parameters)."""
    return ConvNet((32, 64, 128), embedding_dim, num_classes, in_channels, head, head_scale, head_margin)


@MODELS.register("convnet_student")
def convnet_student(
    num_classes: int,
    in_channels: int = 1,
    embedding_dim: int = 64,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> ConvNet:
    """The digits student: 2 stages of 8/16 channels (~3 k parameters with a 64-d embedding, ~30× smaller)."""
    return ConvNet((8, 16), embedding_dim, num_classes, in_channels, head, head_scale, head_margin)


def embedding_and_feature_map(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z, last pre-pool feature map) in one forward pass; the map is None for models that do not expose it."""
    if hasattr(model, "forward_feature_map") and hasattr(model, "embed_feature_map"):
        feature_map = model.forward_feature_map(x)
        return model.embed_feature_map(feature_map), feature_map
    return model.forward_features(x), None
