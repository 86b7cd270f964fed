"""``mxrec:DIR[?size=S]``: insightface's face sets as MXNet RecordIO (``train.rec`` + ``train.idx``), no mxnet.

The byte layout (dmlc-core's RecordIO, MXNet's ``recordio.pack``), read here with plain Python:

* a record is ``uint32 magic 0xced7230a``, ``uint32 lrec`` (upper 3 bits ``cflag``, lower 29 the length),
  the payload, then zero padding to a multiple of 4 bytes; ``cflag`` 0 is a whole record, 1/2/3 the first /
  middle / last part of a record the writer split where its payload held the magic word at an aligned
  position (the reader joins the parts with the magic word between them);
* the ``.idx`` file is text, one ``key<TAB>byte offset`` line per record: random access without a scan;
* a payload starts with an ``IRHeader`` — ``uint32 flag, float32 label, uint64 id, uint64 id2`` (24 bytes,
  little-endian) — followed, when ``flag`` > 0, by ``flag`` float32 labels, then the encoded image (JPEG);
* insightface's record 0 is a header record whose two labels are (first identity record, end of identity
  records): images are records 1 … first−1, and identity record k holds the [start, end) range of the
  images of class k − first. Labels come from those ranges (one read per identity, not per image); each
  image record's own header label is checked against them when the image is read.

Without a header record (``flag`` 0 in record 0) every record is an image and the labels are read from
every record's header once. The split is ``DIR/<split>.rec`` + ``DIR/<split>.idx`` (insightface ships only
``train``; a missing split is :class:`~featstore.datasets.base.SplitNotFound`, which training turns into "no
evaluation"). Views: aligned faces, so view 0 is the whole image and the other views are horizontal flips of
it (no crop), rendered at ``size`` × ``size`` (default 112, or ``--image-size``), normalised with mean 0.5
and std 0.5 as insightface does. The fingerprint is the index's: record keys, record byte sizes and labels.

Every number read from the files is checked before it is used: ``.idx`` keys and offsets are ASCII digits
below 2⁶³, each key listed once and every offset inside the ``.rec``; the header record's range cannot
claim more records than the ``.idx`` lists; header and identity labels must be finite integers, a class
index below :data:`MAX_CLASSES` (float32 labels are exact integers up to 2²⁴ only). A file that breaks
one is one :class:`~featstore.errors.InvalidInput` naming the file and record.

:func:`write_mxrec` writes a pair in exactly this layout (what the tests use, and a way to pack a folder).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from featstore.atomic import atomic_path
from featstore.datasets.base import DATASETS, MAX_IMAGE_SIZE, SplitNotFound, directory_of
from featstore.datasets.files import MAX_SAMPLE_BYTES
from featstore.datasets.lazy import BadSample, LazyImageDataset
from featstore.errors import InvalidInput
from featstore.spec_query import SpecQuery
from featstore.views import ORIGINAL, ViewPolicy

MAGIC = 0xCED7230A
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)
MXREC_OPTIONS = ("size",)
MAX_CLASSES = 1 << 24
"""Labels are float32 in RecordIO headers, exact integers only below 2²⁴: the bound of a class index."""
_IDX_LINE = re.compile(r"([0-9]{1,19})\t([0-9]{1,19})")


def _whole(value: float, where: str, what: str, high: int = MAX_CLASSES) -> int:
    """Return a float32 header value that must be an integer in [0, high); anything else is invalid input."""
    if not (np.isfinite(value) and float(value).is_integer() and 0 <= value < high):
        raise InvalidInput(f"mxrec: {where} has {what} {value!r}, not an integer in 0…{high - 1}")
    return int(value)


class RecordFile:
    """Random access to the records of one ``.rec`` through the offsets of its ``.idx``.

    The open file handle is per process (a pickled copy in a loader worker opens its own).

    Args:
        rec: the ``.rec`` file.
        offsets: ``{key: byte offset}`` from its ``.idx`` (:func:`read_idx`).

    Raises:
        InvalidInput: an offset points past the end of the file.
    """

    def __init__(self, rec: Path, offsets: dict[int, int]) -> None:
        self.rec, self.offsets = rec, offsets
        self.file_size = rec.stat().st_size
        last = max(offsets.values(), default=0)
        if last + 8 > self.file_size:
            raise InvalidInput(
                f"mxrec: {rec} is truncated: its .idx points at byte {last}, the file has {self.file_size}"
            )
        self._handle = None
        self._pid = -1

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = open(self.rec, "rb"), os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def read(self, key: int) -> bytes:
        """Read the payload of record ``key``, joining the parts of a multi-part record.

        Args:
            key: the record's key in the ``.idx``.

        Returns:
            The payload (IRHeader, labels, image bytes).

        Raises:
            BadSample: the key is not listed, or the record is cut short, too large or malformed.
        """
        if key not in self.offsets:
            raise BadSample(f"mxrec: {self.rec} has no record {key} in its .idx")
        f = self._file()
        f.seek(self.offsets[key])
        parts: list[bytes] = []
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise BadSample(f"mxrec: record {key} of {self.rec} is truncated (file ends inside it)")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise BadSample(f"mxrec: record {key} of {self.rec} does not start with the RecordIO magic")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            if length + sum(map(len, parts)) > MAX_SAMPLE_BYTES:
                raise BadSample(f"mxrec: record {key} of {self.rec} is over {MAX_SAMPLE_BYTES} bytes")
            data = f.read(length)
            if len(data) < length:
                raise BadSample(f"mxrec: record {key} of {self.rec} is truncated (file ends inside it)")
            parts.append(data)
            if cflag in (0, 3):
                break
            if cflag not in (1, 2) or (cflag == 1 and len(parts) > 1):
                raise BadSample(f"mxrec: record {key} of {self.rec} has a broken multi-part flag {cflag}")
        f.seek((4 - length % 4) % 4, os.SEEK_CUR)
        return struct.pack("<I", MAGIC).join(parts)


def unpack_header(payload: bytes, where: str) -> tuple[int, np.ndarray, bytes]:
    """Split one record payload into its IRHeader's flag and labels and the image bytes.

    Args:
        payload: a record's payload.
        where: the record, for the messages.

    Returns:
        The flag, the labels float32 (max(flag, 1),) and the image bytes.

    Raises:
        BadSample: the payload is too short for its header or its labels.
    """
    if len(payload) < IR_SIZE:
        raise BadSample(f"mxrec: {where} is too short for an IRHeader ({len(payload)} bytes)")
    flag, label, _, _ = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    if flag == 0:
        return 0, np.array([label], np.float32), payload[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(payload) < end:
        raise BadSample(f"mxrec: {where} declares {flag} labels but is too short for them")
    return flag, np.frombuffer(payload[IR_SIZE:end], dtype="<f4").astype(np.float32), payload[end:]


def read_idx(path: Path) -> dict[int, int]:
    """Read an ``.idx`` file of ``key<TAB>offset`` lines.

    Args:
        path: the ``.idx`` file.

    Returns:
        ``{key: byte offset}``.

    Raises:
        InvalidInput: the file cannot be read, is not ASCII, lists nothing, or has a malformed,
            out-of-range, repeated or cut-off line (the message names it).
    """
    offsets: dict[int, int] = {}
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as err:
        raise InvalidInput(
            f"mxrec: {path} is not ASCII text (byte {err.start}); expected 'key<TAB>offset' lines"
        ) from None
    except OSError as err:
        raise InvalidInput(f"mxrec: cannot read {path}: {err.strerror or err}") from None
    if text and not text.endswith("\n"):
        raise InvalidInput(f"mxrec: {path} is truncated (its last line has no end)")
    for number, line in enumerate(text.split("\n")[:-1], 1):
        match = _IDX_LINE.fullmatch(line.strip(" \r"))
        if match is None or max(int(match[1]), int(match[2])) >= 1 << 63:
            raise InvalidInput(f"mxrec: {path} line {number} is not 'key<TAB>offset' below 2^63: {line[:60]!r}")
        key = int(match[1])
        if key in offsets:
            raise InvalidInput(f"mxrec: {path} line {number} lists record {key} a second time")
        offsets[key] = int(match[2])
    if not offsets:
        raise InvalidInput(f"mxrec: {path} lists no records")
    return offsets


class MXRecDataset(LazyImageDataset):
    """One ``.rec``/``.idx`` pair; ``keys`` are the image records' keys (as text, for the fingerprint).

    Args:
        records: the ``.rec`` file.
        record_keys: the image records' keys, one per row.
        **kwargs: the fields of :class:`~featstore.datasets.lazy.LazyImageDataset`.
    """

    name = "mxrec"

    def __init__(self, records: RecordFile, record_keys: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.records, self.record_keys = records, record_keys

    def where(self, row: int) -> str:
        """Name sample ``row``'s record and file, for messages."""
        return f"record {int(self.record_keys[row])} of {self.records.rec}"

    def read_bytes(self, row: int) -> bytes:
        """Read sample ``row``'s record payload (IRHeader + image).

        Raises:
            BadSample: the record is unreadable, or its header label is not the index's label.
        """
        payload = self.records.read(int(self.record_keys[row]))
        _, labels, _ = unpack_header(payload, self.where(row))
        if not labels[0] == self.labels[row]:  # NaN included
            raise BadSample(
                f"mxrec: {self.where(row)} has label {labels[0]:g} in its header, but its identity range "
                f"gives {int(self.labels[row])}"
            )
        return payload

    def decode(self, row: int, data: bytes):
        """Decode the image after the payload's IRHeader."""
        return super().decode(row, unpack_header(data, self.where(row))[2])

    def _size_of(self, row: int, data: bytes) -> tuple[int, int]:
        return super()._size_of(row, unpack_header(data, self.where(row))[2])


