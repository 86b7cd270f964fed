"""Whole chunks read straight from their files, for local stores in fsd's plain layout.

zarr's read pipeline (async tasks, codec objects, an output array filled then copied into) costs about as
much again as reading and Blosc-decompressing a chunk file, and the stream reads every chunk every epoch
(figures in benchmarks/RESULTS.md). This reader decodes exactly the layout fsd writes — Zarr v3, one chunk
per unit of work along the rows, ``bytes`` (little-endian) then ``blosc`` then optionally ``crc32c`` — and
nothing else; every other store goes through zarr's public API (:mod:`featstore.store.reading`), and both
paths return the same arrays (tests/featstore/test_direct_read.py holds them bit for bit).

It depends on zarr-python's array objects beyond the on-disk format (``Array.metadata``, its chunk-key
encoding, ``Array.store_path``), so it is pinned to the zarr versions the tests run with:
:data:`TESTED_ZARR`. On any other zarr the reader is switched off with a warning naming the version, and
every read goes through zarr; the test suite fails on an untested zarr until the pin is widened.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import numcodecs.blosc
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from featstore import integrity
from featstore.errors import StoreError

TESTED_ZARR = ((3, 0), (3, 1))
"""zarr (major, minor) releases this reader is tested with."""
_BLOSC_HEADER = 16  # bytes: version, flags, typesize, then nbytes, blocksize, cbytes (little-endian uint32)
_warned: list[str] = []


def zarr_version() -> tuple[int, int]:
    """The installed zarr's (major, minor)."""
    major, minor = zarr.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def supported() -> bool:
    """Whether the installed zarr is one this reader is tested with; warns once when it is not."""
    if zarr_version() in TESTED_ZARR:
        return True
    if not _warned:
        _warned.append(zarr.__version__)
        warnings.warn(
            f"zarr {zarr.__version__} is not one fsd's direct chunk reader is tested with "
            f"({', '.join(f'{a}.{b}' for a, b in TESTED_ZARR)}): reading every chunk through zarr (slower)",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


class ChunkFiles:
    """Whole chunks of one local, unsharded ``[bytes, blosc(, crc32c)]`` array, read from their files.

    Where zarr would serve fill values for a chunk without a file, :meth:`read` returns None and the
    caller decides (the store reports damage for arrays written with every chunk).
    """

    def __init__(self, array: zarr.Array, root: Path, crc: bool) -> None:
        self._array = array
        self._root = root
        self._crc = crc
        self._dtype = np.dtype(array.dtype).newbyteorder("<")
        self._chunk_shape = tuple(int(x) for x in array.chunks)

    @classmethod
    def for_array(cls, array: zarr.Array, chunk_rows: int) -> ChunkFiles | None:
        """A reader when ``array`` has fsd's plain layout on a local file system and zarr is a tested one."""
        store = array.store_path.store
        meta = array.metadata
        if not isinstance(store, zarr.storage.LocalStore) or getattr(meta, "zarr_format", None) != 3:
            return None
        if not _plain(array, tuple(meta.codecs), chunk_rows) or not supported():
            return None
        return cls(array, Path(store.root) / array.store_path.path, len(meta.codecs) == 3)

    def _key(self, chunk: int) -> str:
        return self._array.metadata.encode_chunk_key((chunk,) + (0,) * (len(self._chunk_shape) - 1))

    def exists(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` has a file."""
        return (self._root / self._key(chunk)).is_file()

    def read(self, chunk: int, rows: int) -> np.ndarray | None:
        """The first ``rows`` rows of chunk ``chunk`` (edge chunks are stored full size).

        Returns None when the chunk has no file; a corrupt or truncated file raises.
        """
        key = self._key(chunk)
        try:
            data = (self._root / key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # zarr's LocalStore: "no chunk"
            return None
        if self._crc:  # the checksum zarr's crc32c codec appended, checked before decompressing
            data = integrity.check_crc(data, key)
        out = np.empty(self._chunk_shape, dtype=self._dtype)
        _check_frame(data, key, out.nbytes)
        numcodecs.blosc.decompress(data, out)
        return out[:rows].astype(self._dtype.newbyteorder("="), copy=False)


def _plain(array: zarr.Array, codecs_: tuple[Any, ...], chunk_rows: int) -> bool:
    """Whether ``array`` is unsharded, chunked by ``chunk_rows`` rows, and coded ``bytes, blosc(, crc32c)``."""
    return (
        array.shards is None
        and tuple(array.chunks) == (chunk_rows, *array.shape[1:])
        and len(codecs_) in (2, 3)
        and isinstance(codecs_[0], BytesCodec)
        and (codecs_[0].endian is None or codecs_[0].endian.value == "little")
        and isinstance(codecs_[1], BloscCodec)
        and (len(codecs_) == 2 or isinstance(codecs_[2], Crc32cCodec))
    )


def _check_frame(data: bytes, key: str, expected: int) -> None:
    """Blosc's frame header must match the file and the chunk: Blosc itself would read past a truncated buffer."""
    if len(data) < _BLOSC_HEADER:
        raise StoreError(f"chunk file {key} is {len(data)} bytes, too short for a Blosc frame")
    nbytes, _, cbytes = struct.unpack_from("<III", data, 4)
    if cbytes != len(data) or nbytes != expected:
        raise StoreError(
            f"chunk file {key}: Blosc frame of {cbytes} bytes ({nbytes} decoded) in a file of {len(data)} "
            f"bytes, expected {expected} decoded: truncated or corrupt"
        )
