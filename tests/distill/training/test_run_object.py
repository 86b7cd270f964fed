"""The student run object and the training options built on it: a non-finite loss stops the run naming the
step and keeps the last good resume state; non-finite options are refused; --amp (bf16 on CPU), AdamW,
linear warm-up and gradient clipping do what they say; the run prints its effective loss weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import distill.training.run as run_module
from distill.models.checkpoint import load_checkpoint, load_teacher_source
from distill.training.common import OptimConfig, make_optimizer
from distill.training.run import StudentRun, resume_path_for
from distill.training.student import StudentConfig, train_student
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.datasets import load_dataset
from featstore.errors import InvalidInput, TrainingDiverged
from featstore.extract import extract_teacher


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("run_object")
    teacher = root / "teacher.pt"
    train_teacher(TeacherConfig(dataset="digits", out=teacher, epochs=1, eval_split=None, progress=False))
    url = str(root / "store.zarr")
    extract_teacher(load_teacher_source(teacher), load_dataset("digits"), url, views=2, progress=False)
    return url


def config(store: str, out: Path, **kwargs) -> StudentConfig:
    options = {"epochs": 2, "eval_split": None, "progress": False, "batch_size": 256, "recipe": "th-kd"}
    options.update(kwargs)
    return StudentConfig(store=store, dataset="digits", out=out, **options)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_state(store, tmp_path, monkeypatch):
    out = tmp_path / "s.pt"
    steps = StudentRun.build(config(store, out)).steps_per_epoch
    real_render, calls = run_module.render_views, {"n": 0}

    def poisoned(*args, **kwargs):  # the second step of epoch 2 sees NaN pixels → NaN loss
        calls["n"] += 1
        x = real_render(*args, **kwargs)
        return x * float("nan") if calls["n"] == steps + 2 else x

    monkeypatch.setattr(run_module, "render_views", poisoned)
    with pytest.raises(TrainingDiverged, match=r"epoch 2 step 2 .*epoch 1\) is kept in .*--resume"):
        train_student(config(store, out))
    assert not out.exists()  # no NaN model written
    state = torch.load(resume_path_for(out), weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["step"].values() if v.is_floating_point())
    monkeypatch.setattr(run_module, "render_views", real_render)
    result = train_student(config(store, out, resume=True))  # the kept state resumes to a finished run
    assert result.path.exists() and not resume_path_for(out).exists()


def test_a_nan_in_the_first_epoch_writes_nothing(store, tmp_path, monkeypatch):
    out = tmp_path / "s.pt"
    monkeypatch.setattr(run_module, "render_views", lambda *a, **k: torch.full((len(a[0]), 1, 8, 8), math.nan))
    with pytest.raises(TrainingDiverged, match="epoch 1 step 1 .*nothing was written"):
        train_student(config(store, out))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optim": OptimConfig(lr=math.nan)}, "--lr must be a finite number"),
        ({"optim": OptimConfig(lr=math.inf)}, "--lr must be a finite number"),
        ({"temperature": math.nan}, "--temperature must be a finite number"),
        ({"optim": OptimConfig(weight_decay=math.nan)}, "--weight-decay must be a finite number"),
        ({"optim": OptimConfig(grad_clip=0.0)}, "--grad-clip must be positive"),
        ({"optim": OptimConfig(optimizer="lamb")}, "unknown optimizer 'lamb'; valid: sgd, adamw"),
        ({"th_alpha": math.nan}, r"--th-alpha must lie in \[0, 1\]"),
        ({"amp": "fp16"}, "--amp fp16 needs a CUDA device"),
    ],
)
def test_bad_options_are_refused_before_any_work(store, tmp_path, options, message):
    with pytest.raises(InvalidInput, match=message):
        train_student(config(store, tmp_path / "s.pt", device="cpu", **options))
    assert list(tmp_path.iterdir()) == []


def test_amp_bf16_on_cpu_trains_a_finite_student_and_records_it(store, tmp_path):
    run = StudentRun.build(config(store, tmp_path / "s.pt", epochs=1, amp="bf16", device="cpu"))
    assert run.amp.enabled and run.amp.dtype_name == "bf16"
    with run.amp.autocast():
        assert run.student(torch.zeros(2, 1, 8, 8)).dtype == torch.bfloat16  # the forward runs in bf16
    result = run.fit()
    ckpt = load_checkpoint(result.path, kind="student")
    assert ckpt.extra["amp"] == "bf16" and math.isfinite(result.log[-1]["loss"]["total"])
    assert all(v.dtype != torch.bfloat16 for v in ckpt.state_dict.values())  # weights stay float32


def test_adamw_and_warmup_schedule():
    w = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = make_optimizer([w], OptimConfig(lr=0.1, optimizer="adamw", warmup_epochs=1), 10, 4)
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # linear from 1 % of lr over 4 steps, then a cosine from lr over the remaining 6
    assert lrs[:4] == pytest.approx([0.001, 0.02575, 0.0505, 0.07525])
    assert lrs[4:] == pytest.approx([0.1 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(6)])
    # without warm-up the schedule is the plain cosine over the run (old runs replay bit for bit)
    optimizer, scheduler = make_optimizer([w], OptimConfig(lr=0.1), 10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 10


def test_grad_clip_bounds_the_first_step(store, tmp_path):
    lr, clip = 0.05, 1e-3
    run = StudentRun.build(config(store, tmp_path / "s.pt", optim=OptimConfig(lr=lr, weight_decay=0, grad_clip=clip)))
    before = [p.detach().clone() for p in run.trainable]
    run.stream.set_epoch(0)
    stats = run.train_step(next(iter(run.stream)))
    moved = math.sqrt(sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(run.trainable, before, strict=True)))
    # SGD's first momentum step moves by lr · g; the clipped global norm of g is at most `clip`
    assert 0 < moved <= lr * clip * (1 + 1e-4) and math.isfinite(stats.total)


def test_the_run_prints_its_effective_loss_weights(store, tmp_path, capsys):
    train_student(config(store, tmp_path / "s.pt", epochs=1, progress=True, loss="kd=2"))
    err = capsys.readouterr().err
    assert "loss = 1·ce + 2·kd + 0.02·th (T=4)" in err and "sgd lr 0.05 (cosine)" in err
