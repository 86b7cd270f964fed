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
    """Pick the torch device for a ``--device`` value, one rule for every command.

    Args:
        name: ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns:
        The device.

    Raises:
        InvalidInput: An unknown name, or ``"cuda"`` without a CUDA device.
    """
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
    """Embed the identity view of every sample of ``dataset`` with ``model``.

    Args:
        model: An fsd network (``forward_features`` and ``forward_head``).
        dataset: The samples, in order.
        device: Where the model runs.
        batch_size: Samples per forward pass.
        desc: With it, a progress bar on a terminal (evaluation of a large split must not look hung).

    Returns:
        (embeddings float32 (N, D), logits float32 (N, C)).
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
