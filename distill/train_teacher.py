"""Train a teacher with cross-entropy, on random views of the split, and save its checkpoint.

The teacher is trained once; afterwards only its store is used. (SH-KD's frozen student head arrives
with issue 3/6 through ``head_from``.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from distill.checkpoint import Checkpoint, save_checkpoint
from distill.models import count_parameters, create_model
from distill.training import OptimConfig, accuracy, check_positive, epoch_views, make_optimizer, seed_everything, select_device
from featstore.datasets import load_dataset
from featstore.errors import OutputExists
from featstore.views import render_views


@dataclass
class TeacherConfig:
    dataset: str
    out: Path
    arch: str = "convnet_teacher"
    split: str = "train"
    eval_split: str | None = "test"
    embedding_dim: int | None = None
    head: str = "linear"
    epochs: int = 30
    batch_size: int = 64
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class TeacherResult:
    path: Path
    train_accuracy: float
    test_accuracy: float | None
    parameters: int
    seconds: float


def train_teacher(config: TeacherConfig) -> TeacherResult:
    """Train and save; refuses an existing output before doing any work."""
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it)")
    check_positive(epochs=config.epochs, batch_size=config.batch_size, lr=config.optim.lr)
    if config.embedding_dim is not None:
        check_positive(embedding_dim=config.embedding_dim)
    started = time.perf_counter()
    device = select_device(config.device)
    generator = seed_everything(config.seed)
    train = load_dataset(config.dataset, config.split)
    test = load_dataset(config.dataset, config.eval_split) if config.eval_split else None
    model_config = {"num_classes": train.num_classes, "in_channels": train.image_shape[0],
                    "embedding_dim": config.embedding_dim, "head": config.head}
    model = create_model(config.arch, **model_config).to(device)
    model_config = {k: v for k, v in model_config.items() if v is not None}
    steps_per_epoch = -(-len(train) // config.batch_size)
    optimizer, scheduler = make_optimizer(model.parameters(), config.optim, config.epochs * steps_per_epoch)
    log = []
    for epoch in tqdm(range(config.epochs), desc="train-teacher", unit="epoch", disable=not config.progress):
        model.train()
        params = epoch_views(train, config.seed, epoch)
        order = torch.randperm(len(train), generator=generator).numpy()
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            x = render_views(train.get_images(idx), params[idx], train.view_policy).to(device)
            y = torch.from_numpy(train.labels[idx]).to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        log.append({"epoch": epoch + 1, "loss": total / seen})
    train_acc = accuracy(model, train, device)
    test_acc = accuracy(model, test, device) if test is not None else None
    ckpt = Checkpoint(
        kind="teacher", arch=config.arch, model_config=model_config,
        state_dict={k: v.cpu() for k, v in model.state_dict().items()},
        head_type=config.head, embedding_dim=int(model.embedding_dim), num_classes=train.num_classes,
        dataset={"spec": train.spec, "split": train.split, "fingerprint": train.fingerprint(),
                 "image_shape": list(train.image_shape)},
        extra={"log": log, "train_accuracy": train_acc, "test_accuracy": test_acc, "seed": config.seed,
               "epochs": config.epochs},
    )
    save_checkpoint(ckpt, out, overwrite=config.overwrite)
    return TeacherResult(out, train_acc, test_acc, count_parameters(model), time.perf_counter() - started)
