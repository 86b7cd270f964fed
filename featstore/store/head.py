"""Head installation: a store's classifier ``head/`` replaced in one atomic step on local stores.

A head is two things that must change together: the arrays under ``head/`` and the ``head`` entry of the
attributes. On a local store the new arrays are written under a hidden name first; then a journal
(``.head-install.json``, written atomically) commits the install, and the steps that follow — set the old
head aside, move the new one in, write the attributes, delete the old head, delete the journal — are each
safe to repeat. Whoever opens the store next (:func:`finish_pending`) repeats them from the start when the
journal is still there, so a kill or a full disk at any point leaves either the old head with its
attributes (before the journal) or, once the store is opened again, the new head with its attributes.

Stores at other URLs have no rename: their arrays are written first and the attributes last, and a kill in
between needs ``fsd store fit-head --overwrite`` (docs/store.md says so).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from featstore.atomic import atomic_write_bytes
from featstore.errors import FsdError, StoreError

JOURNAL = ".head-install.json"
BUILDING = ".head-building-"
ASIDE = ".head-old-"


def write_head_arrays(
    group: zarr.Group, weight: np.ndarray, bias: np.ndarray | None, name: str = "head", crc: bool = True
) -> None:
    """Write the classifier arrays ``name/weight`` (C, D) [and ``name/bias`` (C,)], float32.

    Args:
        group: the store's root group.
        weight: the class weights, one row per class.
        bias: the class biases, or None for a head without them.
        name: the group the arrays go to (a hidden name while an install is being built).
        crc: checksum every chunk (format 2); False for a format-1 store.
    """
    codec = Crc32cCodec() if crc else None
    group.create_array(f"{name}/weight", shape=weight.shape, dtype="float32", compressors=codec)
    group[f"{name}/weight"][...] = weight.astype(np.float32)
    if bias is not None:
        group.create_array(f"{name}/bias", shape=bias.shape, dtype="float32", compressors=codec)
        group[f"{name}/bias"][...] = bias.astype(np.float32)


def install_local(
    root: Path, group: zarr.Group, weight: np.ndarray, bias: np.ndarray | None, head: dict[str, Any], crc: bool
) -> None:
    """Install a head in the local store at ``root`` (the caller holds the store's writer lock).

    Args:
        root: the store's absolute local path.
        group: its root group, open for writing.
        weight: (C, D) class weights.
        bias: (C,) class biases, or None.
        head: the attributes' new ``head`` entry.
        crc: give the head arrays a crc32c (format 2 and later).

    Raises:
        StoreError: the install cannot be committed (the store is unchanged), or it is committed but not
            finished (the next open of the store finishes it).
    """
    finish_pending(root)
    _sweep(root)
    token = uuid.uuid4().hex[:12]
    try:
        write_head_arrays(group, weight, bias, name=BUILDING + token, crc=crc)
        atomic_write_bytes(root / JOURNAL, json.dumps({"token": token, "head": head}).encode())
    except (OSError, FsdError) as exc:
        shutil.rmtree(root / (BUILDING + token), ignore_errors=True)
        raise StoreError(f"cannot install the head in store {root}: {_why(exc)}; the store is unchanged") from None
    try:
        finish_pending(root)
    except OSError as exc:
        raise StoreError(
            f"the new head of store {root} is committed but not yet in place ({_why(exc)}); "
            "it is finished the next time the store is opened (free space or fix permissions first)"
        ) from None


def install_remote(group: zarr.Group, meta: dict[str, Any], weight: np.ndarray, bias: np.ndarray | None) -> None:
    """Install a head where there is no rename: delete the old arrays, write the new, then the attributes."""
    if "head" in group:
        del group["head"]
    write_head_arrays(group, weight, bias, crc=int(meta.get("format", 1)) >= 2)
    group.attrs["fsd"] = meta


def pending(root: Path) -> bool:
    """Whether the local store at ``root`` has a head install to finish or to undo (:func:`finish_pending`)."""
    return (root / JOURNAL).is_file() or (not (root / "head").exists() and any(root.glob(ASIDE + "*")))


def finish_pending(root: Path) -> bool:
    """Finish the committed head install of the local store at ``root``, if there is one.

    Every step can be repeated after a kill at any point of the one before. Without a journal, a head set
    aside with none in its place is an install that was never committed (a store whose head was replaced
    without a journal, killed between the two renames): the old head, which its attributes still describe,
    goes back. The caller holds the store's writer lock.

    Args:
        root: the store's absolute local path.

    Returns:
        Whether there is anything to finish or undo.

    Raises:
        StoreError: the journal is not JSON (the store is damaged).
    """
    try:
        entry = json.loads((root / JOURNAL).read_text())
    except FileNotFoundError:
        return _put_old_back(root)
    except ValueError:
        raise StoreError(
            f"store {root}: its head install journal {JOURNAL} is not JSON; the store was damaged"
        ) from None
    for step in FINISH_STEPS:
        step(root, entry)
    return True


def _set_old_aside(root: Path, entry: dict[str, Any]) -> None:
    building, aside = root / (BUILDING + entry["token"]), root / (ASIDE + entry["token"])
    if building.exists() and (root / "head").exists() and not aside.exists():
        os.rename(root / "head", aside)


def _move_new_in(root: Path, entry: dict[str, Any]) -> None:
    building = root / (BUILDING + entry["token"])
    if building.exists():
        os.rename(building, root / "head")


def _write_attributes(root: Path, entry: dict[str, Any]) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="r+")
    meta = dict(group.attrs["fsd"])
    if meta.get("head") != entry["head"]:
        meta["head"] = entry["head"]
        group.attrs["fsd"] = meta


def _remove_old(root: Path, entry: dict[str, Any]) -> None:
    shutil.rmtree(root / (ASIDE + entry["token"]), ignore_errors=True)


def _remove_journal(root: Path, entry: dict[str, Any]) -> None:
    (root / JOURNAL).unlink(missing_ok=True)


FINISH_STEPS: tuple[Callable[[Path, dict[str, Any]], None], ...] = (
    _set_old_aside,
    _move_new_in,
    _write_attributes,
    _remove_old,
    _remove_journal,
)
"""The steps after the commit point, in order (tests kill the install before each of them)."""


def _put_old_back(root: Path) -> bool:
    """Move the newest head set aside back into place when ``head/`` is missing (no journal: uncommitted)."""
    aside = sorted(root.glob(ASIDE + "*"), key=lambda p: p.stat().st_mtime)
    if (root / "head").exists() or not aside:
        return False
    os.rename(aside[-1], root / "head")
    _sweep(root)
    return True


def _sweep(root: Path) -> None:
    """Delete what installs killed before their commit point left behind (nothing reads it)."""
    for leftover in (*root.glob(BUILDING + "*"), *root.glob(ASIDE + "*")):
        shutil.rmtree(leftover, ignore_errors=True)


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)
