"""A writer lock for a store: one extraction at a time, and a crashed one never blocks the next.

The lock is a small JSON file ``<store>.lock`` next to the local store's real path, created atomically with
its content (a hard link of a complete temporary file) and holding the owner's pid and host. A second writer
finds it and is refused while that pid is alive on this host; a lock left by a dead process (kill -9, power
loss) is taken over with a warning — by renaming it aside first, so two processes taking over the same stale
lock cannot both succeed. Stores at remote URLs are not locked (object stores offer no portable exclusive create); the docs say so.

Opening a store may need the lock (to finish a head install) while the same process already holds it (an
extraction opening its own store): ``reentrant=True`` then proceeds under the lock already held.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

from featstore.atomic import ensure_parent
from featstore.errors import FsdError, InvalidInput, StoreLocked

_held: set[Path] = set()
"""Locks this process holds (``reentrant=True`` proceeds under one of them)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _create_with_content(lock: Path, owner: dict) -> bool:
    """Create ``lock`` holding ``owner`` in one atomic step (a hard link of a complete temporary file).

    One step, so a kill never leaves an empty lock that nobody can attribute. Returns False if the lock
    already exists.
    """
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(owner))
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write (not atomic)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(owner, handle)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if_still(lock: Path, stale: dict) -> bool:
    """Remove ``lock`` only if it still holds ``stale``; True when it is removed.

    The lock is first renamed aside (atomic: of two processes taking over the same stale lock only one
    succeeds) and put back when another process has already replaced it with a live lock.
    """
    aside = lock.with_name(f".{lock.name}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    if _read_owner(aside) == stale:
        aside.unlink(missing_ok=True)
        return True
    try:  # a live lock taken in between: give it back (unless yet another lock appeared meanwhile)
        os.link(aside, lock)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def writer_lock(
    store_path: Path | None, what: str = "store", error: type[FsdError] = StoreLocked, *, reentrant: bool = False
) -> Iterator[None]:
    """Hold ``<store_path>.lock`` for the duration of the block (no-op for ``None``: remote stores).

    Args:
        store_path: the output the lock guards; the lock file is ``<real path>.lock`` beside it.
        what: names the output in the refusal ("store", "training output").
        error: the exception raised when a live process holds the lock.
        reentrant: proceed under the lock when this process already holds it.

    Yields:
        Nothing; the lock is held until the block ends.

    Raises:
        FsdError: ``error``, when another live process on this host holds the lock.
        InvalidInput: the lock cannot be written (a read-only or full folder), rather than an OSError.
    """
    if store_path is None:
        yield
        return
    # one lock per store whatever path names it (relative, through a symlink, "."): key it on the real path
    store_path = Path(os.path.realpath(store_path))
    lock = store_path.with_name(store_path.name + ".lock")
    if reentrant and lock in _held:
        yield
        return
    ensure_parent(lock)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            created = _create_with_content(lock, me)
        except OSError as exc:  # read-only folder, disk full, permissions
            raise InvalidInput(f"cannot write the lock {lock} for {what} {store_path}: {exc.strerror or exc}") from None
        if created:
            break
        owner = _read_owner(lock)
        pid, host = owner.get("pid"), owner.get("host")
        if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
            if _remove_if_still(lock, owner):
                warnings.warn(f"taking over the stale lock {lock} of dead process {pid}", RuntimeWarning, stacklevel=3)
            continue  # retry: we removed the stale lock, or someone else replaced it meanwhile
        where = f"pid {pid} on {host}" if pid else "an unknown process"
        raise error(
            f"{what} {store_path} is being written by {where} (lock {lock}); "
            "wait for it, or delete the lock file if that process is gone"
        )
    else:  # pragma: no cover - other processes keep re-creating it
        raise error(f"could not acquire {lock}")
    _held.add(lock)
    try:
        yield
    finally:
        _held.discard(lock)
        if _read_owner(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)