def _record_index(records: RecordFile) -> tuple[np.ndarray, np.ndarray, int]:
    """Index the image records: their keys, labels and the number of classes.

    The labels come from the header record's identity ranges when there is one, else from every record's
    header.
    """
    where0 = f"record 0 of {records.rec}"
    flag, head, _ = unpack_header(records.read(0), where0) if 0 in records.offsets else (0, np.zeros(1), b"")
    if flag >= 2 and 0 in records.offsets:
        bound = len(records.offsets) + 1
        first, stop = (_whole(v, where0, "a record number", bound) for v in head[:2])
        missing = [k for k in range(1, stop) if k not in records.offsets] if first <= stop else []
        if first < 1 or stop < first or missing:
            raise InvalidInput(
                f"mxrec: {where0} says images 1…{first - 1} and identities {first}…{stop - 1}, but "
                f"{records.rec.with_suffix('.idx')} lacks {len(missing)} of those records (truncated?)"
            )
        labels = np.full(first - 1, -1, dtype=np.int64)
        for cls, key in enumerate(range(first, stop)):
            where = f"identity record {key} of {records.rec}"
            _, span, _ = unpack_header(records.read(key), where)
            start, end = (_whole(v, where, "an image number", first + 1) for v in (span[0], span[-1]))
            if not 1 <= start <= end <= first:
                raise InvalidInput(f"mxrec: identity record {key} of {records.rec} has a bad image range {start}…{end}")
            labels[start - 1 : end - 1] = cls
        if (labels < 0).any():
            raise InvalidInput(f"mxrec: image record {int(np.argmax(labels < 0)) + 1} belongs to no identity range")
        return np.arange(1, first, dtype=np.int64), labels, stop - first
    keys = np.array(sorted(records.offsets), dtype=np.int64)
    labels = np.array(
        [
            _whole(unpack_header(records.read(int(k)), f"record {k}")[1][0], f"record {k} of {records.rec}", "label")
            for k in keys
        ],
        np.int64,
    )
    return keys, labels, int(labels.max()) + 1


