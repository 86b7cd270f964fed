"""Export a store to one HDF5 file (embeddings of every view, labels, view parameters, head), atomically.

Why: HDF5 is what other tools read (and what ``fsd eval --embeddings`` takes). The copy goes chunk by chunk
into a temporary file that is renamed only when complete, so a killed export never leaves a half file.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from featstore.atomic import atomic_path
from featstore.errors import InvalidInput, OutputExists
from featstore.progress import progress as progress_bar
from featstore.store import open_store


def export_h5(
    url: str, out: str | Path, *, view: int | None = None, overwrite: bool = False, progress: bool = True
) -> Path:
    """Export a store to one HDF5 file, atomically.

    The file holds ``embeddings`` (N, V, D) float32 — or (N, D) for one ``view`` —, ``labels`` (N,),
    ``views`` (N, V, P), ``head/weight`` (C, D) [, ``head/bias``], and the store attributes as JSON.

    Args:
        url: The store to export.
        out: The HDF5 file to write.
        view: Export only this view's embeddings and parameters (None: every view).
        overwrite: Whether an existing ``out`` may be replaced.
        progress: Whether to show a progress bar.

    Returns:
        The path written.

    Raises:
        OutputExists: ``out`` exists and ``overwrite`` is not set.
        InvalidInput: ``view`` is outside the store's views.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it)")
    store = open_store(url)
    n, v, d = store.shape.num_samples, store.shape.num_views, store.shape.dim
    if view is not None and not 0 <= view < v:
        raise InvalidInput(f"view {view} outside the store's {v} views")
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as handle:
        emb_shape = (n, d) if view is not None else (n, v, d)
        emb = handle.create_dataset(
            "embeddings",
            shape=emb_shape,
            dtype="float32",
            chunks=(min(store.chunk_rows, n), *emb_shape[1:]),
            compression="gzip",
        )
        labels = handle.create_dataset("labels", shape=(n,), dtype="int64")
        # one view exported: its parameters only, (N, 1, P), so `fsd store import` reads the file back
        kept_views = 1 if view is not None else v
        views = handle.create_dataset("views", shape=(n, kept_views, store.shape.num_params), dtype="float32")
        for chunk in progress_bar(range(store.num_chunks), desc="export", unit="chunk", enabled=progress):
            start, stop = store.chunk_bounds(chunk)
            rows, chunk_labels, chunk_views = store.read_chunk(chunk)
            emb[start:stop] = rows if view is None else rows[:, view]
            labels[start:stop] = chunk_labels
            views[start:stop] = chunk_views if view is None else chunk_views[:, view : view + 1]
        if store.has_head:  # a head-less store (until fsd store fit-head) exports without one
            handle.create_dataset("head/weight", data=store.head_weight())
            bias = store.head_bias()
            if bias is not None:
                handle.create_dataset("head/bias", data=bias)
        handle.attrs["fsd"] = json.dumps({**store.meta, "exported_view": view})
    return out


def read_h5_attrs(path: str | Path) -> dict:
    """The store attributes an export wrote into ``path`` ({} for a file from elsewhere)."""
    with h5py.File(path, "r") as handle:
        return json.loads(handle.attrs["fsd"]) if "fsd" in handle.attrs else {}


__all__ = ["export_h5", "read_h5_attrs"]
