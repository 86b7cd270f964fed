"""The CIFAR ResNets of RepDistiller (resnet8 … resnet56, resnet8x4, resnet32x4), with fsd's embedding/head split.

Architecture (He et al. 2016, CIFAR variant, as RepDistiller configures it): a 3×3 stem convolution of
``widths[0]`` channels (BN, ReLU), then three stages of ``n = (depth - 2) / 6`` basic blocks with
``widths[1..3]`` channels at strides 1, 2, 2 (32 → 16 → 8 pixels for CIFAR), global average pooling.
A basic block is conv3×3-BN-ReLU-conv3×3-BN plus the shortcut, then ReLU; the shortcut is a 1×1
convolution + BN wherever the stride or the width changes (RepDistiller's option B), else the identity.

* resnet8/20/32/56: widths (16, 16, 32, 64), pooled width 64.
* resnet8x4/resnet32x4: widths (32, 64, 128, 256) — the ×4 stages —, pooled width 256;
  ≈1.23 M and ≈7.43 M parameters with a 100-class linear head (the counts the CRD paper lists).

The embedding z (what the store keeps and TH-KD feeds to the teacher's head) is the pooled feature, as in
the paper (z = pooled embedding before the classifier). Only when ``embedding_dim`` asks for another size
is a face-model style embedding layer (linear + BN, like :class:`distill.models.ConvNet`) added on top.
Pooling is global (a mean over the whole map), so any input size works, not only 32×32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.models.base import EmbeddingNet
from distill.models.heads import create_head
from distill.models.registry import MODELS

THIN_WIDTHS = (16, 16, 32, 64)
WIDE_WIDTHS = (32, 64, 128, 256)  # the "x4" models


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection; ReLU after the sum."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_channels != channels
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))
            if needs_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output: ReLU of body plus shortcut."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(EmbeddingNet):
    """Stem, three stages of basic blocks, global average pooling → z (optionally re-embedded) → head."""

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        embedding_dim: int | None = None,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"a CIFAR ResNet with basic blocks needs depth = 6n + 2 (8, 20, 32, 56, …), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths are (stem, stage 1, stage 2, stage 3), got {tuple(widths)}")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths[1:]):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pooled_dim = channels
        if embedding_dim is None or embedding_dim == channels:
            embedding_dim = channels
            self.embed: nn.Module = nn.Identity()
        else:
            self.embed = nn.Sequential(nn.Linear(channels, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        self.head = create_head(head, embedding_dim, num_classes, scale=head_scale, margin=head_margin)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.depth = depth
        for module in self.modules():  # RepDistiller's initialisation of the convolutions
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last pre-pool feature map (B, C, H, W), after the last block's ReLU.

        This is RepDistiller's ``feat[-2]``, the map its SP is applied to.
        """
        return self.stages(self.stem(x))

    def embed_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The embedding z of a feature map: its spatial mean, then the embedding layer."""
        return self.embed(feature_map.mean(dim=(2, 3)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding z of images ``x``."""
        return self.embed_feature_map(self.forward_feature_map(x))


@MODELS.register("resnet8")
def resnet8(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> CifarResNet:
    """ResNet-8, widths 16/16/32/64 (~0.08 M parameters with 100 classes)."""
    return CifarResNet(8, THIN_WIDTHS, num_classes, in_channels, embedding_dim, head, head_scale, head_margin)


@MODELS.register("resnet20")
def resnet20(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> CifarResNet:
    """ResNet-20, widths 16/16/32/64 (~0.28 M): the student of resnet56 in RepDistiller."""
    return CifarResNet(20, THIN_WIDTHS, num_classes, in_channels, embedding_dim, head, head_scale, head_margin)


@MODELS.register("resnet32")
def resnet32(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> CifarResNet:
    """ResNet-32, widths 16/16/32/64 (~0.47 M)."""
    return CifarResNet(32, THIN_WIDTHS, num_classes, in_channels, embedding_dim, head, head_scale, head_margin)


@MODELS.register("resnet56")
def resnet56(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> CifarResNet:
    """ResNet-56, widths 16/16/32/64 (~0.86 M): a RepDistiller teacher."""
    return CifarResNet(56, THIN_WIDTHS, num_classes, in_channels, embedding_dim, head, head_scale, head_margin)


@MODELS.register("resnet8x4")
def resnet8x4(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> CifarResNet:
    """ResNet-8 with ×4 widths 32/64/128/256 (~1.23 M): the student of resnet32x4; z is 256-d."""
    return CifarResNet(8, WIDE_WIDTHS, num_classes, in_channels, embedding_dim, head, head_scale, head_margin)


@MODELS.register("resnet32x4")
def resnet32x4(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> CifarResNet:
    """ResNet-32 with ×4 widths 32/64/128/256 (~7.43 M): the CIFAR-100 teacher of the paper; z is 256-d."""
    return CifarResNet(32, WIDE_WIDTHS, num_classes, in_channels, embedding_dim, head, head_scale, head_margin)
