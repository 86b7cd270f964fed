"""Train a student from a feature store: the teacher network never runs.

(``online_teacher`` is the baseline for comparison: the same data path, views and losses, but the teacher's
embedding is computed at every step instead of read from a store.)

Each step takes a batch of stored teacher embeddings from the stream, renders the student's input images
with the *same* stored view parameters (consistent teaching), computes teacher logits as the stored head
applied to the stored embeddings, and minimises the recipe's weighted losses. The trainer knows nothing
about individual recipes: the criterion is built from data (distill/losses/recipes.py).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from distill.losses import DistillInputs, TrainingContext, build_criterion
from distill.models import count_parameters, create_model
from distill.models.checkpoint import Checkpoint, save_checkpoint
from distill.models.heads import frozen_head, head_from_store, head_state
from distill.models.teachers import load_teacher
from distill.training.common import OptimConfig, accuracy, check_positive, make_optimizer, seed_everything
from distill.training.curves import TensorBoardLog, plot_training_curves
from distill.training.ddp import init_distributed
from featstore.atomic import atomic_path, atomic_write_text
from featstore.datasets import ImageDataset, load_dataset
from featstore.errors import CheckpointError, InputNotFound, InvalidInput, OutputExists, StoreError
from featstore.extract import check_head_classes
from featstore.store import FeatureStore, open_store
from featstore.stream import GeneratedViews, StoreStream
from featstore.views import render_views


@dataclass
class StudentConfig:
    store: str | None
    dataset: str
    out: Path
    arch: str = "convnet_student"
    split: str = "train"
    eval_split: str | None = "test"
    recipe: str = "th-kd"
    loss: str | None = None  # "ce=1,kd=1.5,th=0.02" overrides/extends the recipe
    th_alpha: float | None = None  # the paper's α_TH form: split CE/KD between student and teacher heads
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
    resume: bool = False  # continue from STUDENT.resume.pt (written after every epoch)
    online_teacher: str | Path | None = None  # baseline: run this teacher (any teacher spec) every step
    trust_code: bool = False  # module:function teachers/students run Python code only when asked to
    views: int = 2  # online baseline only: views per sample, drawn as extraction would draw them
    view_seed: int = 0  # online baseline only: the extraction seed those views replay
    skip_bad_chunks: bool = False  # skip (with a warning) store chunks that fail to decode or hold NaN/Inf
    plot: Path | None = None  # training curves PNG (each loss term, test accuracy)
    tensorboard: Path | None = None  # TensorBoard log directory (needs the tensorboard package)
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


def resume_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def check_store_matches(store: FeatureStore, dataset: ImageDataset) -> None:
    """Training pairs store row i with dataset sample i: refuse unless the store was made from this split."""
    made_from = store.meta.get("dataset", {})
    if made_from.get("fingerprint") != dataset.fingerprint():
        raise StoreError(
            f"store {store.url} was extracted from dataset {made_from.get('spec')!r} split "
            f"{made_from.get('split')!r} (fingerprint {str(made_from.get('fingerprint'))[:12]}), not from "
            f"{dataset.spec!r} split {dataset.split!r} (fingerprint {dataset.fingerprint()[:12]})"
        )
    # the student re-renders each stored view from its parameters with the dataset's view policy: it must be
    # the policy the teacher's views were rendered with, or embeddings are paired with other pixels
    policy = (store.meta.get("views") or {}).get("policy")
    if policy is not None and policy != dataset.view_policy.to_dict():
        raise StoreError(
            f"store {store.url} was extracted with view policy {policy}, but dataset {dataset.spec!r} renders "
            f"views with {dataset.view_policy.to_dict()}: the student would see other pixels than the teacher"
        )


def init_head_from(student_head: nn.Module, teacher_head: nn.Module) -> None:
    """Start the student's classifier from the teacher's (official-code option; it stays trainable)."""
    if student_head.weight.shape != teacher_head.weight.shape:
        raise InvalidInput(
            f"cannot initialise the student head {tuple(student_head.weight.shape)} from the "
            f"teacher head {tuple(teacher_head.weight.shape)}: sizes differ"
        )
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


class DistillStep(nn.Module):
    """Everything trainable in one module — student, projection P, loss parameters (e.g. CRD's
    projections) — so that one DistributedDataParallel wrapper synchronises all of it. ``forward`` is one
    training step's loss; the frozen teacher head only ever sees stored or projected embeddings."""

    def __init__(
        self, student: nn.Module, projection: nn.Module, criterion: nn.Module, teacher_head: nn.Module
    ) -> None:
        super().__init__()
        self.student, self.projection, self.criterion = student, projection, criterion
        self.teacher_head = teacher_head  # frozen: no parameter requires grad

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, teacher_embedding: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_s = self.student.forward_features(x)
        z_s_t = self.projection(z_s)
        with torch.no_grad():
            teacher_logits = self.teacher_head(teacher_embedding)
        inputs = DistillInputs(
            student_embedding=z_s,
            student_logits=self.student.head.training_logits(z_s, labels),
            labels=labels,
            teacher_embedding=teacher_embedding,
            teacher_logits=teacher_logits,
            student_logits_th=self.teacher_head(z_s_t),
            student_embedding_t=z_s_t,
            indices=indices,
        )
        result = self.criterion(inputs)
        return result.total, result.terms


