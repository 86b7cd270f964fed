"""Tests for featstore.atomic: a target is either the old file or the complete new one, never partial."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_success_replaces_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.endswith(".partial")
        tmp.write_bytes(b"new contents")
        assert target.read_bytes() == b"old"  # untouched until the body finishes
    assert target.read_bytes() == b"new contents"
    assert leftovers(tmp_path) == []


def test_exception_leaves_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_exception_without_existing_target_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("x")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_body_that_replaces_tmp_file(tmp_path: Path) -> None:
    """Libraries that delete and re-create the path they are given (e.g. h5py with mode 'w') still work."""
    target = tmp_path / "a.h5"
    with atomic_path(target) as tmp:
        tmp.unlink()
        tmp.write_bytes(b"recreated")
    assert target.read_bytes() == b"recreated"
    assert leftovers(tmp_path) == []


def test_helpers_create_parent_dirs(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "report.json"
    atomic_write_text(target, '{"ok": true}\n')
    assert target.read_text() == '{"ok": true}\n'
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert leftovers(target.parent) == []


def test_accepts_str_target(tmp_path: Path) -> None:
    target = str(tmp_path / "s.txt")
    atomic_write_text(target, "hi")
    assert Path(target).read_text() == "hi"
