"""Fixtures for the CLI tests: real artefacts made once per session *through the CLI*, plus helpers.

Why session scope: training a teacher, extracting a store and training a student take seconds each; every
CLI test reads them, none writes them (tests that modify a store work on a copy in their own tmp dir).
Helpers are exposed as fixtures because tests/ has no ``__init__.py`` (no importable helper module).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from cli.main import cli

TRAIN_N = 1347  # digits train split (1797 × 0.75, stratified)
TEST_N = 450
CHUNK_ROWS = 200
VIEWS = 2
DIM = 64


def invoke(*args: object) -> Result:
    """Run ``fsd ARGS`` in-process; stderr is kept apart from stdout (click ≥ 8.2)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def describe(result: Result) -> str:
    """What to print when a CLI call did not do what a test expected."""
    exc = "" if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
    return f"exit {result.exit_code} {exc}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def run_ok(*args: object) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, describe(result)
    return result


def snapshot(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file (and '<dir>' for every directory) under ``root``.

    Directories are listed too so that a command which only creates an empty folder is still caught.
    """
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            state[rel] = "<dir>"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def assert_refused(result: Result, before: dict[str, str], root: Path, match: str | None = None) -> str:
    """docs/cli.md for bad input: exit 2, exactly one ``Error: …`` line, no traceback, nothing changed."""
    assert result.exit_code == 2, describe(result)
    lines = error_lines(result)
    assert len(lines) == 1, describe(result)
    assert "Traceback" not in result.output, describe(result)
    if match is not None:
        assert match.lower() in lines[0].lower(), f"expected {match!r} in {lines[0]!r}"
    after = snapshot(root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"files changed by a refused command: {sorted(changed)}"
    return lines[0]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch (and FAISS) on one thread, then restore the previous settings.

    Why: the models are tiny (8×8 digits), so one thread is as fast as several on an idle machine, and on a
    shared 2-core machine a multi-threaded OpenMP pool competing with other processes was measured ~8× slower
    (teacher, 2 epochs: 2.6 s with 1 thread vs 21.6 s with 2). Restored afterwards so no other test directory
    is affected.
    """
    import faiss

    previous = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        faiss.omp_set_num_threads(previous[1])


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_thread():
        yield


@dataclass(frozen=True)
class Artifacts:
    """Session artefacts made through the CLI (read-only for tests)."""

    root: Path
    teacher: Path
    teacher_output: str
    store: Path
    store_output: str
    student: Path
    test_store: Path  # extracted from digits --split test
    other_teacher: Path  # same arch, another --seed


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    with single_thread():
        return _make_artifacts(tmp_path_factory.mktemp("cli_artifacts"))


def _make_artifacts(root: Path) -> Artifacts:
    teacher, store, student = root / "teacher.pt", root / "store.zarr", root / "student.pt"
    t = run_ok("train-teacher", "--dataset", "digits", "--out", teacher, "--epochs", 2, "--quiet")
    s = run_ok(
        "extract-teacher",
        "--teacher",
        teacher,
        "--dataset",
        "digits",
        "--out",
        store,
        "--views",
        VIEWS,
        "--chunk-rows",
        CHUNK_ROWS,
        "--quiet",
    )
    run_ok("train-student", "--store", store, "--dataset", "digits", "--out", student, "--epochs", 2, "--quiet")
    test_store = root / "store_test_split.zarr"
    run_ok(
        "extract-teacher",
        "--teacher",
        teacher,
        "--dataset",
        "digits",
        "--split",
        "test",
        "--out",
        test_store,
        "--views",
        VIEWS,
        "--chunk-rows",
        CHUNK_ROWS,
        "--quiet",
    )
    other = root / "teacher_seed1.pt"
    run_ok("train-teacher", "--dataset", "digits", "--out", other, "--epochs", 1, "--seed", 1, "--quiet")
    return Artifacts(
        root=root,
        teacher=teacher,
        teacher_output=t.stdout,
        store=store,
        store_output=s.stdout,
        student=student,
        test_store=test_store,
        other_teacher=other,
    )


@dataclass
class Work:
    """A per-test work directory holding private copies of the session artefacts."""

    dir: Path
    teacher: Path
    student: Path
    store: Path

    def snapshot(self) -> dict[str, str]:
        return snapshot(self.dir)


@pytest.fixture
def work(tmp_path: Path, artifacts: Artifacts) -> Work:
    d = tmp_path / "work"
    d.mkdir()
    teacher, student, store = d / "teacher.pt", d / "student.pt", d / "store.zarr"
    shutil.copy2(artifacts.teacher, teacher)
    shutil.copy2(artifacts.student, student)
    shutil.copytree(artifacts.store, store)
    return Work(d, teacher, student, store)


def make_incomplete(store: Path, missing_chunk: int = 3) -> None:
    """Turn a complete store into the state an interrupted extraction leaves: one chunk not done, complete
    false (through zarr, as the writer itself would)."""
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
    group["progress/done"][missing_chunk] = False
    attrs = dict(group.attrs["fsd"])
    attrs["complete"] = False
    group.attrs["fsd"] = attrs


@pytest.fixture(scope="session")
def h():
    """The helpers of this conftest, for test modules (tests/ is not a package, so they cannot import it)."""
    import types

    return types.SimpleNamespace(
        invoke=invoke,
        run_ok=run_ok,
        describe=describe,
        snapshot=snapshot,
        error_lines=error_lines,
        assert_refused=assert_refused,
        make_incomplete=make_incomplete,
        TRAIN_N=TRAIN_N,
        TEST_N=TEST_N,
        CHUNK_ROWS=CHUNK_ROWS,
        VIEWS=VIEWS,
        DIM=DIM,
    )
