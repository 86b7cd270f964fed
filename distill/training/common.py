"""Helpers both trainers share: seeding, the optimiser/schedule, accuracy and online training views.

Device choice and batched inference live in ``distill.models.inference`` so evaluation shares them without
importing training.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from distill.models.inference import embed_dataset
from featstore.datasets import ImageDataset
from featstore.errors import InvalidInput
from featstore.views import sample_view_params


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for the trainer's own draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class OptimConfig:
    """RepDistiller's CIFAR optimiser (SGD, momentum 0.9, wd 5e-4) with a cosine schedule over the run."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


def make_optimizer(params, config: OptimConfig, total_steps: int):
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return optimizer, scheduler


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is None or not value > 0 or not math.isfinite(value):  # `not > 0` also refuses NaN
            raise InvalidInput(f"{name.replace('_', '-')} must be positive and finite, got {value}")


def accuracy(model: nn.Module, dataset: ImageDataset, device: torch.device) -> float:
    _, logits = embed_dataset(model, dataset, device)
    return float((logits.argmax(1) == dataset.labels).mean())


def epoch_views(dataset: ImageDataset, seed: int, epoch: int) -> np.ndarray:
    """Fresh random views for online training (teacher training): one non-identity view per sample.

    Drawn with the store's own view sampler under a seed space disjoint from extraction's, so the teacher
    is trained on the same kind of views it later teaches with.
    """
    return np.stack(
        [sample_view_params(dataset.view_policy, 1_000_003 + seed, int(i), epoch + 1) for i in range(len(dataset))]
    )
