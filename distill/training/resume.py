"""Resume identity and state: what must match for ``--resume`` to continue a run rather than mix two.

The state (model, optimiser, schedule, each loss's resumable state, log) is written atomically after every complete epoch, so
a killed run loses at most the epoch in progress and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.training.teacher_side import TeacherSide
from featstore.atomic import atomic_torch_save
from featstore.datasets import ImageDataset
from featstore.errors import CheckpointError

if TYPE_CHECKING:
    from distill.training.config import StudentConfig


def run_identity(
    config: StudentConfig, teacher: TeacherSide, dataset: ImageDataset, weights: dict[str, float], world_size: int
) -> dict[str, Any]:
    """What must match for --resume to continue a run rather than mix two different ones.

    Args:
        config: The run's config.
        teacher: The teacher side (its provenance names the teacher and the stored views).
        dataset: The training split (its fingerprint).
        weights: The effective loss weights.
        world_size: The number of DDP processes (a batch's rows depend on it).

    Returns:
        A JSON-like dict that equals the recorded one exactly when the run may continue.
    """
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
        "optim": {k: v for k, v in vars(config.optim).items() if k != "lr"},
        "amp": config.amp,
        "embedding_dim": config.embedding_dim,
        "view_sampling": config.view_sampling,
        "temperature": config.temperature,
        "init_head_from_teacher": config.init_head_from_teacher,
        # only when set, so the resume state of a plain run keeps its identity
        **({"samples_per_class": config.samples_per_class} if config.samples_per_class else {}),
    }


def save_resume_state(
    path: Path, step: nn.Module, optimizer, scheduler, epoch: int, log: list, identity: dict[str, Any]
) -> None:
    """Write the resume state of ``epoch`` complete epochs to ``path``, atomically.

    Args:
        path: The resume file (``OUT.resume.pt``).
        step: The trainable module; its criterion supplies each loss's resumable state.
        optimizer: The optimiser.
        scheduler: The learning-rate schedule.
        epoch: Epochs complete.
        log: The epoch log so far.
        identity: The run's :func:`run_identity`.
    """
    state = {
        "epoch": epoch,
        "step": step.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "log": log,
        "identity": identity,
        "losses": step.criterion.resume_state(),
    }
    atomic_torch_save(state, path)


def load_resume_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read the resume state at ``path`` if it belongs to the run of ``identity``.

    Args:
        path: The resume file.
        identity: The continuing run's :func:`run_identity`.

    Returns:
        The state dict :func:`save_resume_state` wrote.

    Raises:
        CheckpointError: The file is unreadable or belongs to a different run.
    """
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
