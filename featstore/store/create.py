"""Creating a store: the creation policy and what a new store starts with.

The policy: never replace anything, and a local store appears whole or not at all. A new store starts with
its arrays, labels, head and attributes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from featstore import codecs, integrity
from featstore.atomic import ensure_parent
from featstore.errors import OutputExists, StoreError
from featstore.store.facade import FeatureStore
from featstore.store.head import write_head_arrays
from featstore.store.layout import FORMAT_VERSION, StoreShape, compressor, fsd_version, shard_factor
from featstore.store.location import local_path, store_exists, zarr_store


def create_store(
    url: str | Path,
    *,
    shape: StoreShape,
    dtype: str,
    chunk_rows: int,
    labels: np.ndarray,
    shard: int | None = None,
    head_weight: np.ndarray | None,
    head_bias: np.ndarray | None,
    meta: dict[str, Any],
) -> FeatureStore:
    """Create an empty store (every chunk 'not done', ``complete`` false) with labels and head written.

    A local store is built under a hidden sibling name and renamed into place once its attributes are
    written: a kill during creation leaves no half-made directory that neither resume nor ``--overwrite``
    would accept (only the hidden one, which nothing reads).

    Args:
        url: where the store goes; refused if anything exists there.
        shape: N, V, D, P and C of the store.
        dtype: the embeddings' storage dtype (featstore.codecs).
        chunk_rows: rows per zarr chunk.
        labels: (N,) labels, -1 for unknown.
        shard: chunks grouped into one shard file (default: the :func:`shard_factor` rule); when sharded,
            the unit of work recorded as ``chunk_rows`` in the attributes is the shard and
            ``sharding.inner_chunk_rows`` the chunk inside it.
        head_weight: the teacher's (C, D) classifier, or None for a head-less teacher.
        head_bias: its (C,) bias, or None.
        meta: the ``teacher``, ``head``, ``dataset`` and ``views`` attribute dicts; format, dtype, chunk
            rows, creation time and version are added here.

    Returns:
        The new store, open for writing.

    Raises:
        OutputExists: something exists at ``url``.
        StoreError: a dimension or ``chunk_rows`` is not positive.
        InvalidInput: ``dtype`` is not one fsd stores.
    """
    url = str(url)
    codecs.check_dtype(dtype)
    if store_exists(url):
        raise OutputExists(f"{url} already exists")
    n, v, d = shape.num_samples, shape.num_views, shape.dim
    if min(n, v, d, chunk_rows) <= 0:
        raise StoreError(f"store dimensions must be positive: N={n} V={v} D={d} chunk_rows={chunk_rows}")
    factor = shard if shard is not None else shard_factor(n, chunk_rows)
    if factor <= 0:
        raise StoreError(f"shard factor must be positive, got {factor}")
    local = local_path(url)
    building = _hidden_sibling(local.absolute()) if local is not None else None
    try:
        group = zarr.open_group(zarr_store(str(building) if building else url), mode="w-")
        _create_arrays(group, shape, dtype, chunk_rows, factor)
        if head_weight is not None:  # None: a head-less teacher (fsd store fit-head adds one later)
            write_head_arrays(group, head_weight, head_bias)
        group.attrs["fsd"] = _write_labels_and_attributes(group, labels, dtype, chunk_rows, factor, meta)
        if building is not None:
            os.rename(
                building, local.absolute()
            )  # fails if something appeared at the target meanwhile: nothing replaced
            group = zarr.open_group(zarr_store(url), mode="r+")
    except OSError as exc:
        raise StoreError(f"cannot create store {url}: {exc.strerror or exc}") from None
    finally:
        if building is not None and building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return FeatureStore(url, group)


def _hidden_sibling(local: Path) -> Path:
    """Where a local store is built before it is renamed into place (its folder is created here)."""
    ensure_parent(local)
    return local.with_name(f".{local.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _create_arrays(group: zarr.Group, shape: StoreShape, dtype: str, chunk_rows: int, factor: int) -> None:
    """The row arrays and the progress arrays of a new store, all empty."""
    n, v, d = shape.num_samples, shape.num_views, shape.dim
    unit_rows = chunk_rows * factor

    def layout(*rest: int) -> dict[str, Any]:
        if factor == 1:
            return {"chunks": (chunk_rows, *rest)}
        return {"chunks": (chunk_rows, *rest), "shards": (unit_rows, *rest)}

    def rows(name: str, tail: tuple[int, ...], stored: str, fill: int) -> None:
        group.create_array(
            name, shape=(n, *tail), **layout(*tail), dtype=stored, compressors=compressor(stored), fill_value=fill
        )

    group.create_array(
        "embeddings",
        shape=(n, v, d),
        **layout(v, d),
        dtype=codecs.STORAGE_DTYPE[dtype],
        compressors=compressor(dtype),
        fill_value=0,
    )
    if dtype == "int8":
        rows("scales", (v,), "float32", 0)
    rows("labels", (), "int64", -1)
    rows("views", (v, shape.num_params), "float32", 0)
    units = math.ceil(n / unit_rows)
    progress = {"dtype": "bool", "fill_value": False, "compressors": (ZstdCodec(), Crc32cCodec())}
    group.create_array("progress/done", shape=(units,), chunks=(1,), **progress)
    # one digest per unit of work, in its own file, so concurrent workers never rewrite each other's
    group.create_array(
        "progress/content", shape=(units, 32), chunks=(1, 32), dtype="uint8", fill_value=0, compressors=Crc32cCodec()
    )


def _write_labels_and_attributes(
    group: zarr.Group, labels: np.ndarray, dtype: str, chunk_rows: int, factor: int, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write the labels and return the attributes of a new store (written last by the caller)."""
    labels = np.asarray(labels, dtype=np.int64)
    # every labels chunk gets its file (even all -1): a missing one is then damage, not "unknown labels"
    group["labels"].with_config({"write_empty_chunks": True})[...] = labels
    attrs = {
        "format": FORMAT_VERSION,
        "complete": False,
        **meta,
        "dtype": dtype,
        "chunk_rows": int(chunk_rows * factor),
        "labels_sha256": integrity.labels_digest(labels),
        "sharding": None if factor == 1 else {"inner_chunk_rows": int(chunk_rows), "chunks_per_shard": int(factor)},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fsd_version": fsd_version(),
    }
    json.dumps(attrs)  # fail here, not half-way, if something is not JSON
    return attrs
