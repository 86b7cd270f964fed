"""Train a student from a feature store: the teacher network never runs.

Each step takes a batch of stored teacher embeddings from the stream, renders the student's input images
with the *same* stored view parameters (consistent teaching), computes teacher logits as the stored head
applied to the stored embeddings, and minimises the recipe's weighted losses. The trainer knows nothing
about individual recipes: the criterion is built from data (distill/losses/recipes.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from distill.checkpoint import Checkpoint, save_checkpoint
from distill.heads import head_from_store, head_state
from distill.losses import DistillInputs, build_criterion
from distill.models import count_parameters, create_model
from distill.training import OptimConfig, accuracy, check_positive, make_optimizer, seed_everything, select_device
from featstore.atomic import atomic_write_text
from featstore.datasets import ImageDataset, load_dataset
from featstore.errors import InvalidInput, OutputExists, StoreError
from featstore.store import FeatureStore, open_store
from featstore.stream import StoreStream
from featstore.views import render_views


@dataclass
class StudentConfig:
    store: str
    dataset: str
    out: Path
    arch: str = "convnet_student"
    split: str = "train"
    eval_split: str | None = "test"
    recipe: str = "th-kd"
    loss: str | None = None  # "ce=1,kd=1.5,th=0.02" overrides/extends the recipe
    temperature: float = 4.0
    epochs: int = 30
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    view_sampling: str = "random"
    embedding_dim: int | None = None  # student embedding size; default the teacher's (else a projection is trained)
    init_head_from_teacher: bool = False  # start the student's (trainable) head from the teacher's
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class StudentResult:
    path: Path
    log_path: Path
    test_accuracy: float | None
    parameters: int
    seconds: float
    log: list[dict[str, Any]]


def log_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".log.json")


def check_store_matches(store: FeatureStore, dataset: ImageDataset) -> None:
    """Training pairs store row i with dataset sample i: refuse unless the store was made from this split."""
    made_from = store.meta.get("dataset", {})
    if made_from.get("fingerprint") != dataset.fingerprint():
        raise StoreError(f"store {store.url} was extracted from dataset {made_from.get('spec')!r} split "
                         f"{made_from.get('split')!r} (fingerprint {str(made_from.get('fingerprint'))[:12]}), not from "
                         f"{dataset.spec!r} split {dataset.split!r} (fingerprint {dataset.fingerprint()[:12]})")


def init_head_from(student_head: nn.Module, teacher_head: nn.Module) -> None:
    """Start the student's classifier from the teacher's (official-code option; it stays trainable)."""
    if student_head.weight.shape != teacher_head.weight.shape:
        raise InvalidInput(f"cannot initialise the student head {tuple(student_head.weight.shape)} from the "
                           f"teacher head {tuple(teacher_head.weight.shape)}: sizes differ")
    with torch.no_grad():
        student_head.weight.copy_(teacher_head.weight)
        if student_head.bias is not None and teacher_head.bias is not None:
            student_head.bias.copy_(teacher_head.bias)


def head_cosine(student_head: nn.Module, teacher_head: nn.Module) -> float | None:
    """Mean over classes of cos(student row c, teacher row c) — how far the two classifiers agree (logged
    per epoch as in the official TH-KD code). None when the sizes differ."""
    if student_head.weight.shape != teacher_head.weight.shape:
        return None
    with torch.no_grad():
        return float(F.cosine_similarity(student_head.weight, teacher_head.weight, dim=1).mean())


def train_student(config: StudentConfig) -> StudentResult:
    out = Path(config.out)
    for path in (out, log_path_for(out)):
        if path.exists() and not config.overwrite:
            raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    check_positive(epochs=config.epochs, batch_size=config.batch_size, lr=config.optim.lr,
                   temperature=config.temperature)
    if config.embedding_dim is not None:
        check_positive(embedding_dim=config.embedding_dim)
    criterion = build_criterion(config.recipe, config.loss, config.temperature)  # bad names fail before any work
    store = open_store(config.store)
    dataset = load_dataset(config.dataset, config.split)
    check_store_matches(store, dataset)
    test = load_dataset(config.dataset, config.eval_split) if config.eval_split else None

    started = time.perf_counter()
    device = select_device(config.device)
    seed_everything(config.seed)
    model_config = {"num_classes": store.shape.num_classes, "in_channels": dataset.image_shape[0],
                    "embedding_dim": config.embedding_dim or store.shape.dim}
    student = create_model(config.arch, **model_config).to(device)
    teacher_head = head_from_store(store).to(device)
    # P: the student embedding → the teacher's space, trained with the student when the sizes differ
    projection = (nn.Identity() if model_config["embedding_dim"] == store.shape.dim
                  else nn.Linear(model_config["embedding_dim"], store.shape.dim, bias=False)).to(device)
    if config.init_head_from_teacher:
        init_head_from(student.head, teacher_head)
    stream = StoreStream(store, config.batch_size, seed=config.seed, view_sampling=config.view_sampling)
    params = list(student.parameters()) + list(projection.parameters()) + list(criterion.parameters())
    optimizer, scheduler = make_optimizer(params, config.optim, config.epochs * len(stream))

    log: list[dict[str, Any]] = []
    bar = tqdm(range(config.epochs), desc=f"train-student [{config.recipe}]", unit="epoch",
               disable=not config.progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        stream.set_epoch(epoch)
        student.train()
        sums: dict[str, float] = {}
        seen = 0
        for batch in stream:
            x = render_views(dataset.get_images(batch.indices), batch.view_params, dataset.view_policy).to(device)
            teacher_embedding = batch.embeddings.to(device)
            labels = batch.labels.to(device)
            z_s = student.forward_features(x)
            z_s_t = projection(z_s)
            with torch.no_grad():
                teacher_logits = teacher_head(teacher_embedding)
            inputs = DistillInputs(student_embedding=z_s, student_logits=student.head.training_logits(z_s, labels),
                                   labels=labels, teacher_embedding=teacher_embedding, teacher_logits=teacher_logits,
                                   student_logits_th=teacher_head(z_s_t), student_embedding_t=z_s_t)
            result = criterion(inputs)
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            optimizer.step()
            scheduler.step()
            n = len(batch.indices)
            seen += n
            sums["total"] = sums.get("total", 0.0) + float(result.total.detach()) * n
            for name, value in result.terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                                 "loss": {k: v / seen for k, v in sums.items()},
                                 "seconds": time.perf_counter() - epoch_start}
        cosine = head_cosine(student.head, teacher_head)
        if cosine is not None:
            entry["head_cosine"] = cosine
        if test is not None:
            entry["test_accuracy"] = accuracy(student, test, device)
            bar.set_postfix(loss=f"{entry['loss']['total']:.3f}", acc=f"{entry['test_accuracy']:.3f}")
        log.append(entry)

    test_accuracy = log[-1].get("test_accuracy") if log else None
    ckpt = Checkpoint(
        kind="student", arch=config.arch, model_config=model_config,
        state_dict={k: v.cpu() for k, v in student.state_dict().items()},
        head_type=student.head.head_type, embedding_dim=model_config["embedding_dim"],
        num_classes=store.shape.num_classes,
        dataset={"spec": dataset.spec, "split": dataset.split, "fingerprint": dataset.fingerprint(),
                 "image_shape": list(dataset.image_shape)},
        extra={"recipe": config.recipe, "weights": criterion.weights, "temperature": config.temperature,
               "seed": config.seed, "epochs": config.epochs, "batch_size": config.batch_size,
               "optim": asdict(config.optim), "view_sampling": config.view_sampling,
               "store": {"url": store.url, "teacher": store.meta.get("teacher"), "views": store.shape.num_views,
                         "dtype": store.dtype},
               "teacher_head": head_state(teacher_head),
               "projection": {k: v.cpu() for k, v in projection.state_dict().items()},
               "init_head_from_teacher": config.init_head_from_teacher,
               "log": log, "test_accuracy": test_accuracy},
    )
    save_checkpoint(ckpt, out, overwrite=config.overwrite)
    log_path = log_path_for(out)
    atomic_write_text(log_path, json.dumps({"recipe": config.recipe, "weights": criterion.weights,
                                            "epochs": log}, indent=2))
    return StudentResult(out, log_path, test_accuracy, count_parameters(student),
                         time.perf_counter() - started, log)
