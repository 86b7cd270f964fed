"""Tests for ``mxrec:DIR``: a RecordIO pair written by the test itself in the official byte layout (struct by
hand, not through fsd's writer, for the reader test), fsd's writer checked byte for byte against it, labels
from the identity ranges, multi-part records, flip-only views, and the bad-data errors."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore.datasets import LoadOptions, load_dataset
from featstore.datasets.lazy import BadSample
from featstore.datasets.mxrec import MAGIC, pack_record, write_mxrec
from featstore.errors import InputNotFound, InvalidInput
from featstore.loader import identity_batches
from featstore.views import sample_views

LABELS = [0, 0, 0, 1, 1, 2]


def jpeg(seed: int, size: tuple[int, int] = (20, 20)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def by_hand(directory: Path, images: list[bytes], labels: list[int]) -> None:
    """train.rec/train.idx as insightface's MXNet tools lay them out, with struct and nothing else."""
    n, classes = len(images), max(labels) + 1

    def record(payload: bytes) -> bytes:  # a single-part record: magic, lrec (cflag 0), data, padding
        return struct.pack("<II", MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)

    def header(flag: int, label: float, key: int) -> bytes:
        return struct.pack("<IfQQ", flag, label, key, 0)

    payloads = [header(2, 0.0, 0) + struct.pack("<2f", n + 1, n + 1 + classes)]
    payloads += [header(0, float(lab), i + 1) + img for i, (img, lab) in enumerate(zip(images, labels))]
    for cls in range(classes):
        start = labels.index(cls) + 1
        payloads.append(header(2, 0.0, n + 1 + cls) + struct.pack("<2f", start, start + labels.count(cls)))
    directory.mkdir(parents=True, exist_ok=True)
    offset, lines = 0, []
    with open(directory / "train.rec", "wb") as f:
        for key, payload in enumerate(payloads):
            lines.append(f"{key}\t{offset}\n")
            offset += f.write(record(payload))
    (directory / "train.idx").write_text("".join(lines))


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [jpeg(seed, (20 + 4 * seed, 20)) for seed in range(len(LABELS))]


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory, images) -> Path:
    directory = tmp_path_factory.mktemp("rec")
    by_hand(directory, images, LABELS)
    return directory


def test_writer_matches_the_official_layout(tmp_path, rec_dir, images) -> None:
    assert write_mxrec(tmp_path / "w", zip(images, LABELS)) == len(images)
    assert (tmp_path / "w" / "train.rec").read_bytes() == (rec_dir / "train.rec").read_bytes()
    assert (tmp_path / "w" / "train.idx").read_text() == (rec_dir / "train.idx").read_text()


