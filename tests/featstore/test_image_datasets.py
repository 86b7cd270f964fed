"""Tests for featstore.datasets.images on tiny fake data built in tmp_path: ``cifar100:DIR`` (pickles shaped like
cifar-100-python) and ``folder:DIR`` (PNGs written with Pillow) — shapes, exact pixel values, label order,
options, fingerprints, errors — and one extraction whose stored views re-render to the teacher's pixels."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.models import create_model
from featstore.datasets import DATASETS, load_dataset
from featstore.datasets.images import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DirImageDataset,
    folder_memory_bytes,
    parse_folder_argument,
)
from featstore.errors import FsdError, InputNotFound, InvalidInput
from featstore.extract import TeacherSource, extract_teacher
from featstore.store import open_store
from featstore.views import render_views, sample_views

CLASSES = ("cat", "ant", "bee")  # written unsorted on purpose: labels follow sorted order ant, bee, cat
SIZES = ((40, 50), (64, 36), (33, 33), (20, 90))  # (width, height) of the 4 images of each class


# ------------------------------------------------------------------------------------------------ fakes


def write_cifar(root: Path, n_train: int = 20, n_test: int = 10, meta: bool = True, seed: int = 0) -> Path:
    """A cifar-100-python lookalike: dicts with bytes keys, uint8 (N, 3072) data and list fine_labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        content = {
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"fine_labels": [int(x) for x in rng.integers(0, 100, size=n)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, size=n)],
        }
        (root / split).write_bytes(pickle.dumps(content, protocol=2))
    if meta:
        names = {
            b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        }
        (root / "meta").write_bytes(pickle.dumps(names, protocol=2))
    return root


