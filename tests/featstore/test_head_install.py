"""Installing a head is one atomic step: a kill or a full disk at any point of ``install_head`` leaves the
old head with its attributes (before the journal commits the install) or, after the next open, the new
head with its attributes — never a mix, never a store that commands refuse."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store import StoreShape, create_store, open_store
from featstore.store import head as head_install
from featstore.verify import verify_store

from .test_store import CHUNK, META, C, D, N, P, V, data, fill

NEW_META = {"type": "cosface", "num_classes": C, "scale": 30.0, "margin": 0.35}
COMMITTED = [step.__name__ for step in head_install.FINISH_STEPS]
KILL_POINTS = ["before_journal", "journal", *COMMITTED]


class Killed(BaseException):
    """Stands for a kill: no handler of the code under test catches it, nothing after it runs."""


def make_store(tmp_path: Path, had_head: bool) -> tuple[str, np.ndarray]:
    """A complete store with a linear head, or a head-less one (as a head-less teacher makes)."""
    url = str(tmp_path / "s.zarr")
    d = data()
    shape = StoreShape(N, V, D, P, C)
    meta = {**META, "head": META["head"] if had_head else None}
    store = create_store(
        url, shape=shape, dtype="float16", chunk_rows=CHUNK, labels=d["labels"],
        head_weight=d["weight"] if had_head else None, head_bias=d["bias"] if had_head else None, meta=meta,
    )  # fmt: skip
    fill(store, d)
    store.mark_complete()
    return url, d["weight"]


def new_weight() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((C, D)).astype(np.float32)


def arm(point: str, monkeypatch, fail) -> None:
    """Make ``fail()`` run at ``point`` of the install (a kill, or a failed write)."""
    if point == "before_journal":
        real = head_install.write_head_arrays

        def then_fail(*args, **kwargs):
            real(*args, **kwargs)  # the new arrays are complete under their hidden name
            fail()

        monkeypatch.setattr(head_install, "write_head_arrays", then_fail)
    elif point == "journal":
        monkeypatch.setattr(head_install, "atomic_write_bytes", lambda *a: fail())
    else:
        at = COMMITTED.index(point)

        def failing(root, entry):
            fail()

        steps = list(head_install.FINISH_STEPS)
        steps[at] = failing
        monkeypatch.setattr(head_install, "FINISH_STEPS", tuple(steps))


def install(url: str) -> None:
    open_store(url, writable=True).install_head(new_weight(), None, NEW_META, overwrite=True)


KILL_SCRIPT = """
import os, signal, sys
import numpy as np
import pytest
sys.path.insert(0, {tests!r})
from tests.featstore.test_head_install import arm, install
mp = pytest.MonkeyPatch()
arm({point!r}, mp, lambda: os.kill(os.getpid(), signal.SIGKILL))
install({url!r})
"""


def assert_consistent(url: str, old: np.ndarray | None, committed: bool) -> None:
    store = open_store(url)  # finishes a committed install
    root = Path(url)
    assert not (root / head_install.JOURNAL).exists() and not list(root.glob(head_install.ASIDE + "*"))
    # arrays of an install killed before its commit stay hidden (nothing reads them) until the next install
    assert committed or len(list(root.glob(head_install.BUILDING + "*"))) <= 1
    assert not committed or not list(root.glob(".head-*"))
    if committed:
        assert store.meta["head"] == NEW_META and np.array_equal(store.head_weight(), new_weight())
        assert store.head_bias() is None
    elif old is None:
        assert not store.has_head
    else:
        assert store.meta["head"]["type"] == "linear" and np.array_equal(store.head_weight(), old)
    report = verify_store(url)
    assert report.ok, report.lines()


@pytest.mark.parametrize(
    "point,how,had_head",
    [(p, "raise", True) for p in KILL_POINTS]
    + [(p, "raise", False) for p in KILL_POINTS]
    + [(p, "disk full", True) for p in KILL_POINTS]
    + [(p, "kill -9", True) for p in KILL_POINTS],
)
def test_every_kill_point_leaves_a_store_the_next_run_completes(point, how, had_head, tmp_path, monkeypatch):
    url, old = make_store(tmp_path, had_head)
    committed = point in COMMITTED
    if how == "kill -9":
        script = KILL_SCRIPT.format(tests=str(Path(__file__).parents[2]), point=point, url=url)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == -9, result.stderr
    elif how == "raise":

        def kill():
            raise Killed

        with monkeypatch.context() as mp:
            arm(point, mp, kill)
            with pytest.raises(Killed):
                install(url)
    else:

        def full():
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as mp:
            arm(point, mp, full)
            advice = "is finished the next time the store is opened" if committed else "the store is unchanged"
            with pytest.raises(StoreError, match=advice):
                install(url)
    assert_consistent(url, old if had_head else None, committed)
    install(url)  # the next run (fit-head --overwrite) completes
    assert_consistent(url, None, committed=True)


def test_a_store_left_between_the_renames_without_a_journal_gets_its_old_head_back(tmp_path):
    url, old = make_store(tmp_path, had_head=True)
    root = Path(url)
    (root / "head").rename(root / f"{head_install.ASIDE}0123")  # an install killed before it could commit
    (root / f"{head_install.BUILDING}0123").mkdir()
    assert_consistent(url, old, committed=False)


def test_a_journal_that_is_not_json_is_damage(tmp_path):
    url, _ = make_store(tmp_path, had_head=True)
    (Path(url) / head_install.JOURNAL).write_text("{not json")
    with pytest.raises(StoreError, match="not JSON"):
        open_store(url)