def test_reader_labels_sizes_and_pixels(rec_dir, images) -> None:
    ds = load_dataset(f"mxrec:{rec_dir}?size=16", options=LoadOptions(workers=0))
    assert ds.lazy and len(ds) == 6 and ds.num_classes == 3 and ds.image_shape == (3, 16, 16)
    np.testing.assert_array_equal(ds.labels, LABELS)
    assert ds.keys == ["1", "2", "3", "4", "5", "6"]
    np.testing.assert_array_equal(ds.sizes, [8 + 24 + len(b) + (-(24 + len(b)) % 4) for b in images])
    np.testing.assert_array_equal(ds.source_sizes(np.arange(6)), [[20, 20 + 4 * k] for k in range(6)])
    # view 0 is the whole (aligned) face resized to 16 × 16, normalised with mean = std = 0.5
    face = Image.open(io.BytesIO(images[3])).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
    expected = (np.asarray(face, np.float32) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(ds.get_images([3])[0].numpy(), expected.transpose(2, 0, 1), atol=1e-6)
    # other views are flips of the whole image, never crops
    views = sample_views(ds.view_policy, 0, np.arange(6), 8, ds.source_sizes(np.arange(6)))
    np.testing.assert_array_equal(views[..., :4], np.broadcast_to([0, 0, 1, 1], (6, 8, 4)))
    assert set(np.unique(views[:, 1:, 4])) == {0.0, 1.0}
    flipped = ds.render(np.array([3]), np.array([[0, 0, 1, 1, 1]], np.float32))
    np.testing.assert_allclose(flipped[0].numpy(), expected.transpose(2, 0, 1)[..., ::-1], atol=1e-6)
    assert load_dataset(f"mxrec:{rec_dir}").image_shape == (3, 112, 112)


def test_multi_part_record_round_trips() -> None:
    """A payload holding the magic word at an aligned offset is split (cflag 1/3) and joined back."""
    payload = b"abcd" + struct.pack("<I", MAGIC) + b"efgh!"
    packed = pack_record(payload)
    first = struct.unpack("<II", packed[:8])
    assert first == (MAGIC, (1 << 29) | 4)
    second = struct.unpack("<II", packed[12:20])
    assert second == (MAGIC, (3 << 29) | 5)
    assert len(packed) % 4 == 0


def test_multi_part_record_is_read(tmp_path, images) -> None:
    tricky = images[0] + struct.pack("<I", MAGIC) * 3  # JPEG decoders ignore trailing bytes
    write_mxrec(tmp_path, zip([tricky, images[1]], [0, 1]))
    ds = load_dataset(f"mxrec:{tmp_path}?size=8", options=LoadOptions(workers=0))
    assert ds.read_bytes(0).endswith(struct.pack("<I", MAGIC) * 3)
    assert ds.get_images([0, 1]).shape == (2, 3, 8, 8)


def test_fingerprint_from_the_index(tmp_path, rec_dir, images) -> None:
    a = load_dataset(f"mxrec:{rec_dir}")
    write_mxrec(tmp_path / "copy", zip(images, LABELS))
    assert load_dataset(f"mxrec:{tmp_path / 'copy'}?size=64").fingerprint() == a.fingerprint()
    write_mxrec(tmp_path / "other", zip(images, [0, 0, 1, 1, 1, 2]))
    assert load_dataset(f"mxrec:{tmp_path / 'other'}").fingerprint() != a.fingerprint()


def test_bad_data(tmp_path, rec_dir, images) -> None:
    with pytest.raises(InputNotFound, match="train.idx"):
        (tmp_path / "only_rec").mkdir()
        (tmp_path / "only_rec" / "train.rec").write_bytes(b"")
        load_dataset(f"mxrec:{tmp_path / 'only_rec'}")
    with pytest.raises(InputNotFound, match="test.rec"):
        load_dataset(f"mxrec:{rec_dir}", "test")
    # a truncated .idx (cut mid-line) and a .rec cut short
    cut = tmp_path / "cut_idx"
    write_mxrec(cut, zip(images, LABELS))
    (cut / "train.idx").write_text((cut / "train.idx").read_text()[:-3])
    with pytest.raises(InvalidInput, match="truncated"):
        load_dataset(f"mxrec:{cut}")
    short = tmp_path / "short_rec"
    write_mxrec(short, zip(images, LABELS))
    data = (short / "train.rec").read_bytes()
    (short / "train.rec").write_bytes(data[: len(data) - 30])
    with pytest.raises(InvalidInput, match="truncated|past its end"):
        load_dataset(f"mxrec:{short}")
    # an image record whose header label disagrees with its identity range
    wrong = tmp_path / "wrong_label"
    by_hand(wrong, images, LABELS)
    rec = bytearray((wrong / "train.rec").read_bytes())
    offset = int((wrong / "train.idx").read_text().splitlines()[2].split("\t")[1])
    rec[offset + 8 + 4 : offset + 8 + 8] = struct.pack("<f", 7.0)
    (wrong / "train.rec").write_bytes(bytes(rec))
    ds = load_dataset(f"mxrec:{wrong}", options=LoadOptions(workers=0))
    with pytest.raises(BadSample, match=r"record 2 of .* has label 7"):
        list(identity_batches(ds, np.arange(6), 6))
    # a corrupt JPEG names its record
    bad = tmp_path / "bad_jpeg"
    write_mxrec(bad, zip([images[0], b"not a jpeg at all", *images[2:]], LABELS))
    ds = load_dataset(f"mxrec:{bad}", options=LoadOptions(workers=0))
    with pytest.raises(BadSample, match=r"cannot read image record 2 of"):
        list(identity_batches(ds, np.arange(6), 6))
    with pytest.raises(InvalidInput, match="sorted by label"):
        write_mxrec(tmp_path / "unsorted", zip(images[:2], [1, 0]))
