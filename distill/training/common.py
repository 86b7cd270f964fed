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
from distill.training.amp import Amp
from featstore.datasets import Dataset
from featstore.errors import InvalidInput
from featstore.views import sample_view_params


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for the trainer's own draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its schedule.

    The default is RepDistiller's CIFAR optimiser (SGD, momentum 0.9, weight decay 5e-4) with a cosine schedule
    over the whole run.

    Attributes:
        lr: The peak learning rate.
        momentum: SGD's momentum (AdamW ignores it).
        weight_decay: The optimiser's weight decay.
        optimizer: ``"sgd"`` or ``"adamw"``.
        warmup_epochs: Epochs of linear warm-up from 1 % of ``lr``; the cosine covers the rest.
        grad_clip: The global gradient norm is clipped to this every step (None: no clipping).
    """

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    warmup_epochs: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        """Refuse what would train nonsense: non-finite or non-positive rates, an unknown optimiser.

        Raises:
            InvalidInput: The field at fault, named as its CLI option.
        """
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInput(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        check_positive(lr=self.lr)
        check_finite(momentum=self.momentum, weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs)
        if self.momentum < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise InvalidInput("--momentum, --weight-decay and --warmup-epochs must not be negative")
        if self.grad_clip is not None:
            check_positive(grad_clip=self.grad_clip)


def make_optimizer(params, config: OptimConfig, total_steps: int, warmup_steps: int = 0):
    """The optimiser of ``params`` and its per-step schedule.

    Without warm-up the schedule is exactly CosineAnnealingLR over ``total_steps``, so runs without warm-up
    replay bit for bit.

    Args:
        params: The trainable parameters.
        config: The optimiser and its settings.
        total_steps: The run's optimiser steps; the cosine ends with the last.
        warmup_steps: Steps of linear warm-up before the cosine.

    Returns:
        (optimizer, scheduler), the scheduler stepped once per optimiser step.
    """
    params = list(params)
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    warmup_steps = min(max(0, warmup_steps), max(0, total_steps - 1))
    if warmup_steps == 0:
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup_steps])
    return optimizer, scheduler


@dataclass
class Optimisation:
    """The optimiser, its per-step schedule and the step rule both trainers run.

    Built from an :class:`OptimConfig` by :meth:`build`, which applies every field (optimiser, rate, momentum,
    weight decay, warm-up, clipping), so a trainer cannot take the config and forget one of them. A step is
    ``zero_grad`` → ``backward(loss)`` → ``step()``: the loss is scaled and unscaled under fp16 AMP, the global
    gradient norm is clipped when ``grad_clip`` is set, and the schedule advances once per step.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[nn.Parameter]
    grad_clip: float | None
    amp: Amp

    @classmethod
    def build(
        cls, params, config: OptimConfig, epochs: int, steps_per_epoch: int, amp: Amp | None = None
    ) -> Optimisation:
        """The optimisation of ``params`` under ``config`` for a run of ``epochs`` × ``steps_per_epoch`` steps.

        Args:
            params: The trainable parameters.
            config: The optimiser and schedule.
            epochs: The run's length; the cosine schedule ends with the last step of the last epoch.
            steps_per_epoch: Optimiser steps per epoch (sets the warm-up length in steps).
            amp: Mixed precision of the steps (default: off).

        Returns:
            The optimisation, its schedule at step 0.
        """
        params = list(params)
        warmup = round(config.warmup_epochs * steps_per_epoch)
        optimizer, scheduler = make_optimizer(params, config, epochs * steps_per_epoch, warmup_steps=warmup)
        return cls(optimizer, scheduler, params, config.grad_clip, amp or Amp(torch.device("cpu"), None))

    def zero_grad(self) -> None:
        """Clear the parameters' gradients."""
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``, scaled under fp16 AMP."""
        self.amp.backward(loss)

    def step(self) -> None:
        """Clip (if asked), step the optimiser, advance the schedule."""
        self.amp.step(self.optimizer, self.params, self.grad_clip)
        self.scheduler.step()

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.scheduler.get_last_lr()[0])


def check_positive(**values: float) -> None:
    """Each value must be a finite number > 0 (NaN compares false with everything, so it is named here)."""
    check_finite(**values)
    for name, value in values.items():
        if value <= 0:
            raise InvalidInput(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_finite(**values: float | None) -> None:
    """Each value must be a finite number: a NaN or infinite option trains a NaN model."""
    for name, value in values.items():
        if value is None or not math.isfinite(float(value)):
            raise InvalidInput(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def accuracy(model: nn.Module, dataset: Dataset, device: torch.device) -> float:
    """Top-1 of ``model``'s logits on every sample of ``dataset``."""
    _, logits = embed_dataset(model, dataset, device)
    return float((logits.argmax(1) == dataset.labels).mean())


VIEW_SEED = 1_000_003  # online (teacher) training draws its views with seeds from here on, apart from extraction's


def epoch_views(dataset: Dataset, seed: int, epoch: int) -> np.ndarray:
    """Fresh random views for online training (teacher training): one non-identity view per sample.

    Drawn with the store's own view sampler under a seed space disjoint from extraction's, so the teacher
    is trained on the same kind of views it later teaches with.
    """
    return np.stack(
        [sample_view_params(dataset.view_policy, VIEW_SEED + seed, int(i), epoch + 1) for i in range(len(dataset))]
    )
