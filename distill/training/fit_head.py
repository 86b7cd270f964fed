"""``fsd store fit-head``: train a teacher classifier on the *stored* embeddings (the backbone never runs).

The teachers face users hold (insightface's ONNX models, a timm backbone) come without the classifier
TH-KD needs: the margin head they were trained with stayed on the training servers. Its role in TH-KD is
to map embeddings to class scores on *this* dataset, so a head fitted on the teacher's own stored
embeddings of this dataset serves: z_t is fixed, only W (and b) are learnt — a convex problem for the
linear head, a cheap one for margin heads. Every stored view of every labelled row is a training sample
(the views are the augmentations); rows left out at extraction (``--skip-bad-samples``) hold zeros and are
not. The train accuracy reported is the margin-free top-1 on view 0.

The head is installed under the store's writer lock, after checking that the store is still the extraction
whose embeddings were read: a store re-extracted meanwhile (``extract-teacher --overwrite``) is refused
rather than given a head fitted on embeddings it no longer holds.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.models.heads import HEADS, create_head
from featstore.errors import InvalidInput, OutputExists, StoreError
from featstore.lock import writer_lock
from featstore.progress import progress
from featstore.store import FeatureStore, fsd_version, instance_of, left_out, local_path, open_store


@dataclass
class FitHeadConfig:
    """What ``fsd store fit-head`` is asked to do.

    Attributes:
        store: The store URL whose embeddings the head is fitted on and into which it is installed.
        head: The head type (``"arcface"``, ``"cosface"``, ``"linear"``).
        epochs: Passes over every stored view of every labelled row.
        batch_size: Embeddings per step.
        lr: The peak learning rate.
        head_scale: A margin head's scale s (None: the head's default).
        head_margin: A margin head's margin m (None: the head's default).
        seed: Seeds the head's initialisation and the batch order.
        overwrite: Whether an installed head may be replaced.
        device: Where the head is fitted.
        progress: Whether to show a progress bar.
    """

    store: str
    head: str = "arcface"
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.01
    head_scale: float | None = None
    head_margin: float | None = None
    seed: int = 0
    overwrite: bool = False
    device: str = "cpu"
    progress: bool = True


@dataclass
class FitHeadResult:
    """What :func:`fit_head` installed and measured.

    Attributes:
        url: The store.
        head: The head type installed.
        num_classes: Its number of classes.
        train_accuracy: Margin-free top-1 on view 0 of the labelled rows.
        samples: The labelled rows trained on.
        seconds: Wall-clock time of the fit.
    """

    url: str
    head: str
    num_classes: int
    train_accuracy: float
    samples: int
    seconds: float

    def line(self) -> str:
        """The one line ``fsd store fit-head`` prints."""
        return (
            f"fitted a {self.head} head ({self.num_classes} classes) on {self.samples} stored embeddings of "
            f"{self.url}: train top-1 {100 * self.train_accuracy:.2f}%, {self.seconds:.1f} s"
        )


def _read_all(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """Read (embeddings (N, V, D) float32, labels (N,)) of a complete store, chunk by chunk.

    The label of a row left out at extraction is -1, so it is not trained on.
    """
    n, v, d = store.shape.num_samples, store.shape.num_views, store.shape.dim
    embeddings = np.empty((n, v, d), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        rows, chunk_labels, views = store.read_chunk(chunk)
        embeddings[start:stop] = rows
        labels[start:stop] = np.where(left_out(views), -1, chunk_labels)
    return embeddings, labels


def _check(config: FitHeadConfig) -> None:
    HEADS.get(config.head)  # unknown head: the registry lists the valid ones
    for name in ("epochs", "batch_size"):
        if getattr(config, name) <= 0:
            raise InvalidInput(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise InvalidInput(f"--lr must be a positive number, got {config.lr}")


def _train(head: torch.nn.Module, z: torch.Tensor, y: torch.Tensor, config: FitHeadConfig) -> None:
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(head.parameters(), lr=config.lr)
    steps = config.epochs * math.ceil(len(y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    head.train()
    bar = progress(total=steps, desc="fit-head", unit="step", enabled=config.progress)
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = F.cross_entropy(head.training_logits(z[batch], y[batch]), y[batch])
            if not torch.isfinite(loss):
                raise StoreError("the head's loss became non-finite: the stored embeddings hold NaN/Inf?")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.update(1)
    bar.close()
    head.eval()


def fit_head(config: FitHeadConfig) -> FitHeadResult:
    """Fit ``config.head`` on the store's embeddings and install it (see the module docstring).

    Args:
        config: The store, the head and how to fit it.

    Returns:
        What was fitted, its train accuracy and how long it took.

    Raises:
        OutputExists: The store has a head and ``config.overwrite`` is not set.
        InvalidInput: A non-positive size or learning rate, a scale or margin the head refuses, or no labelled
            rows.
        StoreError: Labels beyond the class count, non-finite embeddings or loss, or a store re-extracted
            while the head was fitted.
    """
    import time

    started = time.perf_counter()
    _check(config)
    store = open_store(config.store)
    read = instance_of(store.meta)
    if store.has_head and not config.overwrite:
        raise OutputExists(f"store {config.store} already has a head (use --overwrite to replace it)")
    num_classes = store.shape.num_classes
    # refuses a bad scale/margin (or one given to a linear head) before the store is read
    create_head(config.head, store.shape.dim, num_classes, scale=config.head_scale, margin=config.head_margin)
    embeddings, labels = _read_all(store)
    labelled = labels >= 0
    if not labelled.any():
        raise InvalidInput(f"store {config.store} has no labelled rows to fit a head on")
    if labels.max() >= num_classes:
        raise StoreError(f"store {config.store} has labels up to {labels.max()} but {num_classes} classes")
    torch.manual_seed(config.seed)
    head = create_head(config.head, store.shape.dim, num_classes, scale=config.head_scale, margin=config.head_margin)
    z = torch.from_numpy(embeddings[labelled].reshape(-1, store.shape.dim))
    y = torch.from_numpy(np.repeat(labels[labelled], store.shape.num_views))
    if not torch.isfinite(z).all():
        raise StoreError(f"store {config.store} holds non-finite embeddings; run fsd store verify")
    device = torch.device(config.device)
    head.to(device)
    _train(head, z.to(device), y.to(device), config)
    with torch.no_grad():
        identity = torch.from_numpy(embeddings[labelled, 0]).to(device)
        predicted = head(identity).argmax(dim=1).cpu().numpy()
    accuracy = float((predicted == labels[labelled]).mean())
    _install(config, read, head, _head_meta(head, num_classes, config, int(len(y)), accuracy))
    return FitHeadResult(
        config.store, head.head_type, num_classes, accuracy, int(len(y)), time.perf_counter() - started
    )


def _head_meta(head: torch.nn.Module, num_classes: int, config: FitHeadConfig, samples: int, accuracy: float) -> dict:
    """The ``head`` attributes of a fitted head: what it is and how it was fitted."""
    return {
        "type": head.head_type,
        "num_classes": num_classes,
        "scale": head.scale,
        "margin": head.margin,
        "fitted": {
            "on": "stored embeddings (all views of the labelled rows)",
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "optimizer": "adam, cosine schedule",
            "seed": config.seed,
            "samples": samples,
            "train_accuracy": accuracy,
            "fsd_version": fsd_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }


def _install(config: FitHeadConfig, read: dict, head: torch.nn.Module, meta: dict) -> None:
    """Install the head under the store's writer lock, if the store is still the extraction that was read."""
    weight = head.weight.detach().cpu().numpy()
    bias = None if head.bias is None else head.bias.detach().cpu().numpy()
    with writer_lock(local_path(config.store)):
        writable = open_store(config.store, writable=True)
        if instance_of(writable.meta) != read:
            raise StoreError(
                f"store {config.store} was re-extracted while its head was being fitted; "
                "nothing was installed — run fit-head again on the new embeddings"
            )
        writable.install_head(weight, bias, meta, overwrite=config.overwrite)
