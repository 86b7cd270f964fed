"""Import an HDF5 file of embeddings into a store — for teachers run outside fsd.

The file holds ``embeddings`` (N, D) or (N, V, D), ``labels`` (N,), ``head/weight`` (C, D) [``head/bias``]
and optionally ``views`` (N, V, P) — exactly what ``fsd store export`` writes, so export → import round-trips.
The dataset it belongs to must be named: training pairs store row i with dataset sample i, so the labels
must agree with the dataset's and the store records the dataset's fingerprint. The "teacher" of an imported
store is the file itself (its sha256).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featstore.atomic import file_sha256
from featstore.codecs import DTYPES, check_dtype
from featstore.datasets import Dataset
from featstore.errors import InputNotFound, InvalidInput
from featstore.extract import ExtractSummary, summarise
from featstore.lock import writer_lock
from featstore.store import (
    FeatureStore,
    StoreShape,
    create_store,
    default_chunk_rows,
    local_path,
    remove_store,
    store_exists,
)
from featstore.views import PARAM_NAMES, identity_params

DEFAULT_IMPORT_DTYPE = "float16"
"""Storage dtype of an import when neither the caller nor the file's export attributes name one."""


def _exported_meta(handle: h5py.File, path: Path) -> dict:
    """The store attributes ``fsd store export`` wrote into the file ({} for files from elsewhere)."""
    if "fsd" not in handle.attrs:
        return {}
    try:
        meta = json.loads(handle.attrs["fsd"])
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{path}: its 'fsd' attribute is not valid JSON ({exc})") from exc
    head = meta.get("head") if isinstance(meta, dict) else None
    if isinstance(head, dict) and head.get("type") in ("arcface", "cosface"):
        scale = head.get("scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
            raise InvalidInput(f"{path}: {head['type']} head without a positive scale in its 'fsd' attribute")
    return meta if isinstance(meta, dict) else {}


def _read_checked(handle: h5py.File, path: Path, dataset: Dataset) -> tuple[int, int, int, np.ndarray, Any]:
    """(N, V, D, head weight, head bias) of a file whose layout, labels and head fit ``dataset``."""
    for name in ("embeddings", "labels", "head/weight"):
        if name not in handle:
            raise InvalidInput(f"{path} has no dataset {name!r} (needs embeddings, labels, head/weight)")
    emb = handle["embeddings"]
    if emb.ndim not in (2, 3):
        raise InvalidInput(f"{path}: embeddings must be (N, D) or (N, V, D), got {emb.shape}")
    n, v, d = (emb.shape[0], 1, emb.shape[1]) if emb.ndim == 2 else emb.shape
    labels = np.asarray(handle["labels"][...])
    weight = np.asarray(handle["head/weight"][...], dtype=np.float32)
    bias = np.asarray(handle["head/bias"][...], dtype=np.float32) if "head/bias" in handle else None
    if n != len(dataset):
        raise InvalidInput(f"{path} holds {n} rows, dataset {dataset.spec}/{dataset.split} has {len(dataset)}")
    if not np.array_equal(labels.astype(np.int64), dataset.labels):
        raise InvalidInput(f"{path}: labels differ from dataset {dataset.spec}/{dataset.split}'s (row order?)")
    if weight.ndim != 2 or weight.shape[1] != d or (bias is not None and bias.shape != (weight.shape[0],)):
        raise InvalidInput(f"{path}: head/weight {weight.shape} does not fit embeddings of dim {d}")
    if "views" in handle and handle["views"].shape != (n, v, len(PARAM_NAMES)):
        raise InvalidInput(f"{path}: views {handle['views'].shape}, expected {(n, v, len(PARAM_NAMES))}")
    if v > 1 and "views" not in handle:
        raise InvalidInput(f"{path}: {v} views per sample but no 'views' parameters to replay them")
    return n, v, d, weight, bias


def _store_meta(path: Path, dataset: Dataset, exported: dict, shape: tuple[int, int, int], classes: int) -> dict:
    """The store attributes of an import.

    An fsd export carries its head type (a margin head's logits are s·cos, not W·z) and its view seed; a file
    from elsewhere is a linear head with no seed.
    """
    n, v, d = shape
    head = exported.get("head") or {}
    margin_head = head.get("type") in ("arcface", "cosface")
    views_meta = exported.get("views") or {}
    same_views = "exported_view" in exported and exported["exported_view"] is None and views_meta.get("count") == v
    return {
        "teacher": {
            "arch": "imported",
            "checkpoint_sha256": file_sha256(path),
            "embedding_dim": d,
            "input_shape": list(dataset.image_shape),
            "source": str(path),
        },
        "head": {
            "type": head["type"] if margin_head else "linear",
            "num_classes": classes,
            "scale": head.get("scale") if margin_head else None,
            "margin": head.get("margin") if margin_head else None,
        },
        "dataset": {
            "spec": dataset.spec,
            "split": dataset.split,
            "num_samples": n,
            "fingerprint": dataset.fingerprint(),
        },
        "views": {
            "count": v,
            "kind": dataset.view_policy.kind,
            "params_names": list(PARAM_NAMES),
            "seed": views_meta.get("seed") if same_views else None,
            "policy": dataset.view_policy.to_dict(),
        },
    }


def _copy_chunks(store: FeatureStore, handle: h5py.File, path: Path, dataset: Dataset, url: str) -> None:
    """Write every chunk from the file; a non-finite row removes the half-made store and is refused."""
    v, d, emb = store.shape.num_views, store.shape.dim, handle["embeddings"]
    for chunk in range(store.num_chunks):
        start, stop = store.chunk_bounds(chunk)
        block = np.asarray(emb[start:stop], dtype=np.float32).reshape(stop - start, v, d)
        if not np.isfinite(block).all():
            remove_store(url)
            raise InvalidInput(f"{path}: non-finite embeddings in rows {start}–{stop - 1}")
        if "views" in handle:
            views = np.asarray(handle["views"][start:stop], dtype=np.float32)
        else:
            policy = dataset.view_policy  # boxes in original-image coordinates depend on each original's size
            sizes = dataset.source_sizes(np.arange(start, stop)) if policy.original else [None] * (stop - start)
            views = np.stack([identity_params(policy, s) for s in sizes])[:, None, :]
        store.write_chunk(chunk, block, np.ascontiguousarray(views))


def import_h5(
    path: str | Path,
    dataset: Dataset,
    url: str,
    *,
    dtype: str | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
) -> ExtractSummary:
    """Create the store at ``url`` from an HDF5 file of embeddings of ``dataset``'s rows, in order.

    Args:
        path: The HDF5 file (the layout of the module docstring).
        dataset: The dataset whose samples the file's rows are, in order; its labels must match the file's.
        url: Where the store is created.
        dtype: The store's storage dtype (None: an export's own dtype, else ``DEFAULT_IMPORT_DTYPE``).
        chunk_rows: Samples per chunk (None: the default for the store's size).
        overwrite: Whether an existing store at ``url`` may be replaced.

    Returns:
        The summary of the store written.

    Raises:
        InputNotFound: ``path`` does not exist.
        InvalidInput: ``path`` is not HDF5, lacks a dataset, disagrees with ``dataset`` or holds non-finite
            rows; or ``dtype``/``chunk_rows`` is invalid.
    """
    path = Path(path)
    if dtype is not None:
        check_dtype(dtype)
    if not path.is_file():
        raise InputNotFound(f"embeddings file {path} does not exist")
    if not h5py.is_hdf5(path):
        raise InvalidInput(f"{path} is not an HDF5 file")
    if chunk_rows is not None and chunk_rows <= 0:
        raise InvalidInput(f"chunk-rows must be positive, got {chunk_rows}")
    started = time.perf_counter()
    with h5py.File(path, "r") as handle:
        n, v, d, weight, bias = _read_checked(handle, path, dataset)
        exported = _exported_meta(handle, path)
        if dtype is None:  # keep an exported store's dtype: importing a float32 store must not round it
            dtype = exported.get("dtype") if exported.get("dtype") in DTYPES else DEFAULT_IMPORT_DTYPE
        meta = _store_meta(path, dataset, exported, (n, v, d), int(weight.shape[0]))
        with writer_lock(local_path(url)):
            if store_exists(url) and overwrite:
                remove_store(url)
            store = create_store(
                url,
                shape=StoreShape(n, v, d, len(PARAM_NAMES), int(weight.shape[0])),
                dtype=dtype,
                chunk_rows=chunk_rows or default_chunk_rows(n, v, d, dtype),
                labels=dataset.labels,
                head_weight=weight,
                head_bias=bias,
                meta=meta,
            )
            _copy_chunks(store, handle, path, dataset, url)
            store.mark_complete()
    return summarise(store, computed=store.num_chunks, seconds=time.perf_counter() - started, resumed=False)