def _record_sizes(records: RecordFile, keys: np.ndarray) -> np.ndarray:
    """Return the bytes each record takes, from the offsets (the next record's offset, or the file's end)."""
    ordered = np.array(sorted(records.offsets.values()) + [records.file_size], dtype=np.int64)
    if ordered[-2] + 8 > records.file_size:
        raise InvalidInput(f"mxrec: {records.rec} is truncated: its .idx points past its end")
    starts = np.array([records.offsets[int(k)] for k in keys], dtype=np.int64)
    return ordered[np.searchsorted(ordered, starts, side="right")] - starts


@DATASETS.register("mxrec")
def _mxrec(spec: str, argument: str, split: str, image_size: tuple[int, int] | None = None) -> MXRecDataset:
    """Build ``mxrec:DIR[?size=S]``: DIR/<split>.rec + DIR/<split>.idx (see the module docstring)."""
    directory, query = SpecQuery.split(argument, spec, MXREC_OPTIONS, what="dataset spec")
    size = query.int("size", 112, low=1, high=MAX_IMAGE_SIZE)  # checked even when --image-size overrides it
    rendered = image_size or (size, size)
    root = directory_of(directory, spec, "mxrec")
    rec, idx = root / f"{split}.rec", root / f"{split}.idx"
    for needed in (rec, idx):
        if not needed.is_file():
            raise SplitNotFound(f"mxrec: {needed} not found (expected {split}.rec and {split}.idx in {root})")
    records = RecordFile(rec, read_idx(idx))
    keys, labels, num_classes = _record_index(records)
    if not len(keys):
        raise InvalidInput(f"mxrec: {rec} holds no image records")
    return MXRecDataset(
        records,
        keys,
        spec=spec,
        split=split,
        keys=[str(int(k)) for k in keys],
        sizes=_record_sizes(records, keys),
        labels=labels,
        num_classes=num_classes,
        image_size=rendered,
        view_policy=ViewPolicy(kind=ORIGINAL, flip_p=0.5, scale=(1.0, 1.0), ratio=(1.0, 1.0), crop_fraction=None),
        mean=FACE_MEAN,
        std=FACE_STD,
    )


