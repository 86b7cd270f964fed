"""``timm:NAME`` and ``torchvision:NAME`` students: a library backbone with fsd's embedding/head split.

The backbone's pooled pre-logits feature goes through a face-model style embedding layer (linear + BN) to
``embedding_dim`` — the size TH-KD needs to reach the teacher's head — and then to a fresh classifier head.
Both libraries are imported only when such an architecture is asked for (see
:mod:`distill.models.teacher_hub` on installing them beside the CPU torch wheel).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.models.base import EmbeddingNet
from distill.models.heads import create_head
from distill.models.registry import STUDENT_SOURCES
from distill.models.teacher_hub import _last_linear, _library, _replace
from featstore.errors import InvalidInput


class BackboneStudent(EmbeddingNet):
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
        return self.embed(self.backbone(x))


def _timm_backbone(name: str, in_channels: int) -> tuple[nn.Module, int]:
    timm = _library("timm")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    except RuntimeError as exc:
        raise InvalidInput(f"student timm:{name}: {str(exc).splitlines()[0]}") from None
    return model, int(model.num_features)


def _torchvision_backbone(name: str, in_channels: int) -> tuple[nn.Module, int]:
    models = _library("torchvision.models")
    if in_channels != 3:
        raise InvalidInput(f"student torchvision:{name} takes RGB images, the dataset has {in_channels} channel(s)")
    try:
        model = models.get_model(name, weights=None)
    except ValueError as exc:
        raise InvalidInput(f"student torchvision:{name}: {str(exc).splitlines()[0]}") from None
    last = _last_linear(model)
    if last is None:
        raise InvalidInput(f"student torchvision:{name} has no linear classifier to split its embedding at")
    _replace(model, last[0], nn.Identity())
    return model, int(last[1].in_features)


def _builder(make):
    def build(
        name: str,
        num_classes: int,
        in_channels: int = 3,
        embedding_dim: int | None = None,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> BackboneStudent:
        backbone, width = make(name, in_channels)
        return BackboneStudent(backbone, width, num_classes, embedding_dim, head, head_scale, head_margin)

    return build


STUDENT_SOURCES.register("timm")(_builder(_timm_backbone))
STUDENT_SOURCES.register("torchvision")(_builder(_torchvision_backbone))
