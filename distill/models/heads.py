"""Classifier heads — the piece TH-KD and SH-KD share between teacher and student.

Kept apart from the backbones because sharing a head means moving exactly this module (its weights) from
one network to another: from the store onto the student (TH-KD), or from a student into a teacher (SH-KD).

* ``linear``: g(z) = W z + b.
* ``arcface`` (Deng et al. 2019) and ``cosface`` (Wang et al. 2018): logits s·cos(θ_c) between the
  normalised embedding and normalised class centres; during training the target class gets the margin,
  cos(θ + m) or cos(θ) − m. At distillation and evaluation time no margin is applied (docs/methods.md: the shared
  head works on normalised embeddings and normalised class centres, cosine logits × scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featstore.errors import InvalidInput
from featstore.registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Linear):
    """A plain linear classifier; ``head_type`` is what the store records."""

    head_type = "linear"
    scale: float | None = None
    margin: float | None = None

    def __init__(self, embedding_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(embedding_dim, num_classes, bias=bias)

    def training_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits for the training loss (labels are only used by margin heads)."""
        return self(z)


class _MarginHead(nn.Module):
    """Cosine classifier with an additive margin on the target class during training."""

    head_type = "margin"
    default_scale = 30.0
    default_margin = 0.3

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        bias: bool = False,
        scale: float | None = None,
        margin: float | None = None,
    ) -> None:
        super().__init__()
        if bias:
            raise InvalidInput(f"a {self.head_type} head has no bias")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.bias = None
        self.scale = float(self.default_scale if scale is None else scale)
        self.margin = float(self.default_margin if margin is None else margin)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InvalidInput(f"the {self.head_type} head needs a positive scale, got {self.scale:g}")
        if not (math.isfinite(self.margin) and 0 <= self.margin < math.pi / 2):
            raise InvalidInput(f"the {self.head_type} head needs a margin in [0, π/2), got {self.margin:g}")

    def cosine(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Margin-free logits s·cos θ: what evaluation and distillation use."""
        return self.scale * self.cosine(z)

    def training_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(z)
        target = cos.gather(1, labels[:, None])
        return self.scale * cos.scatter(1, labels[:, None], self._with_margin(target))

    def _with_margin(self, cos_target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@HEADS.register("arcface")
class ArcFaceHead(_MarginHead):
    """Additive angular margin: cos(θ + m) on the target class (with the usual fallback past π − m)."""

    head_type = "arcface"
    default_scale = 30.0
    default_margin = 0.5

    def _with_margin(self, cos_target: torch.Tensor) -> torch.Tensor:
        cos_t = cos_target.clamp(-1.0, 1.0)
        sin_t = torch.sqrt((1.0 - cos_t**2).clamp_min(1e-12))  # finite gradient at cos θ = ±1
        shifted = cos_t * math.cos(self.margin) - sin_t * math.sin(self.margin)
        # beyond θ > π − m, cos(θ + m) is no longer monotonic: use the CosFace-style penalty there
        threshold = math.cos(math.pi - self.margin)
        return torch.where(cos_t > threshold, shifted, cos_t - math.sin(math.pi - self.margin) * self.margin)


@HEADS.register("cosface")
class CosFaceHead(_MarginHead):
    """Additive cosine margin: cos θ − m on the target class."""

    head_type = "cosface"
    default_scale = 30.0
    default_margin = 0.35

    def _with_margin(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin


def create_head(
    name: str, embedding_dim: int, num_classes: int, scale: float | None = None, margin: float | None = None
) -> nn.Module:
    """A registered head, built by name.

    Args:
        name: The registered head type (``linear``, ``arcface``, ``cosface``).
        embedding_dim: Size of the embedding the head reads.
        num_classes: Classes it scores.
        scale: A margin head's scale s (None: its default).
        margin: A margin head's margin m (None: its default).

    Returns:
        The head.

    Raises:
        UnknownName: An unregistered head type.
        InvalidInput: ``scale`` or ``margin`` for a linear head, which has neither.
    """
    cls = HEADS.get(name)
    options = {k: v for k, v in (("scale", scale), ("margin", margin)) if v is not None}
    if options and not issubclass(cls, _MarginHead):
        raise InvalidInput(f"--head-scale/--head-margin apply to margin heads (arcface, cosface), not to {name!r}")
    return cls(embedding_dim, num_classes, **options)


def frozen_head(
    head_type: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    margin: float | None = None,
) -> nn.Module:
    """A non-trainable head holding the given (teacher's) weights: TH-KD's g_t.

    Margin heads give their margin-free cosine logits × scale.

    Args:
        head_type: The registered head type the weights belong to.
        weight: (C, D) the head's weight.
        bias: (C,) a linear head's bias, if it has one.
        scale: A margin head's scale s.
        margin: A margin head's margin m (the logits given here are margin-free).

    Returns:
        The frozen head.
    """
    num_classes, dim = weight.shape
    factory = HEADS.get(head_type)
    if head_type == "linear":
        head = factory(dim, num_classes, bias=bias is not None)
    else:
        head = factory(dim, num_classes, scale=scale, margin=margin)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None and head.bias is not None:
            head.bias.copy_(bias)
    head.requires_grad_(False)
    return head.eval()


def frozen_head_from_weights(weight: torch.Tensor, bias: torch.Tensor | None) -> LinearHead:
    """A frozen linear head (kept for callers that only deal with linear heads)."""
    return frozen_head("linear", weight, bias)  # type: ignore[return-value]


def head_state(head: nn.Module) -> dict:
    """The head as plain data (type, weight, bias, scale, margin) for checkpoints and stores."""
    return {
        "type": head.head_type,
        "weight": head.weight.detach().cpu().clone(),
        "bias": None if head.bias is None else head.bias.detach().cpu().clone(),
        "scale": head.scale,
        "margin": head.margin,
    }


def head_from_store(store) -> nn.Module:
    """The teacher's frozen classifier g_t as a store records it (``featstore.store.FeatureStore``)."""
    meta = store.meta.get("head", {})
    bias = store.head_bias()
    return frozen_head(
        meta.get("type", "linear"),
        torch.from_numpy(store.head_weight()),
        None if bias is None else torch.from_numpy(bias),
        meta.get("scale"),
        meta.get("margin"),
    )
