"""Train a teacher with cross-entropy, on random views of the split, and save its checkpoint.

The teacher is trained once; afterwards only its store is used. Margin heads (arcface, cosface) train
with their margin. ``head_from`` is SH-KD's step 2 (docs/methods.md): the teacher's classifier is *replaced* by a
trained student's classifier, frozen, so the teacher's backbone learns a representation that the small
student's classifier can read.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.models import count_parameters, create_model
from distill.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from distill.models.inference import select_device
from distill.training.common import (
    VIEW_SEED,
    OptimConfig,
    Optimisation,
    accuracy,
    check_positive,
    seed_everything,
)
from distill.training.outputs import output_locked
from featstore.atomic import file_sha256
from featstore.datasets import LoadOptions, load_dataset, load_eval_dataset
from featstore.errors import InvalidInput, OutputExists, TrainingDiverged
from featstore.loader import drawn_batches
from featstore.progress import progress


@dataclass
class TeacherConfig:
    """Everything a teacher run is asked to do; the fields mirror ``fsd train-teacher``'s options.

    Attributes:
        dataset: The dataset spec trained on.
        out: The teacher checkpoint to write.
        arch: The teacher model's registered name.
        split: The dataset split trained on.
        eval_split: The split top-1 is measured on at the end (None: no evaluation).
        embedding_dim: The embedding's size (None: the architecture's default).
        head: The classifier head: ``"linear"`` or a margin head (``"arcface"``, ``"cosface"``).
        head_scale: A margin head's scale s (None: the head's default).
        head_margin: A margin head's margin m (None: the head's default).
        head_from: SH-KD: a student checkpoint whose head is copied in and frozen.
        init_from: A teacher checkpoint of the same architecture to start the backbone (not the head) from.
        epochs: Passes over the split.
        batch_size: Samples per step.
        optim: The optimiser and its schedule.
        seed: Seeds the initialisation, the batch order and the views.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... .
        overwrite: Whether an existing ``out`` may be replaced.
        progress: Whether to show a progress bar.
        image_size: Render views at this size (datasets read from files; None: the dataset's own).
        loader_workers: DataLoader processes (None: from the CPU count).
    """

    dataset: str
    out: Path
    arch: str = "convnet_teacher"
    split: str = "train"
    eval_split: str | None = "test"
    embedding_dim: int | None = None
    head: str = "linear"
    head_scale: float | None = None
    head_margin: float | None = None
    head_from: Path | None = None  # SH-KD: a student checkpoint whose head is copied in and frozen
    init_from: Path | None = None  # start the backbone (not the head) from this teacher checkpoint
    epochs: int = 30
    batch_size: int = 64
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    image_size: int | None = None  # --image-size: render views at this size (datasets read from files)
    loader_workers: int | None = None  # --loader-workers: DataLoader processes (None: from the CPU count)


@dataclass
class TeacherResult:
    """What :func:`train_teacher` wrote and measured.

    Attributes:
        path: The checkpoint written.
        train_accuracy: Top-1 on the training split, after training.
        test_accuracy: Top-1 on the evaluation split (None without one).
        parameters: The model's parameter count.
        seconds: Wall-clock time of the whole run.
    """

    path: Path
    train_accuracy: float
    test_accuracy: float | None
    parameters: int
    seconds: float


def install_frozen_head(model: torch.nn.Module, student: Checkpoint, path: Path, num_classes: int) -> dict:
    """SH-KD: copy the student's classifier into ``model.head`` and freeze it; return provenance."""
    if student.num_classes != num_classes:
        raise InvalidInput(f"--head-from {path}: its head has {student.num_classes} classes, the dataset {num_classes}")
    head_keys = {k[len("head.") :]: v for k, v in student.state_dict.items() if k.startswith("head.")}
    try:
        model.head.load_state_dict(head_keys)
    except RuntimeError as exc:
        raise InvalidInput(f"--head-from {path}: head does not fit the teacher: {str(exc).splitlines()[0]}") from None
    model.head.requires_grad_(False)
    return {
        "head_from": {
            "path": str(path),
            "sha256": file_sha256(path),
            "recipe": student.extra.get("recipe"),
            "test_accuracy": student.extra.get("test_accuracy"),
        }
    }


def init_backbone(model: torch.nn.Module, arch: str, path: Path) -> dict:
    """Copy every weight but the head's from teacher checkpoint ``path`` (same architecture); provenance."""
    source = load_checkpoint(path, kind="teacher")
    if source.arch != arch:
        raise InvalidInput(f"--init-from {path}: its architecture is {source.arch!r}, not {arch!r}")
    backbone = {k: v for k, v in source.state_dict.items() if not k.startswith("head.")}
    target = model.state_dict()
    misfit = [k for k, v in backbone.items() if k in target and tuple(target[k].shape) != tuple(v.shape)]
    if misfit:  # another embedding size or input channel count: load_state_dict would raise a torch traceback
        k = misfit[0]
        raise InvalidInput(
            f"--init-from {path}: weights do not fit the model ({k}: {tuple(backbone[k].shape)} in the checkpoint, "
            f"{tuple(target[k].shape)} here; {len(misfit)} tensor(s) differ)"
        )
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise InvalidInput(f"--init-from {path}: weights do not fit the model ({(missing + unexpected)[:3]} …)")
    return {
        "init_from": {
            "path": str(path),
            "sha256": file_sha256(path),
            "test_accuracy": source.extra.get("test_accuracy"),
        }
    }


def check_head_from_options(config: TeacherConfig) -> None:
    """Refuse head options that SH-KD would ignore.

    SH-KD takes the student's head as it is (type, scale, margin, embedding size): options that would describe
    another head are refused rather than silently dropped.

    Raises:
        InvalidInput: ``head_from`` is set together with a head or embedding option.
    """
    ignored = [
        flag
        for flag, value, default in (
            ("--head", config.head, "linear"),
            ("--head-scale", config.head_scale, None),
            ("--head-margin", config.head_margin, None),
            ("--embedding-dim", config.embedding_dim, None),
        )
        if value != default
    ]
    if ignored:
        raise InvalidInput(
            f"--head-from takes the student's head as it is; {', '.join(ignored)} would be ignored: drop "
            f"{'it' if len(ignored) == 1 else 'them'}"
        )


def build_teacher_model(config: TeacherConfig, train, device) -> tuple[torch.nn.Module, dict, dict]:
    """Build the teacher model for ``train`` on ``device``.

    With ``head_from`` (SH-KD) the teacher takes the student's head type and embedding size, and the student's
    classifier is installed frozen.

    Returns:
        (model, model_config as recorded in the checkpoint, provenance of ``head_from``/``init_from``).
    """
    if config.head_from is not None:
        check_head_from_options(config)
    shared = load_checkpoint(config.head_from, kind="student") if config.head_from is not None else None
    model_config = {
        "num_classes": train.num_classes,
        "in_channels": train.image_shape[0],
        "embedding_dim": config.embedding_dim,
        "head": config.head,
        "head_scale": config.head_scale,
        "head_margin": config.head_margin,
    }
    if shared is not None:  # the teacher takes the student's head type and embedding size
        model_config.update(
            embedding_dim=shared.embedding_dim,
            head=shared.head_type,
            head_scale=shared.model_config.get("head_scale"),
            head_margin=shared.model_config.get("head_margin"),
        )
    model = create_model(config.arch, **model_config).to(device)
    model_config = {k: v for k, v in model_config.items() if v is not None}
    provenance: dict = {}
    if config.init_from is not None:
        provenance.update(init_backbone(model, config.arch, config.init_from))
    if shared is not None:
        provenance.update(install_frozen_head(model, shared, config.head_from, train.num_classes))
    return model, model_config, provenance


def train_epochs(
    model, train, config: TeacherConfig, optimisation: Optimisation, generator, usable: int, device
) -> list:
    """Run the CE loop: fresh random views every epoch, batches in a seeded random order.

    The progress bar moves per step, not per epoch: one epoch of a large face set takes hours.

    Returns:
        The epoch log: per epoch, the mean loss and the learning rate after the epoch's last step.
    """
    steps_per_epoch = -(-usable // config.batch_size)
    bar = progress(total=config.epochs * steps_per_epoch, desc="train-teacher", unit="step", enabled=config.progress)
    with bar:
        return [
            _train_epoch(model, train, config, optimisation, generator, usable, device, epoch, bar)
            for epoch in range(config.epochs)
        ]


def _train_epoch(
    model, train, config: TeacherConfig, optimisation: Optimisation, generator, usable: int, device, epoch: int, bar
) -> dict:
    """One epoch of :func:`train_epochs`: its log entry; ``bar`` advances once per step."""
    model.train()
    order = torch.randperm(len(train), generator=generator).numpy()
    total, seen = 0.0, 0
    # fresh views each epoch, drawn under a seed space disjoint from extraction's (see epoch_views)
    views = drawn_batches(train, order[:usable], config.batch_size, seed=VIEW_SEED + config.seed, view=epoch + 1)
    for step, rendered in enumerate(views):
        idx = rendered.rows
        x = rendered.x[:, 0].to(device)
        y = torch.from_numpy(train.labels[idx]).to(device)
        loss = F.cross_entropy(model.head.training_logits(model.forward_features(x), y), y)
        if not bool(torch.isfinite(loss.detach())):  # stop before a NaN reaches the weights
            raise TrainingDiverged(
                f"the loss became non-finite ({float(loss)}) at epoch {epoch + 1} step "
                f"{step + 1}; nothing was written (a lower --lr usually cures it)"
            )
        optimisation.zero_grad()
        optimisation.backward(loss)
        optimisation.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        bar.update(1)
        bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} loss {total / seen:.3f}", False)
    return {"epoch": epoch + 1, "loss": total / seen, "lr": optimisation.lr}


@output_locked()  # one writer per --out
def train_teacher(config: TeacherConfig) -> TeacherResult:
    """Train a teacher with cross-entropy and save its checkpoint; one writer per ``config.out``.

    An existing output is refused before any work is done.

    Args:
        config: What the run is asked to do.

    Returns:
        The checkpoint written, its train and test accuracy, parameter count and wall-clock time.

    Raises:
        OutputExists: ``config.out`` exists and ``config.overwrite`` is not set.
        InvalidInput: An option or the dataset cannot be trained on (bad sizes, a head that does not fit).
        TrainingDiverged: The loss became non-finite; nothing is written.
    """
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it)")
    check_positive(epochs=config.epochs, batch_size=config.batch_size)
    config.optim.validate()
    if config.embedding_dim is not None:
        check_positive(embedding_dim=config.embedding_dim)
    started = time.perf_counter()
    device = select_device(config.device)
    generator = seed_everything(config.seed)
    load = {"image_size": config.image_size, "options": LoadOptions(workers=config.loader_workers)}
    train = load_dataset(config.dataset, config.split, **load)
    test = load_eval_dataset(config.dataset, config.eval_split, **load)
    model, model_config, provenance = build_teacher_model(config, train, device)
    # a last batch of one sample has no batch statistics (BatchNorm refuses it in training): it is left out
    usable = len(train) - (1 if len(train) % config.batch_size == 1 else 0)
    if usable < 2:
        raise InvalidInput(f"training needs at least 2 samples per batch; the split has {len(train)}")
    steps_per_epoch = -(-usable // config.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimisation = Optimisation.build(trainable, config.optim, config.epochs, steps_per_epoch)
    log = train_epochs(model, train, config, optimisation, generator, usable, device)
    train_acc = accuracy(model, train, device)
    test_acc = accuracy(model, test, device) if test is not None else None
    ckpt = Checkpoint(
        kind="teacher",
        arch=config.arch,
        model_config=model_config,
        state_dict={k: v.cpu() for k, v in model.state_dict().items()},
        head_type=model.head.head_type,
        embedding_dim=int(model.embedding_dim),
        num_classes=train.num_classes,
        dataset={
            "spec": train.spec,
            "split": train.split,
            "fingerprint": train.fingerprint(),
            "image_shape": list(train.image_shape),
            "normalisation": train.normalisation,  # how to scale other images for it (eval --bin)
        },
        extra={
            "log": log,
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "seed": config.seed,
            "epochs": config.epochs,
            "optim": asdict(config.optim),
            "seconds": round(time.perf_counter() - started, 1),  # what the teacher cost (benchmarks report it)
            **provenance,
        },
    )
    save_checkpoint(ckpt, out, overwrite=config.overwrite)
    return TeacherResult(out, train_acc, test_acc, count_parameters(model), time.perf_counter() - started)
