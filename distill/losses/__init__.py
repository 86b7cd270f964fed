"""Loss registry and recipes. Importing this package registers every loss module."""

from distill.losses import (  # noqa: F401  (registration)
    ce,
    ce_th,
    cosine,
    crd,
    crd_exact,
    kd,
    kde,
    pkt,
    rkd,
    sp,
    th,
    triplet,
)
from distill.losses.base import LOSSES, DistillInputs, DistillLoss, SeededDistillLoss, TrainingContext, kl_soft_targets
from distill.losses.recipes import RECIPES, Criterion, build_criterion, parse_loss_spec, resolve_weights

__all__ = [
    "LOSSES",
    "RECIPES",
    "Criterion",
    "DistillInputs",
    "DistillLoss",
    "SeededDistillLoss",
    "TrainingContext",
    "build_criterion",
    "kl_soft_targets",
    "parse_loss_spec",
    "resolve_weights",
]
