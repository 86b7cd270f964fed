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
    samples_per_class: int | None = None  # class-balanced batches: batch_size / K classes × K samples each
    embedding_dim: int | None = None  # student embedding size; default the teacher's (else a projection is trained)
    init_head_from_teacher: bool = False  # start the student's (trainable) head from the teacher's
    device: str = "auto"
    amp: str | None = None  # mixed precision: None (off), "bf16", "fp16" (CUDA) or "auto"
    overwrite: bool = False
    resume: bool = False  # continue from STUDENT.resume.pt (written after every epoch)
    online_teacher: str | Path | None = None  # baseline: run this teacher (any teacher spec) every step
    trust_code: bool = False  # module:function teachers and students run Python code only when asked to
    views: int = 2  # online baseline only: views per sample, drawn as extraction would draw them
    view_seed: int = 0  # online baseline only: the extraction seed those views replay
    skip_bad_chunks: bool = False  # skip (with a warning) store chunks that fail to decode or hold NaN/Inf
    plot: Path | None = None  # training curves PNG (each loss term, test accuracy)
    tensorboard: Path | None = None  # TensorBoard log directory (needs the tensorboard package)
    progress: bool = True
    image_size: int | None = None  # render views at this size (datasets read from files)
    loader_workers: int | None = None  # DataLoader processes decoding images (None: from the CPU count)


@dataclass
class StudentResult:
    path: Path
    log_path: Path
    test_accuracy: float | None
    parameters: int
    seconds: float
    log: list[dict[str, Any]]
