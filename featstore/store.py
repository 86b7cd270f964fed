"""The feature store: a Zarr v3 group holding a teacher's embeddings per (sample, view) — format version 2.

Layout and attributes are those of docs/store.md. Format 2 adds a crc32c checksum to every chunk of every
array and a digest of the labels (featstore/integrity.py); format 1 stores are still read. This module is the only one that touches zarr arrays:
callers create, open, write whole chunks, read whole chunks, and mark completion through
:class:`FeatureStore`. Chunks run along the sample axis only, so a chunk holds every view of its rows and
one read serves any view choice; ``progress/done`` has one zarr chunk per element so concurrent writers
never rewrite each other's flags.

Size (over the ~500-line guideline, knowingly): this module grew with format 2's checksums, head-less stores
and content digests in one session. The split it should get: the direct chunk-file reader (``_ChunkFiles``,
``_read_direct``) into ``featstore/chunk_files.py`` and store creation (``create_store``, ``_initialise``,
``write_head_arrays``, ``shard_factor``, ``default_chunk_rows``) into ``featstore/store_create.py``, leaving
``FeatureStore`` and ``open_store`` here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
import math
import os
import shutil
import struct
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs.blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.sync import sync as zarr_sync

from featstore import codecs, integrity
from featstore.atomic import ensure_parent
from featstore.errors import InputNotFound, OutputExists, StoreDamaged, StoreError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
"""Format 2 = format 1 + a crc32c on every chunk + ``labels_sha256``; stores written before keep reading."""
TARGET_CHUNK_BYTES = 4 * 1024 * 1024  # uncompressed embedding bytes per chunk: "a few MB"
MIN_CHUNKS_FOR_SHUFFLE = 16  # small stores still get enough chunks for chunk-shuffled streaming
MAX_UNSHARDED_CHUNKS = 4096  # beyond this many chunks per array, chunks are grouped into shards
WRITTEN_PER_CHUNK = ("embeddings", "views", "scales")
"""Arrays :meth:`FeatureStore.write_chunk` writes a file for in every chunk (labels are written at creation)."""
DECODE_THREADS = max(
    1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)
"""Threads decompressing chunk files of one read (Blosc releases the GIL; zarr turns Blosc's own threads off)."""
TARGET_SHARDS = 1024  # ... so that each array has at most about this many files


def shard_factor(num_samples: int, chunk_rows: int) -> int:
    """How many chunks one shard holds: 1 (no sharding) up to MAX_UNSHARDED_CHUNKS chunks per array, else
    enough that an array has at most TARGET_SHARDS shard files. File count stays bounded for any N."""
    chunks = math.ceil(num_samples / chunk_rows)
    return 1 if chunks <= MAX_UNSHARDED_CHUNKS else math.ceil(chunks / TARGET_SHARDS)


def fsd_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fsd")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def default_chunk_rows(num_samples: int, num_views: int, dim: int, dtype: str) -> int:
    """Rows per chunk: about TARGET_CHUNK_BYTES of embeddings, but at least MIN_CHUNKS_FOR_SHUFFLE chunks.

    Why the second rule: the stream shuffles at chunk granularity, so a store of one giant chunk would
    stream in a fixed order inside its shuffle buffer.
    """
    row_bytes = num_views * dim * np.dtype(codecs.STORAGE_DTYPE[dtype]).itemsize
    by_size = max(1, TARGET_CHUNK_BYTES // row_bytes)
    by_count = max(1, num_samples // MIN_CHUNKS_FOR_SHUFFLE)
    return int(max(1, min(by_size, by_count)))


def local_path(url: str) -> Path | None:
    """The local directory a store URL names, or None for remote/in-memory URLs."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url:
        return None
    return Path(url)


def _zarr_store(url: str) -> Any:
    """What zarr should open: a LocalStore for local paths (atomic chunk writes), the URL otherwise.

    The path is made absolute here: zarr keeps it as given and reads a missing chunk as fill values, so a
    relative store opened before a change of working directory would otherwise read as zeros without error.
    """
    local = local_path(url)
    if local is not None:
        return zarr.storage.LocalStore(local.absolute())
    return url


def _compressor(dtype: str) -> tuple[BloscCodec, Crc32cCodec]:
    """Blosc, then a crc32c of the compressed bytes: a flipped bit that would still decompress is caught."""
    # Bit-shuffle groups the sign/exponent bits of 16-bit floats, which is what makes them compress.
    shuffle = "bitshuffle" if dtype in ("float16", "bfloat16") else "shuffle"
    return BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), Crc32cCodec()


class _ChunkFiles:
    """Whole chunks of one local, unsharded ``[bytes, blosc]`` array read straight from their files.

    Why: zarr's read pipeline (async tasks, codec objects, an output array filled then copied into) costs
    about as much again as reading and Blosc-decompressing the chunk file itself — ~55 vs ~31 ms per epoch
    of the benchmark store — and the stream reads every chunk every epoch. Only the layout fsd writes
    qualifies (checked in :meth:`for_array`); anything else goes through zarr, and both paths return the same
    arrays. Where zarr would serve fill values for a chunk without a file, the store reports the chunk
    instead (embeddings, views, scales: :meth:`FeatureStore.missing_chunk_files`) or asks zarr (labels).
    """

    def __init__(self, array: Any, root: Path, crc: bool) -> None:
        self._array = array
        self._root = root
        self._crc = crc
        self._dtype = np.dtype(array.dtype).newbyteorder("<")
        self._chunk_shape = tuple(int(x) for x in array.metadata.chunk_grid.chunk_shape)

    @classmethod
    def for_array(cls, array: Any, chunk_rows: int) -> _ChunkFiles | None:
        """A reader when ``array`` has fsd's plain layout on a local file system, else None."""
        store = array.store_path.store
        meta = array.metadata
        if not isinstance(store, zarr.storage.LocalStore) or getattr(meta, "zarr_format", None) != 3:
            return None
        grid = getattr(meta.chunk_grid, "chunk_shape", None)
        codecs_ = tuple(meta.codecs)
        plain = (
            array.shards is None
            and grid is not None
            and tuple(grid) == (chunk_rows, *array.shape[1:])
            and len(codecs_) in (2, 3)
            and isinstance(codecs_[0], BytesCodec)
            and (codecs_[0].endian is None or codecs_[0].endian.value == "little")
            and isinstance(codecs_[1], BloscCodec)
            and (len(codecs_) == 2 or isinstance(codecs_[2], Crc32cCodec))
        )
        return cls(array, Path(store.root) / array.store_path.path, len(codecs_) == 3) if plain else None

    def _key(self, chunk: int) -> str:
        return self._array.metadata.encode_chunk_key((chunk,) + (0,) * (len(self._chunk_shape) - 1))

    def exists(self, chunk: int) -> bool:
        return (self._root / self._key(chunk)).is_file()

    def read(self, chunk: int, rows: int) -> np.ndarray | None:
        """The first ``rows`` rows of chunk ``chunk`` (edge chunks are stored full size), or None when the
        chunk has no file. A corrupt or truncated file raises."""
        key = self._key(chunk)
        try:
            data = (self._root / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # zarr's LocalStore: "no chunk"
            return None
        if self._crc:  # format 2: the checksum zarr's crc32c codec appended, checked before decompressing
            data = integrity.check_crc(data, key)
        out = np.empty(self._chunk_shape, dtype=self._dtype)
        # Blosc's frame header (16 bytes: ..., nbytes, blocksize, cbytes as little-endian uint32) must match
        # the file and the chunk: Blosc itself would read past a truncated buffer instead of failing.
        if len(data) < 16:
            raise StoreError(f"chunk file {key} is {len(data)} bytes, too short for a Blosc frame")
        nbytes, _, cbytes = struct.unpack_from("<III", data, 4)
        if cbytes != len(data) or nbytes != out.nbytes:
            raise StoreError(
                f"chunk file {key}: Blosc frame of {cbytes} bytes ({nbytes} decoded) in a file of {len(data)} "
                f"bytes, expected {out.nbytes} decoded: truncated or corrupt"
            )
        numcodecs.blosc.decompress(data, out)
        return out[:rows].astype(self._dtype.newbyteorder("="), copy=False)


@dataclass(frozen=True)
class StoreShape:
    num_samples: int
    num_views: int
    dim: int
    num_params: int
    num_classes: int


class ChunkGeometry:
    """Rows [0, N) cut into units of ``chunk_rows``: shared by stores and by store-shaped view sources."""

    shape: StoreShape
    chunk_rows: int

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.shape.num_samples / self.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape.num_samples)


class FeatureStore(ChunkGeometry):
    """An open store. Obtain one from :func:`create_store` or :func:`open_store`."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        """Refuses (:class:`StoreDamaged`) a store whose attributes and arrays disagree: nothing reads a store
        whose geometry it cannot trust (integrity.layout_problems)."""
        self.url = url
        self._group = group
        self.meta: dict[str, Any] = dict(group.attrs["fsd"])
        arrays, problems = integrity.layout_problems(group, self.meta)
        if problems:
            raise StoreDamaged(f"store {url}: " + "; ".join(problems), problems)
        emb = arrays["embeddings"]
        self.shape = StoreShape(
            num_samples=int(emb.shape[0]),
            num_views=int(emb.shape[1]),
            dim=int(emb.shape[2]),
            num_params=int(arrays["views"].shape[2]),
            num_classes=_num_classes(arrays, self.meta, group),
        )
        self._row_arrays: dict[str, Any] | None = None
        self._chunk_files: dict[str, _ChunkFiles | None] | None = None
        self.dtype: str = self.meta["dtype"]
        # The unit of work, of resume and of progress/done: a zarr chunk, or a whole shard when sharded
        # (a shard is rewritten whole on every write, so two writers must never share one).
        self.chunk_rows: int = int(self.meta["chunk_rows"])
        self.inner_chunk_rows: int = int((self.meta.get("sharding") or {}).get("inner_chunk_rows", self.chunk_rows))

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    @property
    def checksummed(self) -> bool:
        """Format 2 and later: every chunk carries a crc32c and the labels a recorded digest."""
        return int(self.meta.get("format", 1)) >= 2

    def _per_chunk(self) -> tuple[str, ...]:
        """Arrays of which every chunk has a file (format 2 writes labels chunks even when all -1)."""
        return WRITTEN_PER_CHUNK + (("labels",) if self.checksummed else ())

    def labels_mismatch(self, labels: np.ndarray) -> str | None:
        """Why the stored labels are not ``labels`` (the dataset's, row for row), or None when they are: a
        store whose labels were shifted or lost would otherwise train every sample against another class."""
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
        """Head finite, labels in range and equal to the recorded digest (integrity.content_problems)."""

        def read(name: str) -> np.ndarray | None:
            if name.startswith("head/") and not self.has_head:
                raise KeyError(name)  # a head-less store: nothing to check
            if name == "head/bias":
                return self.head_bias()
            return self.labels() if name == "labels" else self.head_weight()

        return integrity.content_problems(self.meta, self.shape.num_classes, read)

    # -- progress ---------------------------------------------------------------------------------------
    def done_chunks(self) -> np.ndarray:
        return np.asarray(self._group["progress/done"][:], dtype=bool)

    def missing_chunks(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(~self.done_chunks())]

    # -- writing ----------------------------------------------------------------------------------------
    def write_chunk(
        self, chunk: int, embeddings: np.ndarray, views: np.ndarray, content_digest: bytes | None = None
    ) -> None:
        """Write all rows of one chunk, then mark it done (the flag is written last, so a kill between the
        two leaves the chunk 'not done' and resume recomputes it). ``content_digest`` (32 bytes) is the
        sha256 of the bytes the chunk's images were read from (lazy datasets), kept to detect changed files."""
        start, stop = self.chunk_bounds(chunk)
        expected = (stop - start, self.shape.num_views, self.shape.dim)
        if embeddings.shape != expected:
            raise StoreError(f"chunk {chunk}: embeddings {embeddings.shape}, expected {expected}")
        stored, scales = codecs.encode(embeddings, self.dtype)
        # Every written chunk gets its files, even when all fill value (zarr would skip those): a done chunk
        # without a file is then damage, which readers report instead of serving fill values.
        always = {"write_empty_chunks": True}
        self._group["embeddings"].with_config(always)[start:stop] = stored
        if scales is not None:
            self._group["scales"].with_config(always)[start:stop] = scales
        self._group["views"].with_config(always)[start:stop] = views.astype(np.float32)
        if content_digest is not None and "progress/content" in self._group:
            self._group["progress/content"][chunk] = np.frombuffer(content_digest, dtype=np.uint8)
        self._group["progress/done"][chunk] = True

    def content_digests(self) -> np.ndarray | None:
        """(num_chunks, 32) uint8 content digests (all zero: none recorded); None for stores made before
        fsd recorded them."""
        if "progress/content" not in self._group:
            return None
        return np.asarray(self._group["progress/content"][:], dtype=np.uint8)

    def mark_complete(self) -> None:
        if not self.done_chunks().all():
            raise StoreError(f"store {self.url}: cannot mark complete, chunks {self.missing_chunks()} missing")
        self.meta["complete"] = True
        self._group.attrs["fsd"] = self.meta

    # -- reading ----------------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, Any]:
        """The row-indexed arrays, opened once: looking an array up in the group re-reads its metadata."""
        if self._row_arrays is None:
            names = ["embeddings", "labels", "views"] + (["scales"] if self.dtype == "int8" else [])
            self._row_arrays = {name: self._group[name] for name in names}
        return self._row_arrays

    def read_chunks_raw(
        self, chunks: list[int]
    ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray] | Exception]:
        """For each chunk: (stored embeddings as on disk, int8 scales or None, labels, views), or the
        exception its read raised (a corrupt chunk must not hide its neighbours).

        A local store in fsd's plain layout reads each chunk file and Blosc-decompresses it directly
        (:class:`_ChunkFiles`); any other store fetches every array of every chunk concurrently in one round
        trip to zarr's event loop. On a local store, a chunk whose embeddings, views or scales file is
        missing is returned as a :class:`StoreError` (zarr alone would serve zeros); one whose labels file
        is missing (all labels unknown) is read through zarr. Decode with :meth:`decode`; the stream decodes
        only the view it picked, not all V."""
        arrays = self._arrays()
        direct = self._direct_readers()
        if direct is None:
            return self._read_chunks_zarr(arrays, chunks)
        if len(chunks) == 1 or DECODE_THREADS == 1:
            results = [self._read_direct(direct, chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, len(chunks))) as pool:
                results = list(pool.map(lambda chunk: self._read_direct(direct, chunk), chunks))
        missing = [c for c, r in zip(chunks, results) if r is None]
        if missing:  # chunks without files: one zarr call for all of them
            from_zarr = iter(self._read_chunks_zarr(arrays, missing))
            results = [r if r is not None else next(from_zarr) for r in results]
        return results

    def _direct_readers(self) -> dict[str, _ChunkFiles] | None:
        """One :class:`_ChunkFiles` per row array when every one of them qualifies, else None."""
        if self._chunk_files is None:
            self._chunk_files = {name: _ChunkFiles.for_array(a, self.chunk_rows) for name, a in self._arrays().items()}
        readers = self._chunk_files
        return None if any(r is None for r in readers.values()) else readers  # type: ignore[return-value]

    def _read_direct(self, readers: dict[str, _ChunkFiles], chunk: int) -> tuple | Exception | None:
        """One chunk's parts from its files; the exception a corrupt file raised; None if a file is absent."""
        start, stop = self.chunk_bounds(chunk)
        raw: dict[str, np.ndarray] = {}
        try:
            for name, reader in readers.items():
                try:
                    part = reader.read(chunk, stop - start)
                except Exception as exc:  # noqa: BLE001 - reported per chunk, as zarr's own read failures are
                    return self._read_error(name, chunk, exc)
                if part is None:
                    if name in self._per_chunk():
                        return StoreError(self._missing_message(chunk, [name]))
                    return None  # format 1 labels: all -1 (unknown) is a legitimate fill-value chunk
                raw[name] = part
        except Exception as exc:  # noqa: BLE001 - reported per chunk
            return exc
        return self._validated(chunk, self._raw_parts(raw))

    def _read_error(self, name: str, chunk: int | str, exc: BaseException) -> StoreError:
        """One message for any failure to read a chunk, naming the store, the array and the chunk."""
        if isinstance(exc, StoreError):
            return exc
        what = f"chunk {chunk}" if isinstance(chunk, int) else chunk
        why = f"{type(exc).__name__}: {exc}"
        if "checksum" in str(exc).lower():  # zarr's crc32c codec, or integrity.check_crc on the direct path
            why = "checksum mismatch: the chunk file changed after it was written"
        return StoreError(
            f"store {self.url}: array {name}, {what} cannot be read ({why}); "
            "run `fsd store verify` and re-extract the store"
        )

    def _validated(self, chunk: int, parts: tuple) -> tuple | StoreError:
        """A decoded chunk, or the StoreError its labels or view parameters earn (integrity.chunk_problems)."""
        problems = integrity.chunk_problems(parts[2], parts[3], self.shape.num_classes)
        if problems:
            return StoreDamaged(f"store {self.url}: chunk {chunk} is damaged: {'; '.join(problems)}", problems)
        return parts

    def missing_chunk_files(self, chunk: int) -> list[str]:
        """Arrays whose file for ``chunk`` is absent although :meth:`write_chunk` always writes one (local stores
        in the plain layout; elsewhere zarr cannot tell a missing chunk from a fill-value one: [])."""
        readers = self._direct_readers()
        if readers is None:
            return []
        return [name for name in self._per_chunk() if name in readers and not readers[name].exists(chunk)]

    def _missing_message(self, chunk: int, names: list[str]) -> str:
        return (
            f"chunk {chunk} of store {self.url}: its {', '.join(names)} chunk file is missing (zarr would read "
            "fill values); the store is incomplete or was damaged"
        )

    @staticmethod
    def _raw_parts(raw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        scales = None if raw.get("scales") is None else np.asarray(raw["scales"], dtype=np.float32)
        return (
            np.asarray(raw["embeddings"]),
            scales,
            np.asarray(raw["labels"], dtype=np.int64),
            np.asarray(raw["views"], dtype=np.float32),
        )

    def _read_chunks_zarr(self, arrays: dict[str, Any], chunks: list[int]) -> list[Any]:
        """The same through zarr: every array of every chunk fetched concurrently in one sync call."""
        names = list(arrays)

        async def fetch(name: str, chunk: int) -> Any:
            try:
                return await arrays[name]._async_array.getitem(slice(*self.chunk_bounds(chunk)))
            except Exception as exc:  # noqa: BLE001 - named by array and chunk
                raise self._read_error(name, chunk, exc) from None

        async def fetch_chunk(chunk: int) -> list[Any]:
            return await asyncio.gather(*(fetch(name, chunk) for name in names))

        async def fetch_all() -> list[Any]:
            return await asyncio.gather(*(fetch_chunk(c) for c in chunks), return_exceptions=True)

        return [
            result
            if isinstance(result, BaseException)
            else self._validated(c, self._raw_parts(dict(zip(names, result))))
            for c, result in zip(chunks, zarr_sync(fetch_all()))
        ]

    def read_chunk_raw(self, chunk: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        result = self.read_chunks_raw([chunk])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def decode(self, stored: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
        """Stored rows (any leading shape, last axis D) → float32."""
        return codecs.decode(stored, self.dtype, scales)

    def _read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of one array (all of it by default) through zarr, any failure a StoreError
        naming the array and the rows (zarr's crc32c codec raises ValueError on a checksum mismatch)."""
        array = self._arrays()[name] if name in self._arrays() else self._group[name]
        try:
            return array[start:stop]
        except Exception as exc:  # noqa: BLE001 - blosc, checksum and I/O failures alike
            if start is None:
                where = "a chunk"
            elif (
                self.chunk_rows
                and start % self.chunk_rows == 0
                and stop == self.chunk_bounds(start // self.chunk_rows)[1]
            ):
                where = start // self.chunk_rows
            else:
                where = f"rows {start}-{stop}"
            raise self._read_error(name, where, exc) from None

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings float32 (n, V, D), labels (n,), views (n, V, P)) for rows [start, stop)."""
        stored = self._read("embeddings", start, stop)
        scales = self._read("scales", start, stop) if self.dtype == "int8" else None
        labels = np.asarray(self._read("labels", start, stop), dtype=np.int64)
        views = np.asarray(self._read("views", start, stop), dtype=np.float32)
        return self.decode(stored, scales), labels, views

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings float32 (n, V, D), labels, views) of one chunk; StoreError naming the array and the
        chunk if a file is missing, does not decode, fails its checksum, or holds bad labels or views."""
        missing = self.missing_chunk_files(chunk)
        if missing:
            raise StoreError(self._missing_message(chunk, missing))
        embeddings, labels, views = self.read_rows(*self.chunk_bounds(chunk))
        checked = self._validated(chunk, (embeddings, None, labels, views))
        if isinstance(checked, StoreError):
            raise checked
        return embeddings, labels, views

    def read_scales(self, chunk: int) -> np.ndarray | None:
        """The int8 per-row scales of one chunk (None for float stores)."""
        if self.dtype != "int8":
            return None
        start, stop = self.chunk_bounds(chunk)
        return np.asarray(self._read("scales", start, stop), dtype=np.float32)

    def labels(self) -> np.ndarray:
        """All labels (int64, N) — small next to the embeddings, so loading them whole is fine."""
        return np.asarray(self._read("labels"), dtype=np.int64)

    @property
    def has_head(self) -> bool:
        """False for a store extracted from a head-less teacher (an ONNX or a pooled timm embedding model)
        until ``fsd store fit-head`` trains one on the stored embeddings."""
        return _has_head(self._group)

    def head_weight(self) -> np.ndarray:
        if not self.has_head:
            raise StoreError(
                f"store {self.url} has no teacher head (its teacher came without a classifier); "
                f"fit one on the stored embeddings with: fsd store fit-head {self.url} --head arcface"
            )
        return np.asarray(self._read("head/weight"), dtype=np.float32)

    def head_bias(self) -> np.ndarray | None:
        if not self.has_head:
            return None
        head = self._group["head"]
        return np.asarray(self._read("head/bias"), dtype=np.float32) if "bias" in head else None

    def install_head(
        self, weight: np.ndarray, bias: np.ndarray | None, head_meta: dict[str, Any], *, overwrite: bool = False
    ) -> None:
        """Write a (fitted) classifier as ``head/`` and record ``head_meta`` in the attributes.

        Local stores get it atomically: the arrays are built under a hidden name inside the store and renamed
        into place, so readers see the old head or the new one, never a half-written one (the attributes,
        written last, then describe it). A store that has a head is refused unless ``overwrite``.
        """
        if self.has_head and not overwrite:
            raise OutputExists(f"store {self.url} already has a head (use --overwrite to replace it)")
        if weight.ndim != 2 or weight.shape[1] != self.shape.dim:
            raise StoreError(f"head weight {weight.shape} does not fit the store's {self.shape.dim}-d embeddings")
        crc = self.checksummed
        local = local_path(self.url)
        if local is None:  # fsspec stores have no rename: arrays first, attributes last
            if self.has_head:
                del self._group["head"]
            write_head_arrays(self._group, weight, bias, crc=crc)
        else:
            token = uuid.uuid4().hex[:8]
            building = f".head-building-{token}"
            write_head_arrays(self._group, weight, bias, name=building, crc=crc)
            root = local.absolute()
            aside = root / f".head-old-{token}"
            if self.has_head:
                os.rename(root / "head", aside)
            os.rename(root / building, root / "head")
            shutil.rmtree(aside, ignore_errors=True)
            self._group = zarr.open_group(_zarr_store(self.url), mode="r+")
        self.meta["head"] = dict(head_meta)
        self._group.attrs["fsd"] = self.meta
        self.shape = dataclasses.replace(self.shape, num_classes=int(weight.shape[0]))

    # -- sizes ------------------------------------------------------------------------------------------
    def nbytes_stored(self) -> int:
        """Compressed bytes of all arrays (what the store costs on disk, metadata excluded)."""
        return int(
            sum(arr.nbytes_stored() for _, arr in self._group.arrays())
            + sum(
                arr.nbytes_stored()
                for name in ("head", "progress")
                if name in self._group
                for _, arr in self._group[name].arrays()
            )
        )

    def nbytes_embeddings(self) -> tuple[int, int]:
        """(raw float32 bytes, stored bytes) of the embeddings (and int8 scales): the compression story."""
        raw = self.shape.num_samples * self.shape.num_views * self.shape.dim * 4
        stored = self._group["embeddings"].nbytes_stored()
        if self.dtype == "int8":
            stored += self._group["scales"].nbytes_stored()
        return raw, int(stored)

    def info(self) -> dict[str, Any]:
        raw, stored = self.nbytes_embeddings()
        return {
            "url": self.url,
            "shape": {
                "samples": self.shape.num_samples,
                "views": self.shape.num_views,
                "dim": self.shape.dim,
                "classes": self.shape.num_classes,
            },
            "dtype": self.dtype,
            "chunk_rows": self.chunk_rows,
            "sharding": self.meta.get("sharding"),
            "chunks": {"total": self.num_chunks, "done": int(self.done_chunks().sum())},
            "complete": self.complete,
            "bytes_stored": self.nbytes_stored(),
            # an incomplete store's ratio would count chunks not yet written as free
            "compression_ratio_vs_float32": raw / stored if stored and self.complete else None,
            "format": int(self.meta.get("format", 1)),
            "checksums": self.checksummed,
            **{key: self.meta.get(key) for key in ("teacher", "head", "dataset", "views", "created", "fsd_version")},
        }


def _has_head(group: zarr.Group) -> bool:
    return "head" in group and "weight" in group["head"]


def _num_classes(arrays: dict[str, Any], meta: dict[str, Any], group: zarr.Group) -> int:
    """The head's rows; for a head-less store the dataset's class count (recorded since head-less stores
    exist), else one more than the largest label."""
    if "head/weight" in arrays:
        return int(arrays["head/weight"].shape[0])
    recorded = (meta.get("dataset") or {}).get("num_classes")
    if recorded:
        return int(recorded)
    labels = np.asarray(group["labels"][:])
    return int(labels.max()) + 1 if labels.size else 0


def identity_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of the attributes that must match for a store to be resumed rather than refused."""
    return {
        "teacher": meta["teacher"].get("checkpoint_sha256"),
        "dataset": meta["dataset"].get("fingerprint"),
        "split": meta["dataset"].get("split"),
        "views": {k: meta["views"].get(k) for k in ("count", "kind", "seed", "policy")},
        "dtype": meta["dtype"],
        "chunk_rows": (meta.get("sharding") or {}).get("inner_chunk_rows", meta["chunk_rows"]),
    }


def store_exists(url: str) -> bool:
    local = local_path(url)
    if local is not None:
        return local.exists()
    try:
        zarr.open_group(_zarr_store(url), mode="r")
        return True
    except Exception:  # noqa: BLE001 - any failure to open means "nothing usable there"
        return False


def _open_group(url: str, mode: str) -> zarr.Group:
    local = local_path(url)
    if local is not None and not local.exists():
        raise InputNotFound(f"store {url} does not exist")
    try:
        group = zarr.open_group(_zarr_store(url), mode=mode)
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for "not a group"
        raise StoreError(f"{url} is not a Zarr feature store ({type(exc).__name__}: {exc})") from None
    if "fsd" not in group.attrs:  # a missing array is damage, named when the layout is checked
        raise StoreError(f"{url} is a Zarr group but not an fsd feature store (no fsd attributes)")
    fmt = group.attrs["fsd"].get("format")
    if fmt not in READABLE_FORMATS:
        readable = ", ".join(map(str, READABLE_FORMATS))
        raise StoreError(f"store {url} has format {fmt!r}; this fsd reads formats {readable}")
    return group


def open_store(
    url: str | Path, *, require_complete: bool = True, writable: bool = False, check: bool = True
) -> FeatureStore:
    """Open an existing store; refuse an incomplete one unless ``require_complete=False``.

    Every reader comes through here: the layout is always checked (:class:`FeatureStore`); with ``check`` the
    head, the labels and their digest are too (:class:`StoreDamaged` lists what is wrong). ``store verify``
    passes ``check=False`` and reports the same problems instead of stopping at the first."""
    url = str(url)
    store = FeatureStore(url, _open_group(url, "r+" if writable else "r"))
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
    """Delete a store — only something that is an fsd store (never an arbitrary directory)."""
    _open_group(url, "r")  # raises unless it really is an fsd store
    local = local_path(url)
    if local is not None:
        shutil.rmtree(local)
    else:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(path, recursive=True)


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

    ``meta`` carries the ``teacher``, ``head``, ``dataset`` and ``views`` attribute dicts; format, dtype,
    chunk_rows, creation time and version are added here. Refuses to replace anything that exists.

    ``chunk_rows`` is the zarr chunk. ``shard`` chunks are grouped into one shard file (default: the
    :func:`shard_factor` rule); when sharded, the unit of work recorded as ``chunk_rows`` in the
    attributes is the shard and ``sharding.inner_chunk_rows`` the chunk inside it.
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
    unit_rows = chunk_rows * factor
    # A local store is built under a hidden sibling name and renamed into place once its attributes are
    # written: a kill during creation leaves no half-made directory that neither resume nor --overwrite
    # would accept (only the hidden one, which nothing reads).
    local = local_path(url)
    building = None
    if local is not None:
        local = local.absolute()
        ensure_parent(local)
        building = local.with_name(f".{local.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        group = zarr.open_group(_zarr_store(str(building)) if building else _zarr_store(url), mode="w-")
        _initialise(group, shape, dtype, chunk_rows, factor, unit_rows, labels, head_weight, head_bias, meta)
        if building is not None:
            os.rename(building, local)  # fails if something appeared at the target meanwhile: nothing replaced
            group = zarr.open_group(_zarr_store(url), mode="r+")
    except OSError as exc:
        raise StoreError(f"cannot create store {url}: {exc.strerror or exc}") from None
    finally:
        if building is not None and building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return FeatureStore(url, group)


def _initialise(
    group: zarr.Group,
    shape: StoreShape,
    dtype: str,
    chunk_rows: int,
    factor: int,
    unit_rows: int,
    labels: np.ndarray,
    head_weight: np.ndarray | None,
    head_bias: np.ndarray | None,
    meta: dict[str, Any],
) -> None:
    """Arrays, labels, head and attributes of a new store (the attributes last)."""
    n, v, d = shape.num_samples, shape.num_views, shape.dim

    def layout(*rest: int) -> dict[str, Any]:
        if factor == 1:
            return {"chunks": (chunk_rows, *rest)}
        return {"chunks": (chunk_rows, *rest), "shards": (unit_rows, *rest)}

    group.create_array(
        "embeddings",
        shape=(n, v, d),
        **layout(v, d),
        dtype=codecs.STORAGE_DTYPE[dtype],
        compressors=_compressor(dtype),
        fill_value=0,
    )
    if dtype == "int8":
        group.create_array(
            "scales", shape=(n, v), **layout(v), dtype="float32", compressors=_compressor("float32"), fill_value=0
        )
    group.create_array("labels", shape=(n,), **layout(), dtype="int64", compressors=_compressor("int64"), fill_value=-1)
    group.create_array(
        "views",
        shape=(n, v, shape.num_params),
        **layout(v, shape.num_params),
        dtype="float32",
        compressors=_compressor("float32"),
        fill_value=0,
    )
    num_units = math.ceil(n / unit_rows)
    group.create_array(
        "progress/done",
        shape=(num_units,),
        chunks=(1,),
        dtype="bool",
        fill_value=False,
        compressors=(ZstdCodec(), Crc32cCodec()),
    )
    # one digest per unit of work, in its own file, so concurrent workers never rewrite each other's
    group.create_array(
        "progress/content",
        shape=(num_units, 32),
        chunks=(1, 32),
        dtype="uint8",
        fill_value=0,
        compressors=Crc32cCodec(),
    )
    if head_weight is not None:  # None: a head-less teacher (fsd store fit-head adds one later)
        write_head_arrays(group, head_weight, head_bias)
    labels = np.asarray(labels, dtype=np.int64)
    # every labels chunk gets its file (even all -1): a missing one is then damage, not "unknown labels"
    group["labels"].with_config({"write_empty_chunks": True})[...] = labels
    attrs = {
        "format": FORMAT_VERSION,
        "complete": False,
        **meta,
        "dtype": dtype,
        "chunk_rows": int(unit_rows),
        "labels_sha256": integrity.labels_digest(labels),
        "sharding": None if factor == 1 else {"inner_chunk_rows": int(chunk_rows), "chunks_per_shard": int(factor)},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fsd_version": fsd_version(),
    }
    json.dumps(attrs)  # fail here, not half-way, if something is not JSON
    group.attrs["fsd"] = attrs


def write_head_arrays(
    group: zarr.Group, weight: np.ndarray, bias: np.ndarray | None, name: str = "head", crc: bool = True
) -> None:
    """The classifier arrays ``name/weight`` (C, D) [and ``name/bias`` (C,)], float32, crc32c-checked
    (format 2; ``crc=False`` for a format-1 store)."""
    codec = Crc32cCodec() if crc else None
    group.create_array(f"{name}/weight", shape=weight.shape, dtype="float32", compressors=codec)
    group[f"{name}/weight"][...] = weight.astype(np.float32)
    if bias is not None:
        group.create_array(f"{name}/bias", shape=bias.shape, dtype="float32", compressors=codec)
        group[f"{name}/bias"][...] = bias.astype(np.float32)
