"""What a student run is asked to do (:class:`StudentConfig`) and what it gives back (:class:`StudentResult`).

The config lives apart from the trainer so that every module of ``distill.training`` can name it without
importing the trainer: the import graph stays acyclic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.training.common import OptimConfig


@dataclass
class StudentConfig:
    """Everything a student run is asked to do; the fields mirror ``fsd train-student``'s options.

    Attributes:
        store: The teacher feature store to train from (None with ``online_teacher``).
        dataset: The dataset spec whose samples the store's rows are.
        out: The student checkpoint to write.
        arch: The student model's registered name.
        split: The dataset split trained on.
        eval_split: The split top-1 is measured on after every epoch (None: no evaluation).
        recipe: A name in ``distill.losses.RECIPES``.
        loss: ``--loss`` NAME=WEIGHT items overriding or extending the recipe, e.g. ``"ce=1,kd=1.5,th=0.02"``.
        th_alpha: The paper's α_TH form: split CE and KD between the student and the teacher head.
        temperature: T of the KD terms.
        epochs: Passes over the store.
        batch_size: Samples per step.
        optim: The optimiser and its schedule.
        seed: Seeds the student's initialisation, the stream's order and the losses' draws.
        view_sampling: ``"random"`` or ``"cycle"``: how a stored view is picked per sample and epoch.
        samples_per_class: K, for class-balanced batches of batch_size / K classes × K samples (None: plain).
        embedding_dim: The student embedding's size (None: the teacher's; otherwise a projection to the
            teacher's space is trained).
        init_head_from_teacher: Whether the student's (trainable) head starts from the teacher's.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... .
        amp: Mixed precision: None (off), ``"bf16"``, ``"fp16"`` (CUDA) or ``"auto"``.
        overwrite: Whether an existing ``out`` may be replaced.
        resume: Whether to continue from the ``.resume.pt`` file written after every epoch.
        online_teacher: Baseline only: a teacher spec run at every step instead of reading a store.
        trust_code: Whether ``module:function`` teachers and students may run Python code.
        views: Online baseline only: views per sample, drawn as extraction would draw them.
        view_seed: Online baseline only: the extraction seed those views replay.
        skip_bad_chunks: Whether store chunks that fail to decode or hold NaN/Inf are skipped with a warning.
        plot: Where to write a PNG of the training curves (each loss term, test accuracy).
        tensorboard: A TensorBoard log directory (needs the tensorboard package).
        progress: Whether to show progress bars.
        image_size: The size views are rendered at, for datasets read from files.
        loader_workers: DataLoader processes decoding images (None: from the CPU count).
    """

    store: str | None
    dataset: str
    out: Path
    arch: str = "convnet_student"
    split: str = "train"
    eval_split: str | None = "test"
    recipe: str = "th-kd"
    loss: str | None = None
    th_alpha: float | None = None
    temperature: float = 4.0
    epochs: int = 30
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    view_sampling: str = "random"
    samples_per_class: int | None = None
    embedding_dim: int | None = None
    init_head_from_teacher: bool = False
    device: str = "auto"
    amp: str | None = None
    overwrite: bool = False
    resume: bool = False
    online_teacher: str | Path | None = None
    trust_code: bool = False
    views: int = 2
    view_seed: int = 0
    skip_bad_chunks: bool = False
    plot: Path | None = None
    tensorboard: Path | None = None
    progress: bool = True
    image_size: int | None = None
    loader_workers: int | None = None


@dataclass
class StudentResult:
    """What a finished student run gives back.

    Attributes:
        path: The student checkpoint written.
        log_path: The JSON log of the run.
        test_accuracy: Top-1 on ``eval_split`` after the last epoch (None without one).
        parameters: The student's parameter count.
        seconds: The run's wall-clock time.
        log: One record per epoch (loss terms, accuracy, learning rate, ...).
    """

    path: Path
    log_path: Path
    test_accuracy: float | None
    parameters: int
    seconds: float
    log: list[dict[str, Any]]