def read_cifar(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def random_png(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_folder(root: Path, test: bool = True) -> Path:
    """3 classes × 4 PNGs of different sizes in train; 2 PNGs per class in test."""
    seed = 0
    for cls in CLASSES:
        for k, size in enumerate(SIZES):
            random_png(root / "train" / cls / f"img{3 - k}.png", size, seed)  # names reversed vs. sizes
            seed += 1
        if test:
            for k in range(2):
                random_png(root / "test" / cls / f"t{k}.PNG", SIZES[k], seed)
                seed += 1
    return root


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-100-python")


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "imgs")


@pytest.fixture(scope="module")
def folder_train(folder_dir) -> DirImageDataset:
    return load_dataset(f"folder:{folder_dir}", "train")


# --------------------------------------------------------------------------------------------- cifar100


def test_registered() -> None:
    assert {"cifar100", "folder", "digits"} <= set(DATASETS.names())


def test_cifar_shapes_labels_policy(cifar_dir) -> None:
    train = load_dataset(f"cifar100:{cifar_dir}", "train")
    test = load_dataset(f"cifar100:{cifar_dir}", "test")
    assert isinstance(train, DirImageDataset)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.num_classes == test.num_classes == 100
    assert train.spec == f"cifar100:{cifar_dir}" and train.split == "train" and test.split == "test"
    np.testing.assert_array_equal(train.labels, read_cifar(cifar_dir / "train")[b"fine_labels"])
    np.testing.assert_array_equal(test.labels, read_cifar(cifar_dir / "test")[b"fine_labels"])
    p = train.view_policy
    assert (p.kind, p.source_size, p.pad, p.flip_p) == ("shift", (32, 32), 4, 0.5)
    assert train.class_names == tuple(f"class{i}" for i in range(100))


def test_cifar_normalisation_by_hand(cifar_dir) -> None:
    train = load_dataset(f"cifar100:{cifar_dir}", "train")
    data = read_cifar(cifar_dir / "train")[b"data"]
    # Sample 7, channel c, row 5, column 9: byte c*1024 + 5*32 + 9 of its row.
    for c in range(3):
        raw = int(data[7, c * 1024 + 5 * 32 + 9])
        expected = (raw / 255.0 - CIFAR100_MEAN[c]) / CIFAR100_STD[c]
        assert train.images[7, c, 5, 9] == pytest.approx(expected, abs=1e-5)
    # And all of it, vectorised: the channel means of the normalised values follow the raw means.
    raw = data.reshape(-1, 3, 32, 32) / 255.0
    expected = (raw - np.array(CIFAR100_MEAN)[None, :, None, None]) / np.array(CIFAR100_STD)[None, :, None, None]
    np.testing.assert_allclose(train.images, expected, atol=1e-5)


def test_cifar_meta_is_optional(tmp_path) -> None:
    root = write_cifar(tmp_path / "c", meta=False)
    ds = load_dataset(f"cifar100:{root}", "test")
    assert ds.class_names is None and len(ds) == 10


def test_fingerprint_independent_of_directory(tmp_path, cifar_dir, folder_dir, folder_train) -> None:
    a = load_dataset(f"cifar100:{cifar_dir}", "train")
    moved = tmp_path / "elsewhere"
    shutil.copytree(cifar_dir, moved)
    b = load_dataset(f"cifar100:{moved}", "train")
    assert b.spec != a.spec and b.fingerprint() == a.fingerprint()
    assert a.fingerprint() != load_dataset(f"cifar100:{cifar_dir}", "test").fingerprint()
    assert a.describe()["fingerprint"] == a.fingerprint()
    # Relative path, other directory: same folder fingerprint; other content: different.
    shutil.copytree(folder_dir, tmp_path / "imgs2")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        rel = load_dataset("folder:imgs2", "train")
    finally:
        os.chdir(cwd)
    assert rel.fingerprint() == folder_train.fingerprint()
    other = write_cifar(tmp_path / "other", seed=1)
    assert load_dataset(f"cifar100:{other}", "train").fingerprint() != a.fingerprint()


def test_cifar_errors(tmp_path) -> None:
    with pytest.raises(InputNotFound, match="not found"):
        load_dataset(f"cifar100:{tmp_path / 'nope'}")
    with pytest.raises(InvalidInput, match="directory"):
        load_dataset("cifar100:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFound, match="train"):
        load_dataset(f"cifar100:{tmp_path / 'empty'}")
    assert issubclass(InputNotFound, FileNotFoundError)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train").write_bytes(b"this is not a pickle")
    with pytest.raises(InvalidInput, match="not a cifar-100-python pickle"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(InvalidInput, match=r"\(N, 3072\)"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}))
    with pytest.raises(InvalidInput, match="0..99"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(InvalidInput, match="fine_labels"):
        load_dataset(f"cifar100:{bad}")
    (bad / "train").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(InvalidInput, match="dict"):
        load_dataset(f"cifar100:{bad}")


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_cannot_run_code(tmp_path) -> None:
    root = tmp_path / "evil"
    root.mkdir()
    (root / "train").write_bytes(pickle.dumps({b"data": _Boom(), b"fine_labels": [0]}))
    with pytest.raises(InvalidInput, match="refusing to load"):
        load_dataset(f"cifar100:{root}")


# ----------------------------------------------------------------------------------------------- folder


def expected_pixels(path: Path, size: int, resize: int) -> np.ndarray:
    """Resize(resize) + CenterCrop(size), computed by hand with PIL, then scaled and ImageNet-normalised."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    crop = np.asarray(image, dtype=np.float32)[top : top + size, left : left + size] / 255.0
    return ((crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1).astype(np.float32)


def test_folder_shapes_labels_order(folder_train, folder_dir) -> None:
    ds = folder_train
    assert isinstance(ds, DirImageDataset)
    assert ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64 and ds.num_classes == 3
    assert ds.class_names == ("ant", "bee", "cat")
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 4))
    # Within a class files are in sorted name order: img0 (written from SIZES[3]) ... img3 (SIZES[0]).
    for row, name in enumerate(["img0", "img1", "img2", "img3"]):
        expected = expected_pixels(folder_dir / "train" / "ant" / f"{name}.png", 32, 36)
        np.testing.assert_allclose(ds.images[row], expected, atol=1e-5)
    p = ds.view_policy
    assert (p.kind, p.source_size, p.pad, p.flip_p, p.scale) == ("resized_crop", (32, 32), 0, 0.5, (0.35, 1.0))


def test_folder_center_crop_by_hand(folder_train, folder_dir) -> None:
    # "bee"/img2.png is 64 wide × 36 high: short side 36 → stays 64 × 36; crop left = 16, top = 2.
    path = folder_dir / "train" / "bee" / "img2.png"
    raw = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    assert raw.shape == (36, 64, 3)
    crop = raw[2:34, 16:48]
    expected = ((crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(folder_train.images[4 + 2], expected, atol=1e-5)
    # Every image of every class matches the hand-computed Resize + CenterCrop.
    for row in range(12):
        cls = folder_train.class_names[row // 4]
        path = folder_dir / "train" / cls / f"img{row % 4}.png"
        np.testing.assert_allclose(folder_train.images[row], expected_pixels(path, 32, 36), atol=1e-5)


def test_folder_test_split_and_size_option(folder_dir) -> None:
    test = load_dataset(f"folder:{folder_dir}", "test")
    assert test.images.shape == (6, 3, 32, 32) and test.num_classes == 3
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1, 2, 2])
    small = load_dataset(f"folder:{folder_dir}?size=16", "train")
    assert small.images.shape == (12, 3, 16, 16) and small.view_policy.source_size == (16, 16)
    np.testing.assert_allclose(
        small.images[0], expected_pixels(folder_dir / "train" / "ant" / "img0.png", 16, 18), atol=1e-5
    )
    custom = load_dataset(f"folder:{folder_dir}?resize=40&size=24", "train")
    assert custom.images.shape == (12, 3, 24, 24)
    np.testing.assert_allclose(
        custom.images[5], expected_pixels(folder_dir / "train" / "bee" / "img1.png", 24, 40), atol=1e-5
    )
    assert small.fingerprint() != load_dataset(f"folder:{folder_dir}", "train").fingerprint()
    assert folder_memory_bytes(12, 16) == small.images.nbytes


def test_parse_folder_argument() -> None:
    assert parse_folder_argument("d", "s") == ("d", 32, 36)
    assert parse_folder_argument("d?size=64", "s") == ("d", 64, 72)
    assert parse_folder_argument("a?b?size=8&resize=8", "s") == ("a?b", 8, 8)
    for bad, match in [
        ("d?", "nothing after"),
        ("d?size", "key=value"),
        ("d?sise=3", "unknown option"),
        ("d?size=0", "positive integer"),
        ("d?size=3.5", "positive integer"),
        ("d?size=-3", "positive integer"),
        ("d?size=4&size=4", "twice"),
        ("d?size=32&resize=16", "at least"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            parse_folder_argument(bad, "folder:" + bad)


def test_folder_ignores_other_files_and_finds_nested(tmp_path) -> None:
    root = tmp_path / "x"
    for cls in ("a", "b"):
        random_png(root / "train" / cls / "one.png", (32, 32), 0)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "a" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / ".cache").mkdir()
    (root / "train" / "README").write_text("top-level file, not a class")
    random_png(root / "train" / "b" / "sub" / "two.jpg", (40, 40), 1)
    ds = load_dataset(f"folder:{root}", "train")
    assert ds.class_names == ("a", "b") and len(ds) == 3
    np.testing.assert_array_equal(ds.labels, [0, 1, 1])


def test_folder_errors(tmp_path, folder_dir) -> None:
    with pytest.raises(InputNotFound):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(InvalidInput, match="unknown option"):
        load_dataset(f"folder:{folder_dir}?colour=1")

    no_test = write_folder(tmp_path / "no_test", test=False)
    load_dataset(f"folder:{no_test}", "train")
    with pytest.raises(InputNotFound, match="test"):
        load_dataset(f"folder:{no_test}", "test")

    (tmp_path / "no_classes" / "train").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'no_classes'}")

    empty = tmp_path / "empty_class"
    shutil.copytree(folder_dir, empty)
    (empty / "train" / "dog").mkdir()
    with pytest.raises(InvalidInput, match=r"dog holds no images"):
        load_dataset(f"folder:{empty}")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(folder_dir, corrupt)
    (corrupt / "train" / "bee" / "img1.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidInput, match=r"cannot read image .*bee.img1\.png"):
        load_dataset(f"folder:{corrupt}")

    test_only = tmp_path / "test_only"
    shutil.copytree(folder_dir, test_only)
    random_png(test_only / "test" / "zebra" / "z.png", (32, 32), 3)
    load_dataset(f"folder:{test_only}", "train")  # the train split does not look at test/
    with pytest.raises(InvalidInput, match="'zebra'"):
        load_dataset(f"folder:{test_only}", "test")
    assert issubclass(InvalidInput, FsdError)


# ------------------------------------------------------------------------------------------ integration


@torch.no_grad()
def test_extraction_views_rerender_to_teacher_pixels(tmp_path, folder_train) -> None:
    torch.manual_seed(0)
    model = create_model("convnet_teacher", num_classes=3, in_channels=3, embedding_dim=16).eval()
    rng = np.random.default_rng(0)
    teacher = TeacherSource(
        model=model,
        arch="convnet_teacher",
        checkpoint_sha256="y" * 64,
        embedding_dim=16,
        input_shape=[3, 32, 32],
        head_type="linear",
        head_weight=rng.standard_normal((3, 16)).astype(np.float32),
        head_bias=None,
    )
    url = tmp_path / "store"
    summary = extract_teacher(
        teacher, folder_train, str(url), views=2, dtype="float32", chunk_rows=5, batch_size=4, seed=3, progress=False
    )
    assert summary.samples == 12 and summary.views == 2
    store = open_store(url)
    assert store.meta["dataset"]["fingerprint"] == folder_train.fingerprint()
    assert store.meta["views"]["kind"] == "resized_crop"
    emb, labels, views = store.read_rows(0, 12)
    np.testing.assert_array_equal(labels, folder_train.labels)
    np.testing.assert_array_equal(views, sample_views(folder_train.view_policy, 3, np.arange(12), 2))
    np.testing.assert_array_equal(views[:, 0], np.tile([0, 0, 32, 32, 0], (12, 1)))
    images = folder_train.get_images(np.arange(12))
    # View 0 is the stored (resized, center-cropped) image itself.
    np.testing.assert_allclose(emb[:, 0], model.forward_features(images).numpy(), rtol=1e-5, atol=1e-6)
    # View 1 re-rendered from the stored parameters gives the embeddings the teacher stored.
    rendered = render_views(images, views[:, 1], folder_train.view_policy)
    assert not torch.equal(rendered, images)
    np.testing.assert_allclose(emb[:, 1], model.forward_features(rendered).numpy(), rtol=1e-5, atol=1e-6)


def test_cifar_pickle_with_numpy1_module_names(tmp_path) -> None:
    """The real files (and numpy-1 pickles) name numpy.core.multiarray; numpy 2 calls it numpy._core."""
    root = tmp_path / "np1"
    root.mkdir()
    content = {b"data": np.full((3, 3072), 255, np.uint8), b"fine_labels": [5, 6, 7]}
    raw = pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (root / "test").write_bytes(raw)
    ds = load_dataset(f"cifar100:{root}", "test")
    np.testing.assert_array_equal(ds.labels, [5, 6, 7])
    assert ds.images[0, 0, 0, 0] == pytest.approx((1 - CIFAR100_MEAN[0]) / CIFAR100_STD[0], abs=1e-6)
