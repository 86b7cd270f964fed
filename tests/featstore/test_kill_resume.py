"""A real SIGKILL in the middle of extraction, then a re-run: only missing chunks are computed and the
arrays are bit-identical to an uninterrupted extraction. Also the writer lock: a live writer blocks a
second one; a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from distill.models.checkpoint import load_teacher_source
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.datasets import load_dataset
from featstore.errors import StoreLocked
from featstore.extract import extract_teacher
from featstore.lock import writer_lock


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "teacher.pt"
    train_teacher(TeacherConfig(dataset="digits", out=path, epochs=1, eval_split=None, progress=False))
    return path


def _extract_cmd(teacher: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli.main",
        "extract-teacher",
        "--teacher",
        str(teacher),
        "--dataset",
        "digits",
        "--out",
        str(out),
        "--views",
        "3",
        "--chunk-rows",
        "8",
        "--batch-size",
        "4",
        "--quiet",
    ]


def _done_count(store: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(store), mode="r")["progress/done"][:]).sum())
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


def _arrays(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(group[name][...]) for name in ("embeddings", "views", "labels", "progress/done")}


def test_sigkill_during_extraction_then_resume_is_bit_identical(teacher_path, tmp_path):
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        _extract_cmd(teacher_path, killed),
        cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while _done_count(killed) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _done_count(killed)
    total = -(-1347 // 8)
    assert 5 <= done_at_kill < total, f"kill landed at {done_at_kill}/{total} chunks; the test needs a mid-run kill"
    assert not zarr.open_group(str(killed), mode="r").attrs["fsd"]["complete"]
    # the dead writer's lock is left behind and must not block the resume
    assert killed.with_name(killed.name + ".lock").exists()

    with pytest.warns(RuntimeWarning, match="stale lock"):
        summary = extract_teacher(
            load_teacher_source(teacher_path),
            load_dataset("digits"),
            str(killed),
            views=3,
            chunk_rows=8,
            batch_size=4,
            progress=False,
        )
    assert summary.resumed and summary.chunks_computed <= total - done_at_kill + 1

    clean = tmp_path / "clean.zarr"
    extract_teacher(
        load_teacher_source(teacher_path),
        load_dataset("digits"),
        str(clean),
        views=3,
        chunk_rows=8,
        batch_size=4,
        progress=False,
    )
    resumed, reference = _arrays(killed), _arrays(clean)
    for name in reference:
        assert resumed[name].dtype == reference[name].dtype
        assert np.array_equal(resumed[name], reference[name]), name
    assert zarr.open_group(str(killed), mode="r").attrs["fsd"]["complete"]
    assert not killed.with_name(killed.name + ".lock").exists()


def test_live_writer_lock_refuses_second_writer(tmp_path):
    store = tmp_path / "s.zarr"
    with writer_lock(store):
        with pytest.raises(StoreLocked, match=str(os.getpid())):
            with writer_lock(store):
                pass
    assert not store.with_name("s.zarr.lock").exists()


def test_lock_of_dead_process_is_taken_over(tmp_path):
    store = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = store.with_name("s.zarr.lock")
    import socket

    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.warns(RuntimeWarning, match="stale lock"):
        with writer_lock(store):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
