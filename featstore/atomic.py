"""File helpers: atomic output and content hashes.

Atomic output writes to a temporary name in the same directory, fsyncs, then renames; content hashes are the
provenance stores and checkpoints record.

Why atomic: a checkpoint, report or export must never exist half-written. A reader sees either the old file or
the complete new one, whatever moment a process is killed at (rename is atomic on POSIX within a file
system, which is why the temporary file lives next to the target).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featstore.errors import InvalidInput


def ensure_parent(path: Path) -> None:
    """Create ``path``'s folder, or raise InvalidInput (not a traceback) when a file or permissions block it.

    Args:
        path: the file whose parent folder must exist.

    Raises:
        InvalidInput: the folder cannot be created (a file in the way, permissions, a read-only disk).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot create the folder {path.parent} for {path.name}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically.

    The caller writes the temporary path with any library (torch.save, h5py, matplotlib). On an exception
    the temporary file is removed and ``target`` is left untouched.

    Args:
        target: the output file to replace.

    Yields:
        The temporary path to write.

    Raises:
        InvalidInput: ``target`` is a directory, or its folder cannot be created or written.
    """
    with atomic_paths(target) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success each replaces its target, in the order given.

    For outputs that are one result in several files (an exported model and its parity record): nothing is
    renamed until every file is complete, so a failure while writing (disk full) leaves every target as it
    was. A kill between two renames leaves the first targets new and the rest old: callers order the targets
    so that the next run can tell (``distill.models.export`` renames the parity record, naming the model's
    sha256, before the model).

    Args:
        *targets: the output files, in the order they are renamed.

    Yields:
        One temporary path per target, in the same order.

    Raises:
        InvalidInput: a target is a directory, or its folder cannot be created or written.
    """
    paths = [Path(t) for t in targets]
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_temporary_beside(path)) for path in paths]
        yield temporaries
        for tmp in temporaries:
            _persist(tmp)
        for tmp, path in zip(temporaries, paths):
            os.replace(tmp, path)
            _fsync_dir(path.parent)


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """Yield an empty temporary file next to ``target``, removed on exit unless it is renamed onto ``target``.

    Next to it, so on the same file system, where the rename is atomic.
    """
    if target.is_dir():
        raise InvalidInput(f"cannot write {target}: it is a directory")
    ensure_parent(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        raise InvalidInput(f"cannot write next to {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _persist(tmp: Path) -> None:
    """Flush a finished temporary file to disk (fsync) and give it the permissions the umask asks for (mkstemp makes 0600)."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o666 & ~_umask())


def atomic_torch_save(obj: Any, target: str | os.PathLike[str]) -> None:
    """Write ``torch.save(obj)`` to ``target`` atomically.

    Args:
        obj: what to save (a checkpoint dictionary, a tensor).
        target: the output file.

    Raises:
        OSError: the machine refuses the write (disk full, a quota); it names ``target`` (see
            :func:`torch_write_errors`).
    """
    import torch

    with atomic_path(target) as tmp, torch_write_errors(target), open(tmp, "wb") as handle:
        torch.save(obj, handle)


@contextlib.contextmanager
def torch_write_errors(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failed write of a torch writer given a Python file handle into an OSError naming ``target``.

    Wraps ``torch.save`` or ``torch.jit.save``: a write the machine refuses (disk full, a quota) leaves as an
    OSError with its errno. Why: torch's writers report a failed write as a RuntimeError ("PytorchStreamWriter failed writing file"),
    so no caller could tell a full disk from a bug. Given a Python file handle, torch writes through it and
    chains the handle's OSError as the RuntimeError's context; this gives that OSError back, and the CLI turns
    it into one ``Error:`` line. (Given a path, torch writes in C++ and the errno is lost: always pass a
    handle.)

    Args:
        target: the file the writer writes, named in the OSError.

    Raises:
        OSError: the write failed for a reason with an errno; any other RuntimeError passes unchanged.
    """
    try:
        yield
    except RuntimeError as exc:
        cause = exc.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror or str(cause), str(target)) from None
        raise
    except OSError as exc:  # the handle's own flush or close
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically (see :func:`atomic_path`).

    Args:
        target: the output file.
        data: its whole new content.
    """
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Replace ``target`` with ``text``, encoded as UTF-8, atomically.

    Args:
        target: the output file.
        text: its whole new content.
    """
    atomic_write_bytes(target, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry); best effort where the OS does not allow it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hash a file's bytes, read in 1 MiB blocks (checkpoints and imported files can be large).

    Args:
        path: the file to hash.

    Returns:
        The sha256 hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