# -- writing ----------------------------------------------------------------------------------------------


def pack_record(payload: bytes) -> bytes:
    """Pack one payload as RecordIO bytes, split where it holds the magic word at an aligned offset.

    This is dmlc-core's layout, which :meth:`RecordFile.read` joins back.

    Args:
        payload: the record's payload.

    Returns:
        The record's bytes, padded to a multiple of 4.
    """
    magic = struct.pack("<I", MAGIC)
    out, start = [], 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i : i + 4] == magic:
            out += [magic, struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start)), payload[start:i]]
            start = i + 4
    tail = len(payload) - start
    out += [magic, struct.pack("<I", ((3 if start else 0) << 29) | tail), payload[start:], b"\0" * ((4 - tail % 4) % 4)]
    return b"".join(out)


def pack_header(flag: int, label: float | list[float], payload: bytes = b"", key: int = 0) -> bytes:
    """Lay out an IRHeader (+ ``flag`` float32 labels) and a payload, as ``mxnet.recordio.pack`` does.

    Args:
        flag: the header's flag for a single label (a list of labels sets it to their count).
        label: one label, or a list of float32 labels that follow the header.
        payload: the encoded image (empty for header and identity records).
        key: the header's id.

    Returns:
        The record payload.
    """
    if isinstance(label, (list, tuple, np.ndarray)):
        values = np.asarray(label, dtype="<f4")
        return struct.pack(IR_FORMAT, len(values), 0.0, key, 0) + values.tobytes() + payload
    return struct.pack(IR_FORMAT, flag, float(label), key, 0) + payload


def write_mxrec(directory: Path, samples: Iterable[tuple[bytes, int]], split: str = "train") -> int:
    """Write ``<split>.rec`` + ``<split>.idx`` in insightface's layout.

    Header record 0, image records 1…n, then one identity record per class with its image range. Each file
    is written atomically.

    Args:
        directory: where the files go (created if missing).
        samples: ``(encoded image, label)`` pairs sorted by label, classes 0…C−1 each non-empty.
        split: the files' stem.

    Returns:
        The number of images.

    Raises:
        InvalidInput: the samples are not sorted by label or a class is missing.
    """
    samples = list(samples)
    labels = [int(label) for _, label in samples]
    if labels != sorted(labels) or (labels and sorted(set(labels)) != list(range(labels[-1] + 1))):
        raise InvalidInput("write_mxrec: samples must be sorted by label, classes 0…C-1 each present")
    n, classes = len(samples), (labels[-1] + 1 if labels else 0)
    records = [pack_header(2, [n + 1, n + 1 + classes])]
    records += [pack_header(0, label, image, key=i + 1) for i, (image, label) in enumerate(samples)]
    for cls in range(classes):
        start = labels.index(cls) + 1
        records.append(pack_header(2, [start, start + labels.count(cls)], key=n + 1 + cls))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines, offset = [], 0
    with atomic_path(directory / f"{split}.rec") as tmp, open(tmp, "wb") as f:
        for key, payload in enumerate(records):
            packed = pack_record(payload)
            lines.append(f"{key}\t{offset}\n")
            f.write(packed)
            offset += len(packed)
    with atomic_path(directory / f"{split}.idx") as tmp:
        Path(tmp).write_text("".join(lines))
    return n


__all__ = ["MAGIC", "MXRecDataset", "RecordFile", "pack_header", "pack_record", "unpack_header", "write_mxrec"]
