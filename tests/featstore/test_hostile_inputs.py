"""Hostile data, by class (docs/reliability.md): every case is one ``Error:`` line and exit 2, or the data
read correctly, within seconds (a timer fails a case that hangs), with the input folder unchanged and no
output left behind by a refusal.

1. bounded — nothing hangs or allocates without a bound: directory links to ``.``, a FIFO or a link to
   /dev/zero or a dangling link named ``*.png`` (with and without --skip-bad-samples), a 100 MB image file, an mxrec header
   claiming 4·10⁹ records, ``?size=999999``, ``--image-size 200000``;
2. correct data — 16-bit images (modes I;16, I;16B, I) render as their 8-bit twins in ``folder:`` and
   ``.bin``; a link loop does not multiply samples; an unreadable sub-folder is an error, or with
   --skip-bad-samples left out with a warning; an ``.idx`` listing a key twice is refused;
3. one line — numbers in mxrec files out of range (offsets past int64, non-ASCII digits, NaN/inf, a 10¹⁸
   label), decompression bombs in ``eval --bin`` and ``embed``, a Latin-1 landmarks file, coordinates
   near 1e200, image names that are not UTF-8;
6. right words — a class folder that cannot be listed says so; a landmark name with ``../`` is refused;
and the rough edges: --skip-bad-samples when sample 0 is the bad one, an mxrec set without a test split,
``?scale=`` of ``folder:`` views.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import signal
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from cli.main import cli
from featstore.datasets import load_dataset
from featstore.datasets.mxrec import pack_header, pack_record
from featstore.store import open_store

DEADLINE_S = 30  # generous for a loaded 2-core machine; a hang is caught, not waited for
SIZE = 16
PER_CLASS = 6


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the test if the block runs longer than ``seconds`` (a blocked open() of a FIFO
    is interrupted too)."""

    def fire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def invoke(*args: object) -> Result:
    with deadline(DEADLINE_S):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry below ``root``: regular files by content, links by target, other files by type (a FIFO
    is never opened)."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(info.st_mode):
                state[rel] = "-> " + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[rel] = f"mode {stat.S_IFMT(info.st_mode):o}"
    return state


def png(pixels: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buffer, fmt)
    return buffer.getvalue()


