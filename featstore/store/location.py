"""Where a store lives: a local directory, or any URL fsspec understands (``memory://``, ``s3://``, ...).

Local stores get what only a file system offers: renames (atomic creation and head installation), the
writer lock, and the direct chunk-file reader. Everything else reaches the store through zarr.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import zarr


def local_path(url: str) -> Path | None:
    """Return the local directory a store URL names.

    Args:
        url: a path, a ``file://`` URL or an fsspec URL.

    Returns:
        The directory, or None for remote and in-memory URLs.
    """
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url:
        return None
    return Path(url)


def zarr_store(url: str) -> Any:
    """Return what zarr should open: a LocalStore for local paths (atomic chunk writes), the URL otherwise.

    The path is made absolute here: zarr keeps it as given and reads a missing chunk as fill values, so a
    relative store opened before a change of working directory would otherwise read as zeros without error.
    """
    local = local_path(url)
    if local is not None:
        return zarr.storage.LocalStore(local.absolute())
    return url


def store_exists(url: str) -> bool:
    """Say whether anything is at ``url``.

    Args:
        url: a local path or an fsspec URL.

    Returns:
        True for a local path of any kind, or a Zarr group at a remote URL.
    """
    local = local_path(url)
    if local is not None:
        return local.exists()
    try:
        zarr.open_group(zarr_store(url), mode="r")
        return True
    except Exception:  # noqa: BLE001 - any failure to open means "nothing usable there"
        return False


def delete_tree(url: str) -> None:
    """Delete everything at ``url`` (the caller has checked that it is a store)."""
    local = local_path(url)
    if local is not None:
        shutil.rmtree(local)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=True)
