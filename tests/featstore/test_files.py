"""featstore.datasets.files.list_files: an image entry whose file cannot be reached (a dangling or looping
link named ``*.png``) is an error naming it, or — when the caller skips bad samples — a listed sample that
the reader then refuses as a bad sample (so ``--skip-bad-samples`` counts it instead of stopping)."""

from __future__ import annotations

import os

import pytest

from featstore.datasets.files import UnreadableFile, list_files, read_file
from featstore.errors import InvalidInput


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    return tmp_path


def test_unreachable_image_is_an_error_naming_it(folder):
    with pytest.raises(InvalidInput, match=r"cannot read .*dangling\.png"):
        list_files(folder, {".png"})


def test_unreachable_image_is_a_bad_sample_when_skipping(folder):
    listing = list_files(folder, {".png"}, skip_unlisted=True)
    assert listing.files == [("a.png", 3), ("dangling.png", 0), ("loop.png", 0)] and not listing.unlisted
    for name, reason in (
        ("dangling.png", "No such file or directory"),
        ("loop.png", "Too many levels of symbolic links"),
    ):
        with pytest.raises(UnreadableFile, match=reason):
            read_file(folder / name)
