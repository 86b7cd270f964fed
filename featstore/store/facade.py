"""``FeatureStore``: an open store, the one object through which fsd reads and writes a store's arrays.

Callers create, open, write whole chunks, read whole chunks, mark completion and install a head through
it; nothing else touches the zarr arrays. ``progress/done`` has one zarr chunk per element, so concurrent
writers never rewrite each other's flags.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from featstore import codecs, integrity
from featstore.errors import OutputExists, StoreDamaged, StoreError
from featstore.store import head as head_install
from featstore.store import sizes
from featstore.store.layout import WRITTEN_PER_CHUNK, ChunkGeometry, StoreShape, has_head, num_classes
from featstore.store.location import local_path, zarr_store
from featstore.store.reading import ChunkReader, RawChunk


class FeatureStore(ChunkGeometry):
    """An open store. Obtain one from :func:`create_store` or :func:`open_store`.

    A store whose attributes and arrays disagree is refused on construction: nothing reads a store whose
    geometry it cannot trust (``integrity.layout_problems``).

    Args:
        url: the store's location, as the user names it (in messages).
        group: its opened zarr group.

    Raises:
        StoreDamaged: the attributes and the arrays disagree; ``problems`` lists every finding.
    """

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url = url
        self._load(group)

    def _load(self, group: zarr.Group) -> None:
        self.group = group
        self.meta: dict[str, Any] = dict(group.attrs["fsd"])
        arrays, problems = integrity.layout_problems(group, self.meta)
        if problems:
            raise StoreDamaged(f"store {self.url}: " + "; ".join(problems), problems)
        emb = arrays["embeddings"]
        self.shape = StoreShape(
            num_samples=int(emb.shape[0]),
            num_views=int(emb.shape[1]),
            dim=int(emb.shape[2]),
            num_params=int(arrays["views"].shape[2]),
            num_classes=num_classes(arrays, self.meta, group),
        )
        self.dtype: str = self.meta["dtype"]
        # The unit of work, of resume and of progress/done: a zarr chunk, or a whole shard when sharded
        # (a shard is rewritten whole on every write, so two writers must never share one).
        self.chunk_rows: int = int(self.meta["chunk_rows"])
        self.inner_chunk_rows: int = int((self.meta.get("sharding") or {}).get("inner_chunk_rows", self.chunk_rows))
        self._reader: ChunkReader | None = None

    @property
    def reader(self) -> ChunkReader:
        """The read side, opened on first use."""
        if self._reader is None:
            self._reader = ChunkReader(self)
        return self._reader

    @property
    def complete(self) -> bool:
        """Whether every chunk is written and the store is marked complete."""
        return bool(self.meta.get("complete", False))

    @property
    def checksummed(self) -> bool:
        """Format 2 and later: every chunk carries a crc32c and the labels a recorded digest."""
        return int(self.meta.get("format", 1)) >= 2

    def per_chunk_arrays(self) -> tuple[str, ...]:
        """Arrays of which every chunk has a file (format 2 writes labels chunks even when all -1)."""
        return WRITTEN_PER_CHUNK + (("labels",) if self.checksummed else ())

    def labels_mismatch(self, labels: np.ndarray) -> str | None:
        """Say why the stored labels are not ``labels`` (the dataset's, row for row).

        A store whose labels are shifted or lost would otherwise train every sample against another class.

        Args:
            labels: the dataset's labels, one per row.

        Returns:
            A message naming the first differing row, or None when the labels agree.
        """
        stored = self.labels()
        labels = np.asarray(labels, dtype=np.int64)
        if stored.shape != labels.shape:
            return f"store {self.url} holds {len(stored)} labels, the dataset {len(labels)}"
        differ = np.flatnonzero(stored != labels)
        if not len(differ):
            return None
        first = int(differ[0])
        return (
            f"store {self.url}: array labels differs from the dataset's labels at {len(differ)} rows (first row "
            f"{first}: stored {int(stored[first])}, dataset {int(labels[first])}); the store was damaged — re-extract it"
        )

    def content_problems(self) -> list[str]:
        """Check the head is finite and the labels in range and equal to the recorded digest.

        Returns:
            Every finding of ``integrity.content_problems`` (empty when the content is sound).
        """

        def read(name: str) -> np.ndarray | None:
            if name.startswith("head/") and not self.has_head:
                raise KeyError(name)  # a head-less store: nothing to check
            if name == "head/bias":
                return self.head_bias()
            return self.labels() if name == "labels" else self.head_weight()

        return integrity.content_problems(self.meta, self.shape.num_classes, read)

    # -- progress ---------------------------------------------------------------------------------------
    def done_chunks(self) -> np.ndarray:
        """Return the (num_chunks,) bool flags of the chunks written."""
        return np.asarray(self.group["progress/done"][:], dtype=bool)

    def missing_chunks(self) -> list[int]:
        """Return the indices of the chunks not written yet, in order."""
        return [int(k) for k in np.flatnonzero(~self.done_chunks())]

    # -- writing ----------------------------------------------------------------------------------------
    def write_chunk(
        self, chunk: int, embeddings: np.ndarray, views: np.ndarray, content_digest: bytes | None = None
    ) -> None:
        """Write all rows of one chunk, then mark it done.

        The flag is written last, so a kill between the two leaves the chunk 'not done' and resume
        recomputes it.

        Args:
            chunk: the chunk index.
            embeddings: (rows, V, D) float32 embeddings of the chunk's rows.
            views: (rows, V, P) view parameters (NaN for samples left out).
            content_digest: the 32-byte sha256 of the bytes the chunk's images are read from (lazy
                datasets), kept to detect changed files; None for in-memory data.

        Raises:
            StoreError: ``embeddings`` does not have the chunk's shape.
        """
        start, stop = self.chunk_bounds(chunk)
        expected = (stop - start, self.shape.num_views, self.shape.dim)
        if embeddings.shape != expected:
            raise StoreError(f"chunk {chunk}: embeddings {embeddings.shape}, expected {expected}")
        stored, scales = codecs.encode(embeddings, self.dtype)
        # Every written chunk gets its files, even when all fill value (zarr would skip those): a done chunk
        # without a file is then damage, which readers report instead of serving fill values.
        always = {"write_empty_chunks": True}
        self.group["embeddings"].with_config(always)[start:stop] = stored
        if scales is not None:
            self.group["scales"].with_config(always)[start:stop] = scales
        self.group["views"].with_config(always)[start:stop] = views.astype(np.float32)
        if content_digest is not None and "progress/content" in self.group:
            self.group["progress/content"][chunk] = np.frombuffer(content_digest, dtype=np.uint8)
        self.group["progress/done"][chunk] = True

    def content_digests(self) -> np.ndarray | None:
        """(num_chunks, 32) uint8 content digests (all zero: none recorded); None for stores without them."""
        if "progress/content" not in self.group:
            return None
        return np.asarray(self.group["progress/content"][:], dtype=np.uint8)

    def mark_complete(self) -> None:
        """Record in the attributes that every chunk is written.

        Raises:
            StoreError: some chunks are not written yet.
        """
        if not self.done_chunks().all():
            raise StoreError(f"store {self.url}: cannot mark complete, chunks {self.missing_chunks()} missing")
        self.meta["complete"] = True
        self.group.attrs["fsd"] = self.meta

    # -- reading ----------------------------------------------------------------------------------------
    def read_chunks_raw(self, chunks: list[int]) -> list[RawChunk | Exception]:
        """Read several chunks as stored, each result independent of the others.

        A corrupt chunk must not hide its neighbours, so its exception takes its place in the list. Decode
        with :meth:`decode`; the stream decodes only the view it picked, not all V
        (:mod:`featstore.store.reading` says which path reads what).

        Args:
            chunks: the chunk indices to read.

        Returns:
            For each chunk, a :class:`RawChunk` (stored embeddings as on disk, int8 scales or None, labels,
            views) or the exception its read raised.
        """
        return self.reader.read_chunks(chunks)

    def read_chunk_raw(self, chunk: int) -> RawChunk:
        """Read one chunk as stored (see :meth:`read_chunks_raw`), raising what its read raised."""
        result = self.read_chunks_raw([chunk])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def missing_chunk_files(self, chunk: int) -> list[str]:
        """Arrays whose file for ``chunk`` is absent although :meth:`write_chunk` always writes one."""
        return self.reader.missing_files(chunk)

    def decode(self, stored: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
        """Decode stored rows (any leading shape, last axis D) to float32.

        Args:
            stored: the rows as stored (the store's dtype).
            scales: the int8 per-row scales, for int8 stores.

        Returns:
            The float32 embeddings, of the same shape.
        """
        return codecs.decode(stored, self.dtype, scales)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read rows [start, stop), decoded.

        Args:
            start: the first row.
            stop: the row after the last.

        Returns:
            Embeddings float32 (n, V, D), labels (n,) and view parameters (n, V, P).
        """
        read = self.reader.read
        stored = read("embeddings", start, stop)
        scales = read("scales", start, stop) if self.dtype == "int8" else None
        labels = np.asarray(read("labels", start, stop), dtype=np.int64)
        views = np.asarray(read("views", start, stop), dtype=np.float32)
        return self.decode(stored, scales), labels, views

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read one chunk, decoded and checked.

        Args:
            chunk: the chunk index.

        Returns:
            Embeddings float32 (n, V, D), labels (n,) and view parameters (n, V, P).

        Raises:
            StoreError: naming the array and the chunk, when a file is missing, does not decode, fails its
                checksum, or holds bad labels or views.
        """
        missing = self.missing_chunk_files(chunk)
        if missing:
            raise StoreError(self.reader.missing_message(chunk, missing))
        embeddings, labels, views = self.read_rows(*self.chunk_bounds(chunk))
        checked = self.reader.validated(chunk, (embeddings, None, labels, views))
        if isinstance(checked, StoreError):
            raise checked
        return embeddings, labels, views

    def read_scales(self, chunk: int) -> np.ndarray | None:
        """The int8 per-row scales of one chunk (None for float stores)."""
        if self.dtype != "int8":
            return None
        start, stop = self.chunk_bounds(chunk)
        return np.asarray(self.reader.read("scales", start, stop), dtype=np.float32)

    def labels(self) -> np.ndarray:
        """All labels (int64, N) — small next to the embeddings, so loading them whole is fine."""
        return np.asarray(self.reader.read("labels"), dtype=np.int64)

    # -- the head ---------------------------------------------------------------------------------------
    @property
    def has_head(self) -> bool:
        """Whether the store holds a classifier.

        False for a store extracted from a head-less teacher (an ONNX or a pooled timm embedding model) until
        ``fsd store fit-head`` trains one on the stored embeddings.
        """
        return has_head(self.group)

    def head_weight(self) -> np.ndarray:
        """Return the teacher head's (C, D) float32 weights.

        Raises:
            StoreError: the store has no head; the message says how to fit one.
        """
        if not self.has_head:
            raise StoreError(
                f"store {self.url} has no teacher head (its teacher came without a classifier); "
                f"fit one on the stored embeddings with: fsd store fit-head {self.url} --head arcface"
            )
        return np.asarray(self.reader.read("head/weight"), dtype=np.float32)

    def head_bias(self) -> np.ndarray | None:
        """Return the teacher head's (C,) float32 bias, or None when it has none (or there is no head)."""
        if not self.has_head or "bias" not in self.group["head"]:
            return None
        return np.asarray(self.reader.read("head/bias"), dtype=np.float32)

    def install_head(
        self, weight: np.ndarray, bias: np.ndarray | None, head_meta: dict[str, Any], *, overwrite: bool = False
    ) -> None:
        """Install a (fitted) classifier as ``head/`` with ``head_meta`` as the attributes' ``head`` entry.

        On a local store the arrays and the attributes change in one atomic step
        (:mod:`featstore.store.head`); the caller holds the store's writer lock.

        Args:
            weight: (C, D) class weights for the store's D-dimensional embeddings.
            bias: (C,) class biases, or None.
            head_meta: what the attributes record about the head (type, scale, margin, how it was fitted).
            overwrite: replace an existing head; without it a store that has one is refused.

        Raises:
            OutputExists: the store has a head and ``overwrite`` is false.
            StoreError: ``weight`` does not fit the store's embeddings, or the install cannot be committed.
        """
        if self.has_head and not overwrite:
            raise OutputExists(f"store {self.url} already has a head (use --overwrite to replace it)")
        if weight.ndim != 2 or weight.shape[1] != self.shape.dim:
            raise StoreError(f"head weight {weight.shape} does not fit the store's {self.shape.dim}-d embeddings")
        local = local_path(self.url)
        if local is None:
            head_install.install_remote(self.group, {**self.meta, "head": dict(head_meta)}, weight, bias)
        else:
            head_install.install_local(local.absolute(), self.group, weight, bias, dict(head_meta), self.checksummed)
        self._load(zarr.open_group(zarr_store(self.url), mode="r+"))

    # -- sizes ------------------------------------------------------------------------------------------
    def nbytes_stored(self) -> int:
        """Compressed bytes of all arrays (what the store costs on disk, metadata excluded)."""
        return sizes.nbytes_stored(self.group)

    def nbytes_embeddings(self) -> tuple[int, int]:
        """(raw float32 bytes, stored bytes) of the embeddings (and int8 scales)."""
        return sizes.nbytes_embeddings(self)

    def info(self) -> dict[str, Any]:
        """What ``fsd store info`` prints."""
        return sizes.info(self)
