"""A writer lock for a store: one extraction at a time, and a crashed one never blocks the next.

The lock is a small JSON file ``<store>.lock`` next to a local store, created with O_EXCL (atomic on POSIX)
and holding the owner's pid and host. A second writer finds it and is refused while that pid is alive on
this host; a lock left by a dead process (kill -9, power loss) is taken over with a warning. Stores at
remote URLs are not locked (object stores offer no portable exclusive create); the docs say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from featstore.atomic import ensure_parent
from featstore.errors import StoreLocked


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


@contextlib.contextmanager
def writer_lock(store_path: Path | None) -> Iterator[None]:
    """Hold ``<store_path>.lock`` for the duration of the block (no-op for ``None``: remote stores)."""
    if store_path is None:
        yield
        return
    # one lock per store whatever path names it (relative, through a symlink, "."): key it on the real path
    store_path = Path(os.path.realpath(store_path))
    lock = store_path.with_name(store_path.name + ".lock")
    ensure_parent(lock)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner(lock)
            pid, host = owner.get("pid"), owner.get("host")
            if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                warnings.warn(f"taking over the stale lock {lock} of dead process {pid}", RuntimeWarning, stacklevel=3)
                lock.unlink(missing_ok=True)
                continue
            where = f"pid {pid} on {host}" if pid else "an unknown process"
            raise StoreLocked(
                f"store {store_path} is being written by {where} (lock {lock}); "
                "wait for it, or delete the lock file if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:  # pragma: no cover - another process re-created it between our unlink and create
        raise StoreLocked(f"could not acquire {lock}")
    try:
        yield
    finally:
        if _read_owner(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)
