"""What a store costs on disk, what ``fsd store info`` reports, and what makes two stores the same.

``identity_of`` decides whether an existing store may be resumed: the inputs that determine every row
must match. ``instance_of`` adds what tells one extraction of those inputs from a later one, so a writer
can tell that the store it read was replaced meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zarr

if TYPE_CHECKING:
    from featstore.store.facade import FeatureStore


def identity_of(meta: dict[str, Any]) -> dict[str, Any]:
    """Return the part of the attributes that must match for a store to be resumed rather than refused.

    Args:
        meta: a store's ``fsd`` attributes.

    Returns:
        The teacher checksum, dataset fingerprint and split, view settings, dtype and chunk rows.
    """
    return {
        "teacher": meta["teacher"].get("checkpoint_sha256"),
        "dataset": meta["dataset"].get("fingerprint"),
        "split": meta["dataset"].get("split"),
        "views": {k: meta["views"].get(k) for k in ("count", "kind", "seed", "policy")},
        "dtype": meta["dtype"],
        "chunk_rows": (meta.get("sharding") or {}).get("inner_chunk_rows", meta["chunk_rows"]),
    }


def instance_of(meta: dict[str, Any]) -> dict[str, Any]:
    """Return :func:`identity_of` plus the creation time and labels digest of this very extraction.

    Args:
        meta: a store's ``fsd`` attributes.

    Returns:
        The identity, with ``created`` and ``labels`` added.
    """
    return {**identity_of(meta), "created": meta.get("created"), "labels": meta.get("labels_sha256")}


def nbytes_stored(group: zarr.Group) -> int:
    """Compressed bytes of all arrays (what the store costs on disk, metadata excluded)."""
    return int(
        sum(arr.nbytes_stored() for _, arr in group.arrays())
        + sum(arr.nbytes_stored() for name in ("head", "progress") if name in group for _, arr in group[name].arrays())
    )


def nbytes_embeddings(store: FeatureStore) -> tuple[int, int]:
    """(raw float32 bytes, stored bytes) of the embeddings (and int8 scales): the compression story."""
    raw = store.shape.num_samples * store.shape.num_views * store.shape.dim * 4
    stored = store.group["embeddings"].nbytes_stored()
    if store.dtype == "int8":
        stored += store.group["scales"].nbytes_stored()
    return raw, int(stored)


def info(store: FeatureStore) -> dict[str, Any]:
    """The summary ``fsd store info`` prints (docs/store.md lists its fields)."""
    raw, stored = nbytes_embeddings(store)
    return {
        "url": store.url,
        "shape": {
            "samples": store.shape.num_samples,
            "views": store.shape.num_views,
            "dim": store.shape.dim,
            "classes": store.shape.num_classes,
        },
        "dtype": store.dtype,
        "chunk_rows": store.chunk_rows,
        "sharding": store.meta.get("sharding"),
        "chunks": {"total": store.num_chunks, "done": int(store.done_chunks().sum())},
        "complete": store.complete,
        "bytes_stored": nbytes_stored(store.group),
        # an incomplete store's ratio would count chunks not yet written as free
        "compression_ratio_vs_float32": raw / stored if stored and store.complete else None,
        "format": int(store.meta.get("format", 1)),
        "checksums": store.checksummed,
        **{key: store.meta.get(key) for key in ("teacher", "head", "dataset", "views", "created", "fsd_version")},
    }
