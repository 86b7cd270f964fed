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
            with pytest.raises(StoreLocked):
                with writer_lock(other):
                    pass
    assert not (tmp_path / "real" / "s.zarr.lock").exists()  # released


def test_lock_folder_blocked_by_a_file_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidInput, match="cannot create the folder"):
        with writer_lock(tmp_path / "afile" / "s.zarr"):
            pass
    assert os.listdir(tmp_path) == ["afile"]
