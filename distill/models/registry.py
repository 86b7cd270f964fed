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
"""Registered name → model constructor, filled by the architecture modules of this package."""
TEACHER_SOURCES: Registry = Registry("teacher source")
"""Scheme (the part before ``:`` in ``onnx:PATH``, ``timm:NAME``…) → loader ``(argument, options) ->
TeacherSource``; filled by :mod:`distill.models.teachers` and its sibling modules."""
STUDENT_SOURCES: Registry = Registry("architecture scheme")
"""Scheme of ``--arch timm:NAME`` / ``torchvision:NAME`` → builder ``(name, **config) -> nn.Module``."""


def create_model(name: str, *, trust_code: bool = False, **config: Any) -> nn.Module:
    """Build a registered model, a ``timm:NAME`` / ``torchvision:NAME`` backbone, or a ``module:function`` student.

    Options left as None are dropped, so the constructor's defaults survive.

    Args:
        name: A registered name (``MODELS.names()``), ``timm:NAME[?…]``, ``torchvision:NAME[?…]`` or
            ``module:function``.
        trust_code: Whether a ``module:function`` student may run its Python code.
        **config: The constructor's options (sizes, head type…).

    Returns:
        The model, exposing ``forward_features`` and ``forward_head``.

    Raises:
        UnknownName: A name that is not registered.
        InvalidInput: ``module:function`` without ``trust_code``.
    """
    from distill.models import code_models

    options = {k: v for k, v in config.items() if v is not None}
    scheme, sep, rest = name.partition(":")
    if sep and scheme in STUDENT_SOURCES:
        return STUDENT_SOURCES.get(scheme)(rest, **options)
    if name not in MODELS and code_models.is_code_spec(name):
        if not trust_code:
            raise code_models.untrusted(name, "student")
        return code_models.build_code_student(name, **options)
    return MODELS.get(name)(**options)


def accepts(name: str, option: str) -> bool:
    """Whether the constructor of model ``name`` takes ``option``.

    E.g. ``input_size``, which face backbones need to size their embedding layer and the others do not take.
    """
    import inspect

    from distill.models import code_models

    if name.partition(":")[0] in STUDENT_SOURCES:
        return option == "input_size"  # library students are probed at the data's size
    if name not in MODELS and code_models.is_code_spec(name):
        return option == "input_size"  # code students are probed with one batch of the dataset's size
    return option in inspect.signature(MODELS.get(name)).parameters


def count_parameters(model: nn.Module) -> int:
    """The number of parameters of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())
