"""Failure paths of issue 15 broken on purpose: non-finite options (class 1), outputs and state never lost without
a word (class 4), disk full / read-only / Ctrl-C as one ``Error:`` line (class 3).

Every refusal hashes the work directory before and after (nothing created, changed or deleted). Disk full and
a read-only folder are simulated by monkeypatching the write that would fail: the tests run as root in CI,
where ``chmod`` does not stop a write.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import zarr

from cli.main import COMMAND_MODULES, cli


def float_options() -> list[tuple[list[str], str]]:
    """(command path, option) for every float option of every command, subcommands included."""
    found = []

    def walk(command: click.Command, path: list[str]) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.type.name == "float":
                found.append((path, param.opts[0]))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    ctx = click.Context(cli)
    for name in COMMAND_MODULES:
        walk(cli.get_command(ctx, name), [name])
    return found


FLOAT_OPTIONS = float_options()


def test_every_command_has_its_float_options_found():
    """The walk above must see the float options that exist (else the test below would pass vacuously)."""
    names = {f"{' '.join(p)} {o}" for p, o in FLOAT_OPTIONS}
    assert {"train-student --lr", "train-student --temperature", "train-teacher --lr"} <= names
    assert len(FLOAT_OPTIONS) >= 6


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("path,option", FLOAT_OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o in FLOAT_OPTIONS])
def test_non_finite_float_options_are_refused(h, work, path, option, value):
    before = work.snapshot()
    result = h.invoke(*path, f"{option}={value}")
    h.assert_refused(result, before, work.dir, "not a finite number")


def test_library_refuses_non_finite_sizes():
    from distill.training.common import check_positive
    from featstore.errors import InvalidInput

    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(InvalidInput, match="finite number"):
            check_positive(lr=bad)
    for bad in (0.0, -1.0):
        with pytest.raises(InvalidInput, match="positive"):
            check_positive(lr=bad)
    check_positive(lr=1e-3, epochs=3)


# -- class 4: outputs and state ------------------------------------------------------------------------------
def student_args(work, *extra):
    return [
        "train-student", "--store", work.store, "--dataset", "digits", "--out", work.dir / "run" / "s.pt",
        "--epochs", 2, "--quiet", *extra,
    ]  # fmt: skip


def fake_live_lock(target: Path) -> Path:
    """The lock a live writer holds (this test process is alive on this host)."""
    lock = target.with_name(target.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0}))
    return lock


@pytest.mark.parametrize("command", ["train-student", "train-teacher"])
def test_second_run_with_the_same_out_is_refused_while_the_first_runs(h, work, command):
    out = work.dir / "run" / "s.pt"
    fake_live_lock(out)
    args = student_args(work) if command == "train-student" else ["train-teacher", "--dataset", "digits", "--out", out]
    before = work.snapshot()
    h.assert_refused(h.invoke(*args), before, work.dir, "is being written by pid")


def test_a_refused_run_leaves_no_folder_behind(h, work):
    """The lock creates the output's folder; a run refused after it (here: nan temperature reaches the
    library through Python, not click) removes it again."""
    from distill.training.student import StudentConfig, train_student
    from featstore.errors import InvalidInput

    before = work.snapshot()
    with pytest.raises(InvalidInput, match="--temperature must be a finite number"):
        train_student(
            StudentConfig(
                store=str(work.store), dataset="digits", out=work.dir / "a" / "b" / "s.pt", temperature=float("nan")
            )
        )
    assert work.snapshot() == before


def interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C when the stream starts ``epoch`` (0-based): the epochs before it completed."""
    from featstore.stream import StoreStream

    original = StoreStream.set_epoch

    def set_epoch(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return original(self, e)

    monkeypatch.setattr(StoreStream, "set_epoch", set_epoch)


def test_ctrl_c_keeps_the_state_and_says_how_to_resume_and_a_rerun_never_discards_it(h, work, monkeypatch):
    resume = work.dir / "run" / "s.resume.pt"
    interrupt_at_epoch(monkeypatch, 1)
    result = h.invoke(*student_args(work))
    assert result.exit_code == 130, h.describe(result)
    [line] = h.error_lines(result)
    assert "--resume" in line and str(resume) in line and "1 epochs done" in line
    assert "Traceback" not in result.output and resume.is_file() and not (work.dir / "run" / "s.pt").exists()
    monkeypatch.undo()

    before = work.snapshot()  # the same command again, without --resume: the state is kept, not overwritten
    line = h.assert_refused(h.invoke(*student_args(work)), before, work.dir, "pass --resume")
    assert "--overwrite" in line
    h.run_ok(*student_args(work, "--resume"))
    assert (work.dir / "run" / "s.pt").is_file() and not resume.exists()


def test_ctrl_c_before_the_first_epoch_says_nothing_was_kept(h, work, monkeypatch):
    interrupt_at_epoch(monkeypatch, 0)
    result = h.invoke(*student_args(work))
    assert result.exit_code == 130 and "nothing was written" in h.error_lines(result)[0], h.describe(result)
    assert not (work.dir / "run").exists()  # no folder left behind either


def test_overwrite_starts_over_on_top_of_a_kept_state(h, work, monkeypatch):
    interrupt_at_epoch(monkeypatch, 1)
    h.invoke(*student_args(work))
    monkeypatch.undo()
    h.run_ok(*student_args(work, "--overwrite"))
    assert not (work.dir / "run" / "s.resume.pt").exists()


def test_a_store_with_no_finished_chunk_is_reinitialised_by_the_next_run(h, work, artifacts):
    """A first extraction that failed before any chunk (e.g. a teacher that output NaN) leaves an empty store;
    the fixed re-run (another teacher) re-initialises it instead of asking for --overwrite."""
    g = zarr.open_group(zarr.storage.LocalStore(work.store), mode="r+")
    g["progress/done"][...] = False
    attrs = dict(g.attrs["fsd"])
    attrs["complete"] = False
    g.attrs["fsd"] = attrs
    args = ["extract-teacher", "--teacher", artifacts.other_teacher, "--dataset", "digits", "--out", work.store]
    with pytest.warns(RuntimeWarning, match="no finished chunk"):
        h.run_ok(*args, "--views", h.VIEWS, "--chunk-rows", h.CHUNK_ROWS, "--quiet")
    from distill.models.checkpoint import load_teacher_source
    from featstore.store import open_store

    store = open_store(work.store)
    assert store.meta["teacher"]["checkpoint_sha256"] == load_teacher_source(artifacts.other_teacher).checkpoint_sha256


def test_a_store_with_finished_chunks_is_still_refused(h, work, artifacts):
    h.make_incomplete(work.store)
    before = work.snapshot()
    args = ["extract-teacher", "--teacher", artifacts.other_teacher, "--dataset", "digits", "--out", work.store]
    h.assert_refused(h.invoke(*args, "--views", h.VIEWS, "--quiet"), before, work.dir, "--overwrite")


# -- class 3: disk full, read-only ----------------------------------------------------------------------------
def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[1]) if len(args) > 1 else None)