def write_tree(root: Path, per_class: int = PER_CLASS) -> Path:
    rng = np.random.default_rng(3)
    for cls in range(2):
        for k in range(per_class):
            path = root / "train" / f"c{cls}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)))
    return root


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header declaring side × side pixels, in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_records(directory: Path, payloads: list[bytes], idx: str | None = None) -> Path:
    """``train.rec`` of ``payloads`` (keys 0…) and its ``.idx`` (or the given ``.idx`` text)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines, offset, blob = [], 0, b""
    for key, payload in enumerate(payloads):
        packed = pack_record(payload)
        lines.append(f"{key}\t{offset}\n")
        blob += packed
        offset += len(packed)
    (directory / "train.rec").write_bytes(blob)
    (directory / "train.idx").write_text("".join(lines) if idx is None else idx, encoding="utf-8")
    return directory


def face_records(count: int = 4) -> list[bytes]:
    """insightface's layout for ``count`` images of 2 identities: header, images, identity records."""
    image = png(np.full((SIZE, SIZE, 3), 90, np.uint8))
    half = count // 2
    return (
        [pack_header(2, [count + 1, count + 3])]
        + [pack_header(0, float(i >= half), image, key=i + 1) for i in range(count)]
        + [pack_header(2, [1, half + 1]), pack_header(2, [half + 1, count + 1])]
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small teacher checkpoint trained on a 16 × 16 folder (RGB, so it also embeds faces)."""
    base = tmp_path_factory.mktemp("hostile_teacher")
    tree = write_tree(base / "imgs")
    out = base / "teacher.pt"
    args = ["--epochs", "1", "--device", "cpu", "--loader-workers", "0", "--eval-split", "none", "--quiet"]
    result = CliRunner().invoke(
        cli, ["train-teacher", "--dataset", f"folder:{tree}?size={SIZE}", "--out", str(out)] + args
    )
    assert result.exit_code == 0, result.output
    return out


@dataclass
class Case:
    """One hostile input: ``build(data_dir, teacher)`` makes it under ``data_dir`` and returns the fsd
    arguments (``{out}`` is replaced by an output path); ``error`` is a fragment of the expected one-line
    error (None: the command succeeds, then ``check(out)`` looks at what it wrote)."""

    build: Callable[[Path, Path], list[str]]
    error: str | None
    check: Callable[[Path, Result, list[str]], None] | None = None
    monkeypatch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    resumable: bool = False  # the error comes mid-extraction: an unfinished store may stay (the next run resumes)


def extract(dataset: str, *extra: str) -> list[str]:
    return ["extract-teacher", "--dataset", dataset, "--out", "{out}", "--loader-workers", "0", "--quiet", *extra]


def folder_case(mutate: Callable[[Path], None], *extra: str, query: str = f"?size={SIZE}") -> Callable:
    def build(data: Path, teacher: Path) -> list[str]:
        tree = write_tree(data / "imgs")
        mutate(tree)
        return [*extract(f"folder:{tree}{query}", *extra), "--teacher", str(teacher)]

    return build


def mxrec_case(payloads: Callable[[], list[bytes]], idx: str | None = None, query: str = f"?size={SIZE}") -> Callable:
    def build(data: Path, teacher: Path) -> list[str]:
        directory = write_records(data / "rec", payloads(), idx)
        return [*extract(f"mxrec:{directory}{query}"), "--teacher", str(teacher)]

    return build


def embed(images: Callable[[Path], None], landmarks: str | bytes | None = None) -> Callable:
    def build(data: Path, teacher: Path) -> list[str]:
        folder = data / "faces"
        folder.mkdir()
        (folder / "a.png").write_bytes(png(np.full((SIZE, SIZE, 3), 90, np.uint8)))
        images(folder)
        args = ["embed", "--model", str(teacher), "--images", str(folder), "--out", "{out}"]
        if landmarks is not None:
            path = data / "points.txt"
            path.write_bytes(landmarks if isinstance(landmarks, bytes) else landmarks.encode())
            args += ["--landmarks", str(path)]
        return args

    return build


POINTS = "38 51 73 51 56 71 41 92 70 92 0.9"


def run_case(case: Case, tmp_path: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, outputs = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    outputs.mkdir()
    args = [a.replace("{out}", str(outputs / "result")) for a in case.build(data, teacher)]
    if case.monkeypatch is not None:
        case.monkeypatch(monkeypatch, data)
    before = snapshot(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(*args)
    assert snapshot(data) == before, "the command changed its inputs"
    if case.error is None:
        assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
        if case.check is not None:
            case.check(outputs / "result", result, [str(w.message) for w in caught])
        return
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert case.error in lines[0], lines[0]
    if case.resumable and (outputs / "result").exists():
        assert not open_store(outputs / "result", require_complete=False).complete
    else:
        assert not any(outputs.iterdir()), "a refused command left an output behind"


def left_out(count: int) -> Callable[[Path, Result, list[str]], None]:
    def check(out: Path, result: Result, warned: list[str]) -> None:
        store = open_store(out)
        assert store.meta["dataset"]["left_out"]["count"] == count
        assert sum("left out (--skip-bad-samples)" in w for w in warned) == count, warned

    return check


def samples(count: int) -> Callable[[Path, Result, list[str]], None]:
    def check(out: Path, result: Result, warned: list[str]) -> None:
        assert open_store(out).meta["dataset"]["num_samples"] == count

    return check


def links_to_dot(tree: Path) -> None:
    for name in ("again", "more"):
        (tree / "train" / "c0" / name).symlink_to(".", target_is_directory=True)
    (tree / "train" / "c0" / "sub").mkdir()
    (tree / "train" / "c0" / "sub" / "up").symlink_to("..", target_is_directory=True)


def link_cycle(tree: Path) -> None:
    (tree / "train" / "c1" / "a").symlink_to("b")
    (tree / "train" / "c1" / "b").symlink_to("a")


def fifo(tree: Path) -> None:
    os.mkfifo(tree / "train" / "c0" / "0.png.tmp")
    os.replace(tree / "train" / "c0" / "0.png.tmp", tree / "train" / "c0" / "0.png")


def dev_zero(tree: Path) -> None:
    (tree / "train" / "c1" / "5.png").unlink()
    (tree / "train" / "c1" / "5.png").symlink_to("/dev/zero")


def dangling(tree: Path) -> None:
    (tree / "train" / "c1" / "5.png").unlink()
    (tree / "train" / "c1" / "5.png").symlink_to(tree / "gone.png")


def sparse_huge(tree: Path) -> None:
    with open(tree / "train" / "c1" / "2.png", "r+b") as handle:
        handle.truncate(100 << 20)


def huge_header() -> list[bytes]:
    return [pack_header(2, [4e9, 4e9 + 1])] + face_records()[1:]


CLASS1 = {
    "links to . do not loop": Case(folder_case(links_to_dot), None, samples(2 * PER_CLASS)),
    "links to each other": Case(folder_case(link_cycle), "Too many levels of symbolic links"),
    "links to each other, --skip-bad-samples": Case(
        folder_case(link_cycle, "--skip-bad-samples"), None, samples(2 * PER_CLASS)
    ),
    "FIFO named .png": Case(folder_case(fifo), "not a regular file (a FIFO)"),
    "FIFO named .png, --skip-bad-samples": Case(folder_case(fifo, "--skip-bad-samples"), None, left_out(1)),
    "link to /dev/zero named .png": Case(
        folder_case(dev_zero), "not a regular file (a character device)", resumable=True
    ),
    "link to /dev/zero, --skip-bad-samples": Case(folder_case(dev_zero, "--skip-bad-samples"), None, left_out(1)),
    "dangling link named .png": Case(folder_case(dangling), "5.png: No such file"),
    "dangling link, --skip-bad-samples": Case(folder_case(dangling, "--skip-bad-samples"), None, left_out(1)),
    "100 MB image file": Case(folder_case(sparse_huge), "over the 67108864-byte limit", resumable=True),
    "mxrec header claims 4e9 records": Case(mxrec_case(huge_header), "not an integer in 0…"),
    "folder ?size=999999": Case(folder_case(lambda t: None, query="?size=999999"), "size=999999 is out of range"),
    "mxrec ?size=999999": Case(mxrec_case(face_records, query="?size=999999"), "size=999999 is out of range"),
    "--image-size 200000": Case(folder_case(lambda t: None, "--image-size", "200000"), "image size must lie in"),
    "FIFO named .png in embed --images": Case(embed(lambda f: os.mkfifo(f / "b.png")), "not a regular file (a FIFO)"),
}


@pytest.mark.parametrize("name", list(CLASS1))
def test_class1_bounded(name, tmp_path, teacher, monkeypatch) -> None:
    run_case(CLASS1[name], tmp_path, teacher, monkeypatch)


# -- class 2: correct data --------------------------------------------------------------------------------

GREY = 128


def png16(color_type: int, channels: int, value: int) -> bytes:
    """A 16-bit PNG of one value in every channel, written by hand (Pillow writes 16-bit grey only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + struct.pack(">H", value) * channels * SIZE
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 16, color_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * SIZE)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def wide_images() -> dict[str, tuple[bytes, str]]:
    """A mid-grey image in each wide integer mode, with the mode Pillow opens it in (TIFF carries I;16B and
    I; Pillow reads by content, whatever the suffix)."""
    level = np.full((SIZE, SIZE), GREY * 257, np.uint16)
    return {
        "16-bit grey PNG": (png(level), "I;16"),
        "I;16B": (png(Image.frombytes("I;16B", (SIZE, SIZE), level.astype(">u2").tobytes()), "TIFF"), "I;16B"),
        "I": (png(Image.frombytes("I", (SIZE, SIZE), level.astype(np.int32).tobytes()), "TIFF"), "I"),
        "16-bit RGB PNG": (png16(2, 3, GREY * 257), "RGB"),
        "16-bit grey + alpha PNG": (png16(4, 2, GREY * 257), "RGBA"),
    }


@pytest.mark.parametrize("name", list(wide_images()))
def test_class2_wide_images_render_as_their_8bit_twins(name, tmp_path) -> None:
    from distill.evaluation.protocols.bin import BinSet, decode_images

    data, mode = wide_images()[name]
    assert Image.open(io.BytesIO(data)).mode == mode
    tree = write_tree(tmp_path / "imgs", per_class=1)
    (tree / "train" / "c0" / "0.png").write_bytes(data)
    (tree / "train" / "c1" / "0.png").write_bytes(png(np.full((SIZE, SIZE), GREY, np.uint8)))
    with deadline(DEADLINE_S):
        dataset = load_dataset(f"folder:{tree}?size={SIZE}")
        wide, eight_bit = dataset.get_images([0, 1])
    assert np.allclose(wide.numpy(), eight_bit.numpy())
    decoded = decode_images(BinSet("faces", [data], np.zeros(0, bool)), SIZE)
    assert decoded.shape == (1, 3, SIZE, SIZE) and (decoded == GREY).all()


def unreadable(relative: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """Make one folder unlistable (os.scandir refuses it: the tests run as root, where chmod 000 does not)."""

    def patch(monkeypatch: pytest.MonkeyPatch, data: Path) -> None:
        target, real = str(data / "imgs" / relative), os.scandir

        def scandir(path="."):
            if os.fspath(path) == target:
                raise PermissionError(13, "Permission denied", target)
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)

    return patch


def nested(tree: Path) -> None:
    sub = tree / "train" / "c0" / "sub"
    sub.mkdir()
    for k in range(3):
        (sub / f"{k}.png").write_bytes(png(np.full((20, 20, 3), k, np.uint8)))


def twice_listed() -> str:
    return "0\t0\n1\t40\n1\t40\n"


CLASS2 = {
    "link loop does not multiply samples": Case(folder_case(links_to_dot), None, samples(2 * PER_CLASS)),
    "unreadable sub-folder is an error": Case(
        folder_case(nested), "cannot list folder", monkeypatch=unreadable("train/c0/sub")
    ),
    "unreadable sub-folder, --skip-bad-samples": Case(
        folder_case(nested, "--skip-bad-samples"),
        None,
        lambda out, result, warned: (
            samples(2 * PER_CLASS)(out, result, warned),
            any("cannot be listed" in w for w in warned) or pytest.fail(str(warned)),
        ),
        unreadable("train/c0/sub"),
    ),
    "mxrec .idx lists a key twice": Case(mxrec_case(face_records, idx=twice_listed()), "lists record 1 a second time"),
}


@pytest.mark.parametrize("name", list(CLASS2))
def test_class2_correct_data(name, tmp_path, teacher, monkeypatch) -> None:
    run_case(CLASS2[name], tmp_path, teacher, monkeypatch)


# -- class 3: one line for every bad number or file ------------------------------------------------------


def idx_of(records: list[bytes], bad_line: str) -> str:
    offsets = np.cumsum([0] + [len(pack_record(p)) for p in records[:-1]])
    lines = [f"{k}\t{o}\n" for k, o in enumerate(offsets)]
    lines[1] = bad_line
    return "".join(lines)


def with_header(values: list[float]) -> Callable[[], list[bytes]]:
    return lambda: [pack_header(2, values)] + face_records()[1:]


def with_identity(values: list[float]) -> Callable[[], list[bytes]]:
    return lambda: face_records()[:-1] + [pack_header(2, values)]


def big_label() -> list[bytes]:
    image = png(np.full((SIZE, SIZE, 3), 90, np.uint8))
    return [pack_header(0, 0.0, image), pack_header(0, 1e18, image, key=1)]


def nan_image_label() -> list[bytes]:
    records = face_records()
    records[1] = pack_header(0, float("nan"), png(np.full((SIZE, SIZE, 3), 90, np.uint8)), key=1)
    return records


def bin_with_bomb(data: Path, teacher: Path) -> list[str]:
    image = png(np.full((SIZE, SIZE, 3), 90, np.uint8))
    images = [image] * 19 + [bomb_png()]
    (data / "faces.bin").write_bytes(pickle.dumps((images, [True, False] * 5), protocol=4))
    return ["eval", "--faiss", "--model", str(teacher), "--bin", str(data / "faces.bin"), "--out", "{out}"]


def bomb(folder: Path) -> None:
    (folder / "b.png").write_bytes(bomb_png())


def not_utf8_name(folder: Path) -> None:
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes((folder / "a.png").read_bytes())


CLASS3 = {
    ".idx offset past int64": Case(
        mxrec_case(face_records, idx=idx_of(face_records(), "1\t99999999999999999999\n")), "below 2^63"
    ),
    ".idx offset of 2^63": Case(mxrec_case(face_records, idx=idx_of(face_records(), f"1\t{1 << 63}\n")), "below 2^63"),
    ".idx non-ASCII digits": Case(mxrec_case(face_records, idx=idx_of(face_records(), "1\t١٢\n")), "not ASCII"),
    "NaN in the header record": Case(mxrec_case(with_header([float("nan"), 7.0])), "not an integer"),
    "inf in the header record": Case(mxrec_case(with_header([5.0, float("inf")])), "not an integer"),
    "NaN in an identity record": Case(mxrec_case(with_identity([float("nan"), 5.0])), "not an integer"),
    "inf in an identity record": Case(mxrec_case(with_identity([3.0, float("inf")])), "not an integer"),
    "a 1e18 label": Case(mxrec_case(big_label), "has label"),
    "NaN label of an image record": Case(mxrec_case(nan_image_label), "has label nan in its header"),
    "decompression bomb in eval --bin": Case(bin_with_bomb, "image 19 cannot be decoded"),
    "decompression bomb in embed": Case(embed(bomb), "pixels"),
    "landmarks in Latin-1": Case(embed(lambda f: None, ("caf\xe9.png " + POINTS).encode("latin-1")), "not UTF-8"),
    "coordinates near 1e200": Case(embed(lambda f: None, "a.png 1e200" + POINTS[2:]), "coordinate beyond"),
    "image name not UTF-8": Case(embed(not_utf8_name), "not UTF-8"),
}


@pytest.mark.parametrize("name", list(CLASS3))
def test_class3_one_error_line(name, tmp_path, teacher, monkeypatch) -> None:
    run_case(CLASS3[name], tmp_path, teacher, monkeypatch)


# -- class 6: the right words -----------------------------------------------------------------------------

CLASS6 = {
    "a class folder that cannot be listed says so": Case(
        folder_case(lambda t: None), "cannot list folder", monkeypatch=unreadable("train/c1")
    ),
    "a landmark name with ../": Case(embed(lambda f: None, "../outside.png " + POINTS), "not a path inside --images"),
    "an absolute landmark name": Case(embed(lambda f: None, "/etc/hostname " + POINTS), "not a path inside --images"),
}


@pytest.mark.parametrize("name", list(CLASS6))
def test_class6_right_words(name, tmp_path, teacher, monkeypatch) -> None:
    run_case(CLASS6[name], tmp_path, teacher, monkeypatch)


# -- rough edges -----------------------------------------------------------------------------------------


def bad_first(tree: Path) -> None:
    (tree / "train" / "c0" / "0.png").write_bytes(b"\x89PNG cut short")


def train_on_mxrec(data: Path, teacher: Path) -> list[str]:
    directory = write_records(data / "rec", face_records(6))
    common = ["--epochs", "1", "--device", "cpu", "--loader-workers", "0", "--batch-size", "3", "--quiet"]
    return ["train-teacher", "--dataset", f"mxrec:{directory}?size={SIZE}", "--out", "{out}", *common]


def no_test_split_warned(out: Path, result: Result, warned: list[str]) -> None:
    assert out.is_file()
    assert any("--eval-split none" in w and "test.rec not found" in w for w in warned), warned


def scale_recorded(out: Path, result: Result, warned: list[str]) -> None:
    assert open_store(out).meta["views"]["policy"]["scale"] == [0.08, 1.0]


ROUGH_EDGES = {
    "--skip-bad-samples when sample 0 is bad": Case(folder_case(bad_first, "--skip-bad-samples"), None, left_out(1)),
    "mxrec without a test split evaluates nothing": Case(train_on_mxrec, None, no_test_split_warned),
    "?scale=0.08,1 draws folder views": Case(
        folder_case(lambda t: None, "--views", "2", query=f"?size={SIZE}&scale=0.08,1"), None, scale_recorded
    ),
}


@pytest.mark.parametrize("name", list(ROUGH_EDGES))
def test_rough_edges(name, tmp_path, teacher, monkeypatch) -> None:
    run_case(ROUGH_EDGES[name], tmp_path, teacher, monkeypatch)
