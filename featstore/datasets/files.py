"""Listing a folder of sample files and reading one sample file, both bounded.

This is the one place fsd touches the file system for image data (``folder:``, and ``fsd embed``'s ``--images``).

Why a checked reader: a folder is user data and may hold anything a file system can. Listing follows
directory symlinks (datasets are often assembled from links) but lists each directory once, identified by
device and inode, so a link back to an ancestor neither loops forever nor multiplies samples. A folder
that cannot be listed is an error naming it — or, when the caller skips bad samples, left out and
reported — never silently dropped; an image name whose file cannot be reached (a dangling link) is likewise
an error, or listed with size 0 so that reading it is a bad sample the caller skips and counts. Reading opens without blocking (``O_NONBLOCK``: a FIFO does not wait
for a writer), accepts only a regular file (checked on the opened descriptor, so a file swapped after the
listing is still checked), and reads at most :data:`MAX_SAMPLE_BYTES` (a symlink to ``/dev/zero`` or a
sparse 1 TB file is refused, not read).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from featstore.errors import InvalidInput

MAX_SAMPLE_BYTES = 64 << 20
"""The largest sample file read (64 MiB: far above any encoded training image, far below a machine's RAM)."""


class UnreadableFile(InvalidInput):
    """A sample file that is not a regular file, is too large, or cannot be opened; the message is the reason."""


@dataclass
class Listing:
    """The image files below a folder, and the sub-folders that could not be listed.

    ``files`` holds ``(relative POSIX path, byte size)`` sorted by path; ``unlisted`` holds ``(path, reason)`` and is
    empty unless the caller skips them.
    """

    files: list[tuple[str, int]] = field(default_factory=list)
    unlisted: list[tuple[Path, str]] = field(default_factory=list)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _identity(path: Path | os.DirEntry) -> tuple[int, int]:
    info = path.stat() if isinstance(path, os.DirEntry) else os.stat(path)
    return info.st_dev, info.st_ino


def list_files(root: Path, suffixes: Collection[str], *, skip_unlisted: bool = False, what: str = "folder") -> Listing:
    """List every non-hidden file below ``root`` whose suffix (lower-cased) is in ``suffixes``.

    Args:
        root: the folder to list (it must be listable: a root that is not is always an error).
        suffixes: accepted suffixes, lower case with the dot (``".png"``).
        skip_unlisted: leave sub-folders that cannot be listed out (reported in the result), and list image
            names that cannot be reached with size 0 (their read fails: a bad sample), instead of refusing
            the whole listing.
        what: how error messages name the caller (``"folder"``, ``"embed"``).

    Returns:
        The files, sorted by relative path, and the sub-folders left out.

    Raises:
        InvalidInput: ``root`` cannot be listed, or (without ``skip_unlisted``) a sub-folder cannot be listed
            or a file cannot be reached.
    """
    listing = Listing()
    seen = {_identity(root)}
    pending = [Path(root)]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            reason = err.strerror or str(err)
            if directory == root or not skip_unlisted:
                raise InvalidInput(f"{what}: cannot list folder {directory}: {reason}") from None
            listing.unlisted.append((directory, reason))
            continue
        for entry in entries:
            if _hidden(entry.name):
                continue
            path = directory / entry.name
            image = os.path.splitext(entry.name)[1].lower() in suffixes
            try:
                if entry.is_dir():
                    identity = _identity(entry)
                elif image:
                    listing.files.append((path.relative_to(root).as_posix(), entry.stat().st_size))
                    continue
                else:
                    continue
            except OSError as err:  # a link loop (ELOOP), a dangling link, a file gone since the listing, …
                reason = err.strerror or str(err)
                if not skip_unlisted:
                    raise InvalidInput(f"{what}: cannot read {path}: {reason}") from None
                if image:  # a sample the reader will refuse: skipped and counted as a bad sample
                    listing.files.append((path.relative_to(root).as_posix(), 0))
                else:  # what it is cannot be known: a folder left out
                    listing.unlisted.append((path, reason))
                continue
            if identity not in seen:  # each directory once, whatever links lead to it
                seen.add(identity)
                pending.append(path)
    listing.files.sort()
    return listing


def read_file(path: Path, limit: int = MAX_SAMPLE_BYTES) -> bytes:
    """Read the bytes of the regular file ``path``, at most ``limit`` of them.

    Args:
        path: the file.
        limit: the largest size accepted, in bytes.

    Returns:
        The file's bytes.

    Raises:
        UnreadableFile: the file cannot be opened, is not a regular file, or is over ``limit`` (see the module
            docstring).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UnreadableFile(err.strerror or str(err)) from None
    with open(fd, "rb", closefd=True) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise UnreadableFile(f"{info.st_size} bytes, over the {limit}-byte limit for one sample")
        try:
            data = handle.read(limit + 1)
        except OSError as err:
            raise UnreadableFile(err.strerror or str(err)) from None
    if len(data) > limit:
        raise UnreadableFile(f"over the {limit}-byte limit for one sample (the file grows while read)")
    return data


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a directory"}
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


__all__ = ["MAX_SAMPLE_BYTES", "Listing", "UnreadableFile", "list_files", "read_file"]
