"""Helpers every trainer shares: device choice, seeding, the optimiser/schedule, batched inference.

Kept out of the trainers so the teacher trainer, the student trainer and evaluation agree on one device
rule and one way of embedding a dataset (view 0, eval mode, no grad).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from featstore.datasets import ImageDataset
from featstore.errors import InvalidInput
from featstore.views import sample_view_params

DEVICES = ("auto", "cpu", "cuda")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; asking for ``cuda`` without one is a user error."""
    if name not in DEVICES:
        raise InvalidInput(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("--device cuda was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        if value is None or value <= 0:
            raise InvalidInput(f"{name.replace('_', '-')} must be positive, got {value}")


@torch.no_grad()
def embed_dataset(
    model: nn.Module, dataset: ImageDataset, device: torch.device, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (N, D), logits float32 (N, C)) of the identity view of every sample."""
    model.eval().to(device)
    embeddings, logits = [], []
    for start in range(0, len(dataset), batch_size):
        x = dataset.get_images(np.arange(start, min(start + batch_size, len(dataset)))).to(device)
        z = model.forward_features(x)
        embeddings.append(z.float().cpu())
        logits.append(model.forward_head(z).float().cpu())
    return torch.cat(embeddings).numpy(), torch.cat(logits).numpy()


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