@dataclass
class TeacherSide:
    """Where the teacher's outputs come from: a store (read) or, for the online baseline, a network (run)."""

    source: FeatureStore | GeneratedViews  # what the stream iterates: rows, labels, view parameters
    head: nn.Module  # the frozen classifier g_t
    dim: int
    provenance: dict[str, Any]  # recorded in the checkpoint, and part of the --resume identity
    model: nn.Module | None = None  # online baseline only

    def embed(self, stored: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            return stored
        with torch.no_grad():
            return self.model.forward_features(x)


def teacher_side(config: StudentConfig, dataset: ImageDataset, device: torch.device) -> TeacherSide:
    if (config.store is None) == (config.online_teacher is None):
        raise InvalidInput("give exactly one of --store and --online-teacher")
    if config.store is not None:
        store = open_store(config.store)
        check_store_matches(store, dataset)
        if not store.has_head:
            raise InvalidInput(
                f"store {store.url} has no teacher head, which training needs; fit one on the stored "
                f"embeddings first: fsd store fit-head {store.url} --head arcface"
            )
        if store.shape.num_classes != dataset.num_classes:
            raise InvalidInput(
                f"store {store.url}: its teacher head has {store.shape.num_classes} classes, dataset "
                f"{dataset.spec} has {dataset.num_classes}; refit it with fsd store fit-head --overwrite"
            )
        return TeacherSide(
            store,
            head_from_store(store).to(device),
            store.shape.dim,
            {
                "url": store.url,
                "teacher": store.meta.get("teacher"),
                "views": store.shape.num_views,
                "dtype": store.dtype,
                "view_seed": (store.meta.get("views") or {}).get("seed"),
            },
        )
    teacher = load_teacher(config.online_teacher, trust_code=config.trust_code)
    if not teacher.has_head:
        raise InvalidInput(
            f"online teacher {config.online_teacher} has no classifier head; extract a store, fit a head on it "
            "(fsd store fit-head) and train from the store"
        )
    check_head_classes(teacher, dataset.num_classes, dataset.spec)
    if teacher.input_shape is not None and list(teacher.input_shape) != list(dataset.image_shape):
        raise InvalidInput(f"teacher expects input {teacher.input_shape}, dataset gives {list(dataset.image_shape)}")
    if hasattr(teacher.model, "adapt_to_dataset"):
        teacher.model.adapt_to_dataset(dataset)
    bias = None if teacher.head_bias is None else torch.from_numpy(teacher.head_bias)
    head = frozen_head(
        teacher.head_type, torch.from_numpy(teacher.head_weight), bias, teacher.head_scale, teacher.head_margin
    )
    source = GeneratedViews(dataset, config.views, seed=config.view_seed)
    return TeacherSide(
        source,
        head.to(device),
        teacher.embedding_dim,
        {
            "online_teacher": str(config.online_teacher),
            "teacher": {"arch": teacher.arch, "checkpoint_sha256": teacher.checkpoint_sha256},
            "views": config.views,
            "view_seed": config.view_seed,
        },
        model=teacher.model.eval().to(device),
    )


def _run_identity(
    config: StudentConfig, teacher: TeacherSide, dataset: ImageDataset, weights: dict[str, float], world_size: int
) -> dict[str, Any]:
    """What must match for --resume to continue a run rather than mix two different ones."""
    return {
        "teacher": teacher.provenance["teacher"].get("checkpoint_sha256"),
        # the stored (or generated) views: count, dtype and seed (a store's URL may move, its content not)
        "teacher_side": {k: v for k, v in teacher.provenance.items() if k not in ("teacher", "url", "online_teacher")},
        "world_size": world_size,
        "dataset": dataset.fingerprint(),
        "arch": config.arch,
        "recipe": config.recipe,
        "weights": weights,
        "th_alpha": config.th_alpha,
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.optim.lr,
        "embedding_dim": config.embedding_dim,
        "view_sampling": config.view_sampling,
        "temperature": config.temperature,
        "init_head_from_teacher": config.init_head_from_teacher,
    }


def _save_resume_state(
    path: Path, step: DistillStep, optimizer, scheduler, epoch: int, log: list, identity: dict[str, Any]
) -> None:
    state = {
        "epoch": epoch,
        "step": step.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "log": log,
        "identity": identity,
        "rng": {
            name: loss.generator.get_state()
            for name, loss in step.criterion.losses.items()
            if getattr(loss, "generator", None) is not None
        },
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_resume_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state file is a user-facing error
        raise CheckpointError(f"resume state {path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("identity") != identity:
        raise CheckpointError(
            f"resume state {path} belongs to a different run (other store, recipe or options); "
            "run without --resume to start over"
        )
    return state


def train_student(config: StudentConfig) -> StudentResult:
    """Train (or with ``config.resume`` continue) a student; under torchrun, one process per rank."""
    out = Path(config.out)
    resume_path = resume_path_for(out)
    if config.resume and not resume_path.exists():
        raise InputNotFound(
            f"nothing to resume: {resume_path} does not exist"
            + (f" ({out} is already complete)" if out.exists() else "")
        )
    if not config.resume:
        for path in (out, log_path_for(out)):
            if path.exists() and not config.overwrite:
                raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    check_positive(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.optim.lr, temperature=config.temperature
    )
    if config.embedding_dim is not None:
        check_positive(embedding_dim=config.embedding_dim)
    criterion = build_criterion(config.recipe, config.loss, config.temperature, config.th_alpha)  # fails early
    if config.plot is not None and config.plot.exists() and not (config.overwrite or config.resume):
        raise OutputExists(f"{config.plot} already exists (use --overwrite to replace it)")
    dataset = load_dataset(config.dataset, config.split)
    test = load_dataset(config.dataset, config.eval_split) if config.eval_split else None

    started = time.perf_counter()
    dist = init_distributed(config.device)
    device = dist.device
    teacher = teacher_side(config, dataset, device)
    source = teacher.source
    seed_everything(config.seed)
    model_config = {
        "num_classes": source.shape.num_classes,
        "in_channels": dataset.image_shape[0],
        "embedding_dim": config.embedding_dim or teacher.dim,
    }
    student = create_model(config.arch, **model_config).to(device)
    teacher_head = teacher.head
    # P: the student embedding → the teacher's space, trained with the student when the sizes differ
    projection = (
        nn.Identity()
        if model_config["embedding_dim"] == teacher.dim
        else nn.Linear(model_config["embedding_dim"], teacher.dim, bias=False)
    ).to(device)
    if config.init_head_from_teacher:
        init_head_from(student.head, teacher_head)
    stream = StoreStream(
        source,
        config.batch_size,
        seed=config.seed,
        view_sampling=config.view_sampling,
        rank=dist.rank,
        world_size=dist.world_size,
        skip_bad_chunks=config.skip_bad_chunks,
    )
    steps_per_epoch = stream.batches_per_rank()  # equal on every rank, so collective ops never wait forever
    if not dist.active and stream.num_samples() % config.batch_size == 1:
        steps_per_epoch -= 1  # a last batch of one sample has no batch statistics (BatchNorm refuses it)
    if steps_per_epoch <= 0:
        raise InvalidInput(
            f"no full training step per epoch: {stream.num_samples()} samples on rank {dist.rank} of "
            f"{dist.world_size} at batch size {config.batch_size} (use a smaller --batch-size, fewer ranks, or a "
            "store with more chunks: --chunk-rows at extraction)"
        )
    criterion.setup(
        TrainingContext(
            store=source,
            student_dim=model_config["embedding_dim"],
            teacher_dim=teacher.dim,
            num_samples=source.shape.num_samples,
            device=device,
            seed=config.seed,
            skip_bad_chunks=config.skip_bad_chunks,
        )
    )
    step = DistillStep(student, projection, criterion, teacher_head).to(device)
    trainable = [p for p in step.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, config.optim, config.epochs * steps_per_epoch)
    identity = _run_identity(config, teacher, dataset, criterion.weights, dist.world_size)

    log: list[dict[str, Any]] = []
    first_epoch = 0
    if config.resume:
        state = _load_resume_state(resume_path, identity)
        step.load_state_dict(state["step"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, rng_state in state["rng"].items():
            criterion.losses[name].generator.set_state(rng_state)
        log, first_epoch = list(state["log"]), int(state["epoch"])
    runner = dist.wrap(step)
    board = TensorBoardLog(config.tensorboard) if config.tensorboard is not None and dist.is_main else None

    bar = tqdm(
        range(first_epoch, config.epochs),
        desc=f"train-student [{config.recipe}]",
        unit="epoch",
        initial=first_epoch,
        total=config.epochs,
        disable=not config.progress or not dist.is_main,
    )
    for epoch in bar:
        epoch_start = time.perf_counter()
        stream.set_epoch(epoch)
        step.train()
        sums = torch.zeros(len(criterion.weights) + 2, dtype=torch.float64)  # total, terms…, samples
        for batch in itertools.islice(stream, steps_per_epoch):
            x = render_views(dataset.get_images(batch.indices), batch.view_params, dataset.view_policy).to(device)
            total, terms = runner(
                x,
                batch.labels.to(device),
                teacher.embed(batch.embeddings.to(device), x),
                torch.from_numpy(batch.indices).to(device),
            )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            n = len(batch.indices)
            values = [float(total.detach())] + [float(terms[name].detach()) for name in criterion.weights]
            sums += torch.tensor([v * n for v in values] + [n], dtype=torch.float64)
        sums = dist.all_reduce_sum(sums)
        names = ["total", *criterion.weights]
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": scheduler.get_last_lr()[0],
            "loss": {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)},
            "seconds": time.perf_counter() - epoch_start,
        }
        cosine = head_cosine(student.head, teacher_head)
        if cosine is not None:
            entry["head_cosine"] = cosine
        if test is not None and dist.is_main:
            entry["test_accuracy"] = accuracy(student, test, device)
            bar.set_postfix(loss=f"{entry['loss']['total']:.3f}", acc=f"{entry['test_accuracy']:.3f}")
        log.append(entry)
        if board is not None:
            board.log_epoch(entry)
        if dist.is_main:
            _save_resume_state(resume_path, step, optimizer, scheduler, epoch + 1, log, identity)
        dist.barrier()

    test_accuracy = log[-1].get("test_accuracy") if log else None
    log_path = log_path_for(out)
    if dist.is_main:
        ckpt = Checkpoint(
            kind="student",
            arch=config.arch,
            model_config=model_config,
            state_dict={k: v.cpu() for k, v in student.state_dict().items()},
            head_type=student.head.head_type,
            embedding_dim=model_config["embedding_dim"],
            num_classes=source.shape.num_classes,
            dataset={
                "spec": dataset.spec,
                "split": dataset.split,
                "fingerprint": dataset.fingerprint(),
                "image_shape": list(dataset.image_shape),
            },
            extra={
                "recipe": config.recipe,
                "weights": criterion.weights,
                "th_alpha": config.th_alpha,
                "temperature": config.temperature,
                "seed": config.seed,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "optim": asdict(config.optim),
                "view_sampling": config.view_sampling,
                "world_size": dist.world_size,
                "store": teacher.provenance,
                "teacher_head": head_state(teacher_head),
                "projection": {k: v.cpu() for k, v in projection.state_dict().items()},
                "init_head_from_teacher": config.init_head_from_teacher,
                "log": log,
                "test_accuracy": test_accuracy,
            },
        )
        save_checkpoint(ckpt, out, overwrite=True)
        atomic_write_text(
            log_path, json.dumps({"recipe": config.recipe, "weights": criterion.weights, "epochs": log}, indent=2)
        )
        if config.plot is not None:
            plot_training_curves(log, config.plot, title=f"{config.arch} [{config.recipe}]")
        resume_path.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    if board is not None:
        board.close()
    dist.close()
    return StudentResult(out, log_path, test_accuracy, count_parameters(student), time.perf_counter() - started, log)
