"""The model registry and its one factory.

Every model exposes ``forward_features(x) -> z`` (the embedding the store keeps and the representation
losses compare) and ``forward_head(z) -> logits``; ``forward`` is their composition. That split is what
lets fsd attach a teacher's head to a student's embedding. Constructors are registered by name (in the
architecture modules of this package) and take only the numbers a checkpoint needs to rebuild them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from featstore.registry import Registry

MODELS: Registry = Registry("model")
TEACHER_SOURCES: Registry = Registry("teacher source")
STUDENT_SOURCES: Registry = Registry("architecture scheme")
"""Scheme of ``--arch timm:NAME`` / ``torchvision:NAME`` → builder ``(name, **config) -> nn.Module``."""
"""Scheme (the part before ``:`` in ``onnx:PATH``, ``timm:NAME``…) → loader ``(argument, options) ->
TeacherSource``; filled by :mod:`distill.models.teachers` and its sibling modules."""


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model (or ``timm:NAME`` / ``torchvision:NAME``); options left as None are dropped so
    the constructor's defaults survive."""
    options = {k: v for k, v in config.items() if v is not None}
    scheme, sep, rest = name.partition(":")
    if sep and scheme in STUDENT_SOURCES:
        return STUDENT_SOURCES.get(scheme)(rest, **options)
    return MODELS.get(name)(**options)


def accepts(name: str, option: str) -> bool:
    """Whether the registered constructor ``name`` takes ``option`` (e.g. ``input_size``, which face backbones
    need to size their embedding layer and the others do not take)."""
    import inspect

    if name.partition(":")[0] in STUDENT_SOURCES:
        return False
    return option in inspect.signature(MODELS.get(name)).parameters


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
