"""Opening a store: what is checked before anything is read, and removing a store.

Every reader comes through :func:`open_store`. A local store whose head install was committed but not
finished is finished first, under the store's writer lock (:mod:`featstore.store.head`), so no reader ever
sees a head that disagrees with its attributes.
"""

from __future__ import annotations

from pathlib import Path

import zarr

from featstore.errors import InputNotFound, StoreDamaged, StoreError
from featstore.lock import writer_lock
from featstore.store import head
from featstore.store.facade import FeatureStore
from featstore.store.layout import READABLE_FORMATS
from featstore.store.location import delete_tree, local_path, zarr_store


def open_group(url: str, mode: str) -> zarr.Group:
    """Open the store's root group, refused unless it is an fsd store of a format this fsd reads.

    Args:
        url: a local path or an fsspec URL.
        mode: zarr's open mode (``"r"`` or ``"r+"``).

    Returns:
        The root group.

    Raises:
        InputNotFound: a local path that does not exist.
        StoreError: not a Zarr group, not an fsd store, a format this fsd does not read, or a pending head
            install that cannot be finished.
    """
    local = local_path(url)
    if local is not None and not local.exists():
        raise InputNotFound(f"store {url} does not exist")
    if local is not None and head.pending(local.absolute()):
        _finish_head_install(url, local.absolute())
    try:
        group = zarr.open_group(zarr_store(url), mode=mode)
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for "not a group"
        raise StoreError(f"{url} is not a Zarr feature store ({type(exc).__name__}: {exc})") from None
    if "fsd" not in group.attrs:  # a missing array is damage, named when the layout is checked
        raise StoreError(f"{url} is a Zarr group but not an fsd feature store (no fsd attributes)")
    fmt = group.attrs["fsd"].get("format")
    if fmt not in READABLE_FORMATS:
        readable = ", ".join(map(str, READABLE_FORMATS))
        raise StoreError(f"store {url} has format {fmt!r}; this fsd reads formats {readable}")
    return group


def _finish_head_install(url: str, root: Path) -> None:
    """Finish a committed head install before the store is read (the lock is re-entrant for its holder)."""
    try:
        with writer_lock(root, reentrant=True):
            head.finish_pending(root)
    except OSError as exc:
        raise StoreError(
            f"store {url} has a head install to finish and it cannot be finished here "
            f"({exc.strerror or exc}); free space or open it where it is writable"
        ) from None


def open_store(
    url: str | Path, *, require_complete: bool = True, writable: bool = False, check: bool = True
) -> FeatureStore:
    """Open an existing store.

    The layout is always checked (:class:`FeatureStore`); with ``check`` the head, the labels and their
    digest are too (:class:`StoreDamaged` lists what is wrong). ``store verify`` passes ``check=False`` and
    reports the same problems instead of stopping at the first.

    Args:
        url: a local path or an fsspec URL.
        require_complete: refuse a store whose extraction has not finished.
        writable: open for writing (extraction, head installation).
        check: check the head, the labels and their digest too.

    Returns:
        The open store.

    Raises:
        InputNotFound: a local path that does not exist.
        StoreError: not an fsd store of a readable format, or incomplete when ``require_complete``.
        StoreDamaged: the layout, or with ``check`` the content, fails its checks.
    """
    url = str(url)
    store = FeatureStore(url, open_group(url, "r+" if writable else "r"))
    if check:
        problems = store.content_problems()
        if problems:
            raise StoreDamaged(f"store {url}: " + "; ".join(problems), problems)
    if require_complete and not store.complete:
        done, total = int(store.done_chunks().sum()), store.num_chunks
        raise StoreError(
            f"store {url} is incomplete ({done}/{total} chunks written); "
            "re-run the same extract-teacher command to finish it"
        )
    return store


def remove_store(url: str) -> None:
    """Delete a store — only something that is an fsd store (never an arbitrary directory).

    Args:
        url: a local path or an fsspec URL.

    Raises:
        InputNotFound: a local path that does not exist.
        StoreError: what is at ``url`` is not an fsd store.
    """
    open_group(url, "r")  # raises unless it really is an fsd store
    delete_tree(url)
