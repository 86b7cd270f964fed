"""Training survives a real SIGKILL (--resume gives the same final weights as an uninterrupted run on CPU)
and runs as 2 gloo processes under torchrun with the store stream sharded by rank."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill.models.checkpoint import load_checkpoint, load_teacher_source
from distill.training.student import StudentConfig, resume_path_for, train_student
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.datasets import load_dataset
from featstore.errors import CheckpointError, InputNotFound
from featstore.extract import extract_teacher

ROOT = Path(__file__).parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("resume")
    teacher = work / "teacher.pt"
    train_teacher(TeacherConfig(dataset="digits", out=teacher, epochs=1, eval_split=None, progress=False))
    url = str(work / "store.zarr")
    extract_teacher(load_teacher_source(teacher), load_dataset("digits"), url, views=2, progress=False)
    return url


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "train-student", *args]


def _student_args(store: str, out: Path, epochs: int, recipe: str = "crd-th") -> list[str]:
    return [
        "--store",
        store,
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--recipe",
        recipe,
        "--epochs",
        str(epochs),
        "--quiet",
        "--device",
        "cpu",
    ]


def test_sigkill_then_resume_gives_identical_weights(store, tmp_path):
    reference = tmp_path / "reference.pt"  # same process set-up (threads) as the killed run
    subprocess.run(_cli(*_student_args(store, reference, 4)), cwd=ROOT, env=ENV, check=True)

    out = tmp_path / "killed.pt"
    proc = subprocess.Popen(_cli(*_student_args(store, out, 4)), cwd=ROOT, env=ENV, stderr=subprocess.PIPE)
    state = resume_path_for(out)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before the kill; the test needs a mid-run kill"
    done = torch.load(state, weights_only=True)["epoch"]
    assert 2 <= done < 4

    result = subprocess.run(
        _cli(*_student_args(store, out, 4), "--resume"), cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert not state.exists()
    resumed, uninterrupted = load_checkpoint(out), load_checkpoint(reference)
    assert [e["epoch"] for e in resumed.extra["log"]] == [1, 2, 3, 4]
    for key, value in uninterrupted.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key


def test_resume_refuses_a_different_run_and_a_missing_state(store, tmp_path):
    out = tmp_path / "s.pt"
    with pytest.raises(InputNotFound, match="nothing to resume"):
        train_student(StudentConfig(store=store, dataset="digits", out=out, epochs=1, resume=True, progress=False))
    train_student(StudentConfig(store=store, dataset="digits", out=out, epochs=1, progress=False))
    # a finished run leaves no state; fake an interrupted one from another recipe
    shutil.copy(out, tmp_path / "unused.pt")
    state = resume_path_for(out)
    torch.save({"identity": {"recipe": "other"}, "epoch": 1}, state)
    with pytest.raises(CheckpointError, match="different run"):
        train_student(StudentConfig(store=store, dataset="digits", out=out, epochs=1, resume=True, progress=False))


def test_two_gloo_processes_under_torchrun(store, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    fsd = str(Path(sys.executable).parent / "fsd")
    out = tmp_path / "ddp.pt"
    # crd-kd with a student dimension other than the teacher's: CRD's memory is gathered across ranks, and the
    # projection P exists but no loss of the recipe reads it (DDP used to fail on its unused parameters)
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            fsd,
            "train-student",
            *_student_args(store, out, 2, recipe="crd-kd"),
            "--embedding-dim",
            "24",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(out)
    assert ckpt.extra["world_size"] == 2
    assert len(ckpt.extra["log"]) == 2 and ckpt.extra["test_accuracy"] is not None
    assert result.stdout.count("student ") == 1  # only rank 0 reports
    # no per-rank noise: DDP's deprecation and "find_unused_parameters ... did not find any" warnings (issue 15)
    assert "FutureWarning" not in result.stderr and "find_unused_parameters" not in result.stderr, result.stderr


def test_resume_identity_covers_the_stored_views_and_the_ranks():
    """A state saved on one store must not be resumed on another store of the same teacher (other view count,
    dtype or view seed), nor with another number of ranks (steps per epoch and the schedule differ)."""
    from types import SimpleNamespace

    from distill.training.resume import run_identity as _run_identity

    config = StudentConfig(store="s.zarr", dataset="digits", out=Path("s.pt"))
    dataset = load_dataset("digits")

    def identity(world_size=1, **side):
        provenance = {
            "url": "s.zarr",
            "teacher": {"checkpoint_sha256": "a" * 64},
            **{"views": 2, "dtype": "float16", "view_seed": 0, **side},
        }
        return _run_identity(config, SimpleNamespace(provenance=provenance), dataset, {"ce": 1.0}, world_size)

    base = identity()
    assert identity() == base
    assert (
        _run_identity(
            config,
            SimpleNamespace(
                provenance={
                    "url": "moved.zarr",
                    "teacher": {"checkpoint_sha256": "a" * 64},
                    "views": 2,
                    "dtype": "float16",
                    "view_seed": 0,
                }
            ),
            dataset,
            {"ce": 1.0},
            1,
        )
        == base
    )  # a moved store is the same store
    for changed in (identity(views=4), identity(dtype="int8"), identity(view_seed=5), identity(world_size=2)):
        assert changed != base


def test_store_rendered_with_another_view_policy_is_refused(store, tmp_path):
    import zarr

    from featstore.errors import StoreError

    copy = tmp_path / "other_policy.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    meta = dict(group.attrs["fsd"])
    meta["views"] = {**meta["views"], "policy": {**meta["views"]["policy"], "pad": meta["views"]["policy"]["pad"] + 1}}
    group.attrs["fsd"] = meta
    with pytest.raises(StoreError, match="view policy"):
        train_student(StudentConfig(store=str(copy), dataset="digits", out=tmp_path / "s.pt", epochs=1, progress=False))