def test_disk_full_while_writing_the_student_checkpoint_keeps_the_resume_state(h, work, monkeypatch):
    """The first torch.save (epoch 1's resume state) succeeds, the checkpoint's fails: one line, saying that
    the state is kept and how to continue."""
    calls = {"n": 0}
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = h.invoke(*student_args(work, "--epochs", 1))
    assert result.exit_code == 2, h.describe(result)
    [line] = h.error_lines(result)
    assert "No space left on device" in line and "--resume" in line and "Traceback" not in result.output
    assert not (work.dir / "run" / "s.pt").exists() and (work.dir / "run" / "s.resume.pt").is_file()
    assert not any(p.name.endswith(".partial") for p in (work.dir / "run").iterdir())


def test_disk_full_while_marking_the_store_complete_then_resume_finishes_it(h, work, artifacts, monkeypatch):
    from featstore.store import FeatureStore, open_store

    monkeypatch.setattr(FeatureStore, "mark_complete", lambda self: enospc(self, self.url))
    out = work.dir / "new.zarr"
    args = ["extract-teacher", "--teacher", work.teacher, "--dataset", "digits", "--out", out]
    args += ["--views", h.VIEWS, "--chunk-rows", h.CHUNK_ROWS, "--quiet"]
    result = h.invoke(*args)
    assert result.exit_code == 2 and "every chunk is written" in h.error_lines(result)[0], h.describe(result)
    monkeypatch.undo()
    h.run_ok(*args)
    new, reference = open_store(out), open_store(artifacts.store)
    for chunk in range(reference.num_chunks):
        assert np.array_equal(new.read_chunk_raw(chunk)[0], reference.read_chunk_raw(chunk)[0])


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("command", ["train-student", "extract-teacher"])
def test_read_only_output_folder_is_one_error_line(h, work, monkeypatch, command, code):
    import featstore.lock

    def refuse(lock, owner):
        raise OSError(code, os.strerror(code), str(lock))

    monkeypatch.setattr(featstore.lock, "_create_with_content", refuse)
    args = (
        student_args(work)
        if command == "train-student"
        else ["extract-teacher", "--teacher", work.teacher, "--dataset", "digits", "--out", work.dir / "x.zarr"]
    )
    before = work.snapshot()
    line = h.assert_refused(h.invoke(*args), before, work.dir, "cannot write the lock")
    assert os.strerror(code) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(h, work):
    folder = work.dir / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        before = work.snapshot()
        args = ["train-teacher", "--dataset", "digits", "--out", folder / "t.pt", "--epochs", 1, "--quiet"]
        h.assert_refused(h.invoke(*args), before, work.dir)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_any_environment_oserror_on_any_path_is_one_error_line(h, work, monkeypatch, code):
    """The net in cli/main.py: a write that fails deep inside a library (here h5py during `store export`)."""
    import h5py

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "e.h5")

    monkeypatch.setattr(h5py.File, "create_dataset", fail)
    result = h.invoke("store", "export", work.store, "--out", work.dir / "e.h5", "--quiet")
    assert result.exit_code == 2 and "Traceback" not in result.output, h.describe(result)
    [line] = h.error_lines(result)
    assert os.strerror(code) in line
    assert not (work.dir / "e.h5").exists()


def test_an_unexpected_oserror_is_still_a_bug_report(h, work, monkeypatch):
    import h5py

    def fail(*args, **kwargs):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(h5py.File, "create_dataset", fail)
    result = h.invoke("store", "export", work.store, "--out", work.dir / "e.h5", "--quiet")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


def test_ctrl_c_during_extraction_says_how_to_resume(h, work, monkeypatch):
    import featstore.chunk_engine

    real = featstore.chunk_engine._write
    calls = {"n": 0}

    def chunk(*args, **kwargs):  # Ctrl-C while the third chunk is being written
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(featstore.chunk_engine, "_write", chunk)
    out = work.dir / "new.zarr"
    args = ["extract-teacher", "--teacher", work.teacher, "--dataset", "digits", "--out", out]
    result = h.invoke(*args, "--views", h.VIEWS, "--chunk-rows", h.CHUNK_ROWS, "--quiet")
    assert result.exit_code == 130, h.describe(result)
    [line] = h.error_lines(result)
    assert "2/7 chunks" in line and "re-run the same command" in line
    assert not out.with_name("new.zarr.lock").exists()
