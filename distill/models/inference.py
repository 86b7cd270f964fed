"""Device choice and batched inference of an fsd network over a dataset.

One device rule for every command; :func:`embed_dataset` embeds the identity view of a dataset with a
network in training (the teacher trainer's evaluation). A model named by a spec runs through
:mod:`distill.models.binding` instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from featstore.datasets.base import Dataset
from featstore.errors import InvalidInput
from featstore.loader import identity_batches
from featstore.progress import progress

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


@torch.no_grad()
def embed_dataset(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (N, D), logits float32 (N, C)) of the identity view of every sample; with ``desc``,
    a progress bar on a terminal (evaluation of a large split must not look hung).
    """
    model.eval().to(device)
    embeddings, logits = [], []
    batches = identity_batches(dataset, np.arange(len(dataset)), batch_size, device)
    total = -(-len(dataset) // batch_size)
    for rendered in progress(batches, desc=desc, unit="batch", total=total, leave=False):
        x = rendered.x[:, 0].to(device, non_blocking=True)
        z = model.forward_features(x)
        embeddings.append(z.float().cpu())
        logits.append(model.forward_head(z).float().cpu())
    return torch.cat(embeddings).numpy(), torch.cat(logits).numpy()
