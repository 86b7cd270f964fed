"""The writer lock is one per store, whatever path names the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featstore.errors import InvalidInput, StoreLocked
from featstore.lock import writer_lock


def test_a_symlinked_or_relative_path_meets_the_same_lock(tmp_path: Path, monkeypatch) -> None:
    real = tmp_path / "real" / "s.zarr"
    real.mkdir(parents=True)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    monkeypatch.chdir(tmp_path / "real")
    with writer_lock(real):
        for other in (link, Path("s.zarr")):
            with pytest.raises(StoreLocked, match="is being written by pid"):
                with writer_lock(other):
                    pass
    assert not (tmp_path / "real" / "s.zarr.lock").exists()  # released


def test_lock_folder_blocked_by_a_file_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidInput, match="cannot create the folder"):
        with writer_lock(tmp_path / "afile" / "s.zarr"):
            pass
    assert os.listdir(tmp_path) == ["afile"]


def test_taking_over_a_stale_lock_never_removes_a_live_one(tmp_path: Path) -> None:
    """The stale owner another process already replaced: its live lock is put back, not deleted."""
    import json

    from featstore.lock import _create_with_content, _remove_if_still

    lock = tmp_path / "s.zarr.lock"
    stale = {"pid": 999999, "host": "h", "since": 1.0}
    live = {"pid": os.getpid(), "host": "h", "since": 2.0}
    assert _create_with_content(lock, stale) and not _create_with_content(lock, live)
    assert json.loads(lock.read_text()) == stale  # never an empty lock: written whole or not at all
    lock.unlink()
    assert _create_with_content(lock, live)  # another process took the stale lock over first
    assert not _remove_if_still(lock, stale)
    assert json.loads(lock.read_text()) == live
    lock.write_text(json.dumps(stale))
    assert _remove_if_still(lock, stale) and not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary or set-aside files left
