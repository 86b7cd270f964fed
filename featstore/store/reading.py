"""How chunks are read: the direct chunk-file reader where it applies, zarr's public API everywhere else.

Every failure is reported per chunk and names the store, the array and the chunk, so one corrupt chunk
never hides its neighbours; a chunk file that :meth:`FeatureStore.write_chunk` always writes but that is
missing is damage (zarr alone would serve fill values); labels and view parameters are checked on every
read (integrity.chunk_problems).

The zarr path reads every (array, chunk) pair with zarr's synchronous public API, from a few threads at
once: zarr runs each read on its own event loop, so remote stores see concurrent requests, and no fsd code
needs zarr's private loop or a loop of its own (which would bind fsspec's async file systems to two loops).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from featstore import integrity
from featstore.errors import StoreDamaged, StoreError
from featstore.store.chunk_files import ChunkFiles
from featstore.store.layout import DECODE_THREADS

if TYPE_CHECKING:
    from featstore.store.facade import FeatureStore

ZARR_READ_THREADS = 8
"""Concurrent reads of one ``read_chunks_zarr`` call (each mostly waits for zarr's event loop or the store)."""
RawChunk = tuple[np.ndarray, "np.ndarray | None", np.ndarray, np.ndarray]
"""(stored embeddings as on disk, int8 scales or None, labels int64, view parameters float32)."""


class ChunkReader:
    """The read side of one open store: its row arrays opened once, and the direct readers when they apply."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        names = ["embeddings", "labels", "views"] + (["scales"] if store.dtype == "int8" else [])
        # looking an array up in the group re-reads its metadata: open each once
        self.arrays: dict[str, zarr.Array] = {name: store.group[name] for name in names}
        readers = {name: ChunkFiles.for_array(a, store.chunk_rows) for name, a in self.arrays.items()}
        self.direct: dict[str, ChunkFiles] | None = (
            None if any(r is None for r in readers.values()) else readers  # type: ignore[assignment]
        )

    # -- batched chunk reads ----------------------------------------------------------------------------
    def read_chunks(self, chunks: list[int]) -> list[RawChunk | Exception]:
        """For each chunk its raw parts, or the exception its read raised."""
        if self.direct is None:
            return self.read_chunks_zarr(chunks)
        if len(chunks) == 1 or DECODE_THREADS == 1:
            results = [self._read_direct(chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, len(chunks))) as pool:
                results = list(pool.map(self._read_direct, chunks))
        missing = [c for c, r in zip(chunks, results) if r is None]
        if missing:  # chunks whose labels are fill values (format 1): one zarr read for all of them
            from_zarr = iter(self.read_chunks_zarr(missing))
            results = [r if r is not None else next(from_zarr) for r in results]
        return results  # type: ignore[return-value]

    def _read_direct(self, chunk: int) -> RawChunk | Exception | None:
        """One chunk's parts from its files; the exception a corrupt file raised; None if labels are absent."""
        assert self.direct is not None
        start, stop = self._store.chunk_bounds(chunk)
        raw: dict[str, np.ndarray] = {}
        for name, reader in self.direct.items():
            try:
                part = reader.read(chunk, stop - start)
            except Exception as exc:  # noqa: BLE001 - reported per chunk, as zarr's own read failures are
                return self.read_error(name, chunk, exc)
            if part is None:
                if name in self._store.per_chunk_arrays():
                    return StoreError(self.missing_message(chunk, [name]))
                return None  # format 1 labels: all -1 (unknown) is a legitimate fill-value chunk
            raw[name] = part
        return self.validated(chunk, raw_parts(raw))

    def read_chunks_zarr(self, chunks: list[int]) -> list[RawChunk | Exception]:
        """The same through zarr's public API: every array of every chunk read concurrently."""
        names = list(self.arrays)
        tasks = [(name, chunk) for chunk in chunks for name in names]
        with ThreadPoolExecutor(max_workers=min(ZARR_READ_THREADS, len(tasks) or 1)) as pool:
            parts = dict(zip(tasks, pool.map(lambda task: self._read_one(*task), tasks)))
        results: list[RawChunk | Exception] = []
        for chunk in chunks:
            raw = {name: parts[name, chunk] for name in names}
            failed = next((p for p in raw.values() if isinstance(p, Exception)), None)
            results.append(failed if failed is not None else self.validated(chunk, raw_parts(raw)))
        return results

    def _read_one(self, name: str, chunk: int) -> np.ndarray | Exception:
        """One array's rows of one chunk, or the StoreError naming what failed."""
        try:
            return np.asarray(self.arrays[name][slice(*self._store.chunk_bounds(chunk))])
        except Exception as exc:  # noqa: BLE001 - named by array and chunk
            return self.read_error(name, chunk, exc)

    # -- rows of one array ------------------------------------------------------------------------------
    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of one array (all of it by default) through zarr.

        Any failure becomes a StoreError naming the array and the rows (zarr's crc32c codec raises
        ValueError on a checksum mismatch).
        """
        array = self.arrays[name] if name in self.arrays else self._store.group[name]
        try:
            return array[start:stop]
        except Exception as exc:  # noqa: BLE001 - blosc, checksum and I/O failures alike
            raise self.read_error(name, self._where(start, stop), exc) from None

    def _where(self, start: int | None, stop: int | None) -> int | str:
        """The chunk rows [start, stop) are exactly, else a description of the rows."""
        if start is None:
            return "a chunk"
        rows = self._store.chunk_rows
        if rows and start % rows == 0 and stop == self._store.chunk_bounds(start // rows)[1]:
            return start // rows
        return f"rows {start}-{stop}"

    # -- checks and messages ----------------------------------------------------------------------------
    def missing_files(self, chunk: int) -> list[str]:
        """Arrays whose file for ``chunk`` is absent although every chunk of them is written.

        Only the direct reader can tell (local stores in the plain layout); elsewhere zarr cannot tell a
        missing chunk from a fill-value one, and the answer is [].
        """
        if self.direct is None:
            return []
        return [n for n in self._store.per_chunk_arrays() if n in self.direct and not self.direct[n].exists(chunk)]

    def missing_message(self, chunk: int, names: list[str]) -> str:
        """Return the message for chunk ``chunk`` whose files of arrays ``names`` are missing."""
        return (
            f"chunk {chunk} of store {self._store.url}: its {', '.join(names)} chunk file is missing (zarr would "
            "read fill values); the store is incomplete or was damaged"
        )

    def read_error(self, name: str, chunk: int | str, exc: BaseException) -> StoreError:
        """One message for any failure to read a chunk, naming the store, the array and the chunk."""
        if isinstance(exc, StoreError):
            return exc
        what = f"chunk {chunk}" if isinstance(chunk, int) else chunk
        why = f"{type(exc).__name__}: {exc}"
        if "checksum" in str(exc).lower():  # zarr's crc32c codec, or integrity.check_crc on the direct path
            why = "checksum mismatch: the chunk file changed after it was written"
        return StoreError(
            f"store {self._store.url}: array {name}, {what} cannot be read ({why}); "
            "run `fsd store verify` and re-extract the store"
        )

    def validated(self, chunk: int, parts: RawChunk) -> RawChunk | StoreError:
        """A decoded chunk, or the StoreError its labels or view parameters earn (integrity.chunk_problems)."""
        problems = integrity.chunk_problems(parts[2], parts[3], self._store.shape.num_classes)
        if problems:
            return StoreDamaged(f"store {self._store.url}: chunk {chunk} is damaged: {'; '.join(problems)}", problems)
        return parts


def raw_parts(raw: dict[str, Any]) -> RawChunk:
    """The parts of one chunk in their reading dtypes."""
    scales = None if raw.get("scales") is None else np.asarray(raw["scales"], dtype=np.float32)
    return (
        np.asarray(raw["embeddings"]),
        scales,
        np.asarray(raw["labels"], dtype=np.int64),
        np.asarray(raw["views"], dtype=np.float32),
    )
