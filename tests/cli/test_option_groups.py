"""Both trainers declare their data, optimiser and run options through one decorator per group."""

from __future__ import annotations

import dataclasses

from cli.cmd_train_student import command as train_student
from cli.cmd_train_teacher import command as train_teacher
from distill.models.checkpoint import load_checkpoint
from distill.training.common import OptimConfig

GROUPS = {
    "data": {"dataset", "split", "eval_split", "image_size", "loader_workers"},
    "optim": {f.name for f in dataclasses.fields(OptimConfig)},
    "run": {"seed", "device", "overwrite", "quiet"},
}


def _names(command) -> set[str]:
    return {p.name for p in command.params}


def test_both_trainers_take_every_option_of_each_group():
    for group, names in GROUPS.items():
        assert names <= _names(train_student), group
        assert names <= _names(train_teacher), group


def test_train_teacher_applies_and_records_the_optimiser_options(tmp_path, h):
    out = tmp_path / "t.pt"
    h.run_ok(
        "train-teacher", "--dataset", "digits", "--out", out, "--epochs", 1, "--quiet", "--eval-split", "none",
        "--optimizer", "adamw", "--lr", "0.002", "--warmup-epochs", "0.5", "--grad-clip", "5", "--momentum", "0.8",
    )  # fmt: skip
    optim = load_checkpoint(out, kind="teacher").extra["optim"]
    assert optim == dataclasses.asdict(
        OptimConfig(lr=0.002, optimizer="adamw", warmup_epochs=0.5, grad_clip=5.0, momentum=0.8)
    )
