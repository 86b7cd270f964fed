"""A :class:`featstore.teacher.TeacherSource` from an embedding network and its classifier.

Every teacher loader (library backbones, TorchScript, Python code) ends here, so it lives apart from the
loaders and from :mod:`distill.models.teachers`, the factory that imports them all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featstore.errors import InvalidInput
from featstore.teacher import TeacherSource


def source_from_parts(embedder: nn.Module, head: Any, arch: str, sha: str, embedding_dim: int | None = None):
    """A :class:`featstore.teacher.TeacherSource` from an embedding network and its classifier.

    A head-less source of unknown width learns it from extraction's probe.

    Args:
        embedder: The network whose ``forward_features(x)`` is the embedding.
        head: The classifier (an ``nn.Linear`` or an fsd head), or None for a head-less source.
        arch: The teacher's name, recorded in the store.
        sha: The teacher's identity, recorded in the store.
        embedding_dim: The embedding's width, when known without a probe.

    Returns:
        The teacher source.
    """
    if head is None:
        return TeacherSource(
            model=embedder.eval(),
            arch=arch,
            checkpoint_sha256=sha,
            embedding_dim=embedding_dim,  # type: ignore[arg-type]
            input_shape=None,
            head_type=None,
            head_weight=None,
            head_bias=None,
        )
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise InvalidInput(f"teacher {arch!r}: its head has no 2-d 'weight' (C, D)")
    bias = getattr(head, "bias", None)
    return TeacherSource(
        model=embedder.eval(),
        arch=arch,
        checkpoint_sha256=sha,
        embedding_dim=int(weight.shape[1]),
        input_shape=None,
        head_type=getattr(head, "head_type", "linear"),
        head_weight=weight.detach().cpu().float().numpy(),
        head_bias=None if not isinstance(bias, torch.Tensor) else bias.detach().cpu().float().numpy(),
        head_scale=getattr(head, "scale", None),
        head_margin=getattr(head, "margin", None),
    )
