"""Face backbones: iResNet-18/34/50/100 and MobileFaceNet, for 112×112 aligned faces and 512-d embeddings.

They are laid out as insightface's arcface_torch trains them, with fsd's embedding/head split.

**iResNet** (Deng et al., ArcFace; Duta et al., "Improved residual networks"): a 3×3 stem of 64 channels
(BN, PReLU) at full resolution, four stages of 64/128/256/512 channels, each starting with stride 2
(112 → 56 → 28 → 14 → 7), of improved basic blocks BN → conv3×3 → BN → PReLU → conv3×3(stride) → BN,
added to the shortcut (1×1 conv + BN where the shape changes) without an activation after the sum. Depths
18/34/50/100 use (2,2,2,2) / (3,4,6,3) / (3,4,14,3) / (3,13,30,3) blocks. The 512×7×7 map is batch-
normalised, flattened, mapped by a linear layer to the embedding and batch-normalised again (the "fc5 +
BN" embedding layer whose output the face-recognition world calls the feature).

**MobileFaceNet** (Chen et al. 2018): a stride-2 3×3 conv (64), a depthwise 3×3, then inverted-residual
bottlenecks (1×1 expand → depthwise 3×3 → linear 1×1 project, a residual where shapes allow): one
stride-2 down to 28 px followed by 4 blocks at 64 channels (expansion 128), one down to 14 px then 6 blocks
at 128 channels (expansion 256), one down to 7 px then 2 blocks at 128. A 1×1 conv to 512 channels, a
global depthwise 7×7 convolution (GDC, no activation: the map becomes a 512-vector), then linear + BN to
the embedding. Activations are PReLU. ≈1.2 M parameters without the classifier at 512-d (the paper's ≈1.0 M
is with a 128-d embedding).

Both take any input that is a multiple of 16 pixels (the embedding layer is sized from a 112-pixel input
by default; give ``input_size`` for another).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.models.base import EmbeddingNet
from distill.models.registry import MODELS

FACE_SIZE = 112
FACE_DIM = 512


class IBasicBlock(nn.Module):
    """iResNet's improved basic block: BN → conv3×3 → BN → PReLU → conv3×3(stride) → BN, plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))
            if stride != 1 or in_channels != channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output: body plus shortcut, with no activation after the sum."""
        return self.body(x) + self.shortcut(x)


class IResNet(EmbeddingNet):
    """iResNet (the module docstring) with fsd's embedding/head split.

    Args:
        blocks: Blocks of each of the four stages, e.g. (3, 4, 14, 3) for iResNet-50.
        num_classes: Classes of the head.
        in_channels: Channels of the input images.
        embedding_dim: Size of the embedding z.
        input_size: Side of the square input, a multiple of 16.
        head: The registered head type.
        head_scale: A margin head's scale s (None: its default).
        head_margin: A margin head's margin m (None: its default).

    Raises:
        ValueError: An input size that is not a multiple of 16.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        embedding_dim: int = FACE_DIM,
        input_size: int = FACE_SIZE,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"iresnet needs an input size that is a multiple of 16, got {input_size}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64, eps=1e-5), nn.PReLU(64)
        )
        stages, channels = [], 64
        for width, count in zip((64, 128, 256, 512), blocks, strict=True):
            layers = [IBasicBlock(channels, width, 2)] + [IBasicBlock(width, width, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stages = nn.Sequential(*stages)
        side = input_size // 16
        self.embed = nn.Sequential(
            nn.BatchNorm2d(512, eps=1e-5),
            nn.Flatten(),
            nn.Linear(512 * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, eps=1e-5),
        )
        self._init_head(embedding_dim, num_classes, head, head_scale, head_margin)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding z of images ``x``."""
        return self.embed(self.stages(self.stem(x)))


def _conv_bn(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True, pad: bool = True
):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if pad else 0, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1×1 expand (PReLU) → depthwise 3×3 (PReLU) → linear 1×1 project."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, expansion),
            _conv_bn(expansion, expansion, 3, stride, groups=expansion),
            _conv_bn(expansion, cout, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, with the residual where shapes allow."""
        out = self.body(x)
        return x + out if self.residual else out


class MobileFaceNet(EmbeddingNet):
    """MobileFaceNet (the module docstring) with fsd's embedding/head split.

    Args:
        num_classes: Classes of the head.
        in_channels: Channels of the input images.
        embedding_dim: Size of the embedding z.
        input_size: Side of the square input, a multiple of 16.
        head: The registered head type.
        head_scale: A margin head's scale s (None: its default).
        head_margin: A margin head's margin m (None: its default).

    Raises:
        ValueError: An input size that is not a multiple of 16.
    """

    # (output channels, expansion, blocks after the stride-2 one)
    STAGES = ((64, 128, 4), (128, 256, 6), (128, 512, 2))

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        embedding_dim: int = FACE_DIM,
        input_size: int = FACE_SIZE,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"mobilefacenet needs an input size that is a multiple of 16, got {input_size}")
        layers: list[nn.Module] = [_conv_bn(in_channels, 64, 3, 2), _conv_bn(64, 64, 3, 1, groups=64)]
        channels = 64
        for width, expansion, count in self.STAGES:
            layers.append(Bottleneck(channels, width, expansion, 2))
            expand = expansion if width == 64 else 256  # the blocks after a down-step expand 2× (128 → 256)
            layers += [Bottleneck(width, width, expand, 1) for _ in range(count)]
            channels = width
        layers.append(_conv_bn(channels, 512))
        self.body = nn.Sequential(*layers)
        side = input_size // 16
        self.embed = nn.Sequential(
            _conv_bn(512, 512, side, groups=512, act=False, pad=False),  # GDC: a global depthwise conv over the map
            nn.Flatten(),
            nn.Linear(512, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        self._init_head(embedding_dim, num_classes, head, head_scale, head_margin)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding z of images ``x``."""
        return self.embed(self.body(x))


IRESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def _iresnet(depth: int):
    def build(
        num_classes: int,
        in_channels: int = 3,
        embedding_dim: int = FACE_DIM,
        input_size: int = FACE_SIZE,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> IResNet:
        return IResNet(
            IRESNET_BLOCKS[depth], num_classes, in_channels, embedding_dim, input_size, head, head_scale, head_margin
        )

    build.__doc__ = f"iResNet-{depth} (blocks {IRESNET_BLOCKS[depth]}), 112×112 faces → 512-d by default."
    return build


for _depth in IRESNET_BLOCKS:
    MODELS.register(f"iresnet{_depth}")(_iresnet(_depth))


@MODELS.register("mobilefacenet")
def mobilefacenet(
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int = FACE_DIM,
    input_size: int = FACE_SIZE,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> MobileFaceNet:
    """MobileFaceNet (≈1 M parameters), 112×112 faces → 512-d by default."""
    return MobileFaceNet(num_classes, in_channels, embedding_dim, input_size, head, head_scale, head_margin)
