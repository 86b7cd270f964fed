"""Tests for ``folder:DIR``, lazy, on image trees built in tmp_path (mixed sizes and modes): the index,
view 0 and random views against hand-computed crops of the original files, fingerprints from the index,
the DataLoader path with workers, errors, and an extraction whose stored views re-render to the teacher's
pixels at any image size."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.models import create_model
from featstore.datasets import LoadOptions, load_dataset
from featstore.datasets.folder import FolderDataset, parse_folder_argument
from featstore.datasets.lazy import IMAGENET_MEAN, IMAGENET_STD, BadSample, index_fingerprint
from featstore.errors import FsdError, InputNotFound, InvalidInput
from featstore.extract import TeacherSource, extract_teacher
from featstore.loader import identity_batches, rows_batches
from featstore.store import open_store
from featstore.views import ORIGINAL, sample_views

CLASSES = ("cat", "ant", "bee")  # written unsorted on purpose: labels follow sorted order ant, bee, cat
SIZES = ((40, 50), (64, 36), (36, 36), (20, 90))  # (width, height) of the 4 images of each class
MODES = ("P", "L", "RGBA", "CMYK")  # the JPEG (k = 3) is CMYK


def random_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert(mode) if mode != "P" else image.quantize(16)
    image.save(path)


def write_folder(root: Path, test: bool = True) -> Path:
    """3 classes × 4 images of different sizes and modes in train (PNG and JPEG); 2 per class in test."""
    seed = 0
    for cls in CLASSES:
        for k, size in enumerate(SIZES):
            suffix = "jpg" if k == 3 else "png"
            random_image(root / "train" / cls / f"img{3 - k}.{suffix}", size, seed, MODES[k])
            seed += 1
        if test:
            for k in range(2):
                random_image(root / "test" / cls / f"t{k}.PNG", SIZES[k], seed)
                seed += 1
    return root


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "imgs")


@pytest.fixture(scope="module")
def folder_train(folder_dir) -> FolderDataset:
    return load_dataset(f"folder:{folder_dir}", "train", options=LoadOptions(workers=0))


def normalised(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H, W) float32, scaled and ImageNet-normalised (by hand)."""
    x = pixels.astype(np.float32) / 255.0
    return ((x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1).astype(np.float32)


def original(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def test_index_labels_order_and_policy(folder_train, folder_dir) -> None:
    ds = folder_train
    assert ds.lazy and ds.image_shape == (3, 32, 32) and len(ds) == 12
    assert ds.class_names == ("ant", "bee", "cat") and ds.num_classes == 3
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 4))
    # within a class, files in sorted name order; sizes are the files' byte sizes
    assert ds.keys[:4] == ["ant/img0.jpg", "ant/img1.png", "ant/img2.png", "ant/img3.png"]
    assert ds.sizes[1] == (folder_dir / "train" / "ant" / "img1.png").stat().st_size
    p = ds.view_policy
    assert (p.kind, p.flip_p, p.scale, p.crop_fraction) == (ORIGINAL, 0.5, (0.35, 1.0), 32 / 36)
    np.testing.assert_array_equal(ds.source_sizes(np.arange(4)), [[90, 20], [36, 36], [36, 64], [50, 40]])


def test_view_zero_is_the_center_crop_of_the_original(folder_train, folder_dir) -> None:
    # "bee"/img2.png is 64 wide × 36 high: the central square is 32/36 of the short side = 32 px, at
    # left 16, top 2 — rendered at 32 × 32 it is exactly those pixels of the file
    raw = np.asarray(original(folder_dir / "train" / "bee" / "img2.png"))
    assert raw.shape == (36, 64, 3)
    x = folder_train.get_images([4 + 2])
    np.testing.assert_allclose(x[0].numpy(), normalised(raw[2:34, 16:48]), atol=1e-6)
    # "ant"/img1.png (36 × 36, RGBA): the central 32 × 32
    raw = np.asarray(original(folder_dir / "train" / "ant" / "img1.png"))
    np.testing.assert_allclose(folder_train.get_images([1])[0].numpy(), normalised(raw[2:34, 2:34]), atol=1e-6)


def test_random_views_are_torchvision_crops_of_the_original(folder_train, folder_dir) -> None:
    """Each stored box × the original's size is an integral pixel box; the view is that crop resized
    (bilinear) and flipped — computed here with Pillow's crop + resize, as torchvision does."""
    rows = np.arange(12)
    sizes = folder_train.source_sizes(rows)
    params = sample_views(folder_train.view_policy, 7, rows, 3, sizes)
    for row in rows:
        cls, name = folder_train.keys[row].split("/")
        image = original(folder_dir / "train" / cls / name)
        for view in (1, 2):
            top, left, ch, cw, flip = params[row, view]
            h, w = sizes[row]
            box = np.array([left * w, top * h, (left + cw) * w, (top + ch) * h])
            np.testing.assert_allclose(box, np.round(box), atol=1e-3)
            area = (box[2] - box[0]) * (box[3] - box[1]) / (h * w)
            side = np.round(box[2:] - box[:2])
            square = side[0] == side[1] == min(h, w)  # the fallback after 10 failed draws
            assert 0.35 - 1e-2 <= area <= 1.0 + 1e-6 or square
            crop = image.crop(tuple(int(v) for v in np.round(box))).resize((32, 32), Image.Resampling.BILINEAR)
            if flip:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            got = folder_train.render(np.array([row]), params[row, view][None])[0].numpy()
            np.testing.assert_allclose(got, normalised(np.asarray(crop)), atol=1e-6)


def test_same_crop_at_any_image_size(folder_dir, folder_train) -> None:
    """--image-size changes the rendered size, not the crop, the fingerprint or the view policy."""
    small = load_dataset(f"folder:{folder_dir}", "train", image_size=16, options=LoadOptions(workers=0))
    assert small.image_shape == (3, 16, 16)
    assert small.fingerprint() == folder_train.fingerprint()
    assert small.view_policy == folder_train.view_policy
    # size= alone keeps view 0's 8/9 crop (a teacher spec at 100 and a student spec at 32 agree) …
    assert load_dataset(f"folder:{folder_dir}?size=100").view_policy == folder_train.view_policy
    # … resize= sets it
    assert load_dataset(f"folder:{folder_dir}?size=24&resize=32").view_policy.crop_fraction == 0.75
    params = sample_views(small.view_policy, 1, np.arange(3), 2, small.source_sizes(np.arange(3)))[:, 1]
    big = folder_train.render(np.arange(3), params)
    down = torch.nn.functional.avg_pool2d(big, 2)  # the same crop at 32 then halved ≈ rendered at 16
    assert (small.render(np.arange(3), params) - down).abs().mean() < 0.1


def test_workers_give_the_same_pixels_in_the_same_order(folder_dir, folder_train) -> None:
    with_workers = load_dataset(f"folder:{folder_dir}", "train", options=LoadOptions(workers=2))
    rows = np.array([11, 0, 5, 3, 7])
    params = sample_views(folder_train.view_policy, 2, rows, 2, folder_train.source_sizes(rows))[:, 1]
    a = torch.cat([r.x[:, 0] for r in rows_batches(with_workers, rows, params, 2)])
    b = torch.cat([r.x[:, 0] for r in rows_batches(folder_train, rows, params, 2)])
    assert torch.equal(a, b)
    c = torch.cat([r.x[:, 0] for r in identity_batches(with_workers, rows, 3)])
    assert torch.equal(c, folder_train.get_images(rows))


def test_fingerprint_from_the_index(tmp_path, folder_dir, folder_train) -> None:
    shutil.copytree(folder_dir, tmp_path / "imgs2")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        rel = load_dataset("folder:imgs2", "train")
    finally:
        os.chdir(cwd)
    assert rel.fingerprint() == folder_train.fingerprint()  # moved / relative path: same fingerprint
    expected = index_fingerprint("folder", "train", folder_train.keys, folder_train.sizes, folder_train.labels)
    assert folder_train.fingerprint() == expected
    assert load_dataset(f"folder:{folder_dir}", "test").fingerprint() != folder_train.fingerprint()
    random_image(tmp_path / "imgs2" / "train" / "ant" / "img1.png", (36, 37), 99, "L")  # other size on disk
    assert load_dataset(f"folder:{tmp_path / 'imgs2'}").fingerprint() != folder_train.fingerprint()


def test_parse_folder_argument() -> None:
    assert parse_folder_argument("d", "s") == ("d", (32, 32), 36)
    assert parse_folder_argument("d?size=64", "s") == ("d", (64, 64), 72)
    assert parse_folder_argument("a?b?size=8&resize=8", "s") == ("a?b", (8, 8), 8)
    assert parse_folder_argument("d?size=48,320", "s") == ("d", (48, 320), None)  # H,W: the whole image
    assert parse_folder_argument("d?size=40,40", "s") == ("d", (40, 40), 45)
    for bad, match in [
        ("d?", "nothing after"),
        ("d?size", "key=value"),
        ("d?sise=3", "unknown option"),
        ("d?size=0", "out of range"),
        ("d?size=3.5", "must be an integer"),
        ("d?size=-3", "out of range"),
        ("d?size=999999", "out of range"),
        ("d?scale=0,1", "above 0"),
        ("d?scale=0.9,0.5", "must not decrease"),
        ("d?scale=0.5", "2 comma-separated"),
        ("d?scale=nan,1", "finite number"),
        ("d?size=4&size=4", "twice"),
        ("d?size=32&resize=16", "at least"),
        ("d?size=48,320&resize=60", "square size"),
        ("d?size=48,", "integer S or H,W"),
        ("d?size=1,2,3", "integer S or H,W"),
        ("d?size=48,99999", "out of range"),
        ("d?resize=4,4", "must be an integer"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            parse_folder_argument(bad, "folder:" + bad)


def test_folder_ignores_other_files_and_finds_nested(tmp_path) -> None:
    root = tmp_path / "x"
    for cls in ("a", "b"):
        random_image(root / "train" / cls / "one.png", (32, 32), 0)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "a" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / ".cache").mkdir()
    (root / "train" / "README").write_text("top-level file, not a class")
    random_image(root / "train" / "b" / "sub" / "two.jpg", (40, 40), 1)
    ds = load_dataset(f"folder:{root}", "train")
    assert ds.class_names == ("a", "b") and len(ds) == 3 and ds.keys[2] == "b/sub/two.jpg"
    np.testing.assert_array_equal(ds.labels, [0, 1, 1])


def test_folder_errors(tmp_path, folder_dir) -> None:
    with pytest.raises(InputNotFound, match="dataset directory not found"):
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
    test_only = tmp_path / "test_only"
    shutil.copytree(folder_dir, test_only)
    random_image(test_only / "test" / "zebra" / "z.png", (32, 32), 3)
    load_dataset(f"folder:{test_only}", "train")  # the train split does not look at test/
    with pytest.raises(InvalidInput, match="'zebra'"):
        load_dataset(f"folder:{test_only}", "test")
    assert issubclass(BadSample, FsdError)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named_when_read(tmp_path, folder_dir, workers) -> None:
    """Building the index opens no image; decoding a corrupt one names the file in one line."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(folder_dir, corrupt)
    (corrupt / "train" / "bee" / "img1.png").write_bytes(b"\x89PNG not really")
    ds = load_dataset(f"folder:{corrupt}", options=LoadOptions(workers=workers))
    with pytest.raises(BadSample, match=r"cannot read image .*bee.img1\.png") as err:
        list(identity_batches(ds, np.arange(12), 4))
    # the advice travels beside the message: the CLI shows it only where the command has the option
    assert "\n" not in str(err.value) and getattr(err.value, "suggestion", ("",))[0] == "--skip-bad-samples"
    skipping = load_dataset(f"folder:{corrupt}", options=LoadOptions(workers=workers, skip_bad_samples=True))
    with pytest.warns(RuntimeWarning, match="left out"):
        rendered = list(identity_batches(skipping, np.arange(12), 4))
    assert np.concatenate([r.rows for r in rendered]).tolist() == [r for r in range(12) if r != 5]


def teacher_for(size: int) -> TeacherSource:
    torch.manual_seed(0)
    model = create_model("convnet_teacher", num_classes=3, in_channels=3, embedding_dim=16).eval()
    return TeacherSource(
        model=model,
        arch="convnet_teacher",
        checkpoint_sha256="y" * 64,
        embedding_dim=16,
        input_shape=[3, size, size],
        head_type="linear",
        head_weight=np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32),
        head_bias=None,
    )


@torch.no_grad()
def test_extraction_views_rerender_to_teacher_pixels(tmp_path, folder_train) -> None:
    teacher = teacher_for(32)
    url = tmp_path / "store"
    summary = extract_teacher(
        teacher, folder_train, str(url), views=2, dtype="float32", chunk_rows=5, batch_size=4, seed=3, progress=False
    )
    assert summary.samples == 12 and summary.views == 2
    store = open_store(url)
    assert store.meta["dataset"]["fingerprint"] == folder_train.fingerprint()
    assert store.meta["views"]["kind"] == ORIGINAL and store.meta["views"]["policy"]["version"] == 2
    emb, labels, views = store.read_rows(0, 12)
    np.testing.assert_array_equal(labels, folder_train.labels)
    sizes = folder_train.source_sizes(np.arange(12))
    np.testing.assert_array_equal(views, sample_views(folder_train.view_policy, 3, np.arange(12), 2, sizes))
    images = folder_train.get_images(np.arange(12))
    np.testing.assert_allclose(emb[:, 0], teacher.model.forward_features(images).numpy(), rtol=1e-5, atol=1e-6)
    rendered = folder_train.render(np.arange(12), views[:, 1])
    assert not torch.equal(rendered, images)
    np.testing.assert_allclose(emb[:, 1], teacher.model.forward_features(rendered).numpy(), rtol=1e-5, atol=1e-6)
    # one content digest per chunk, over the bytes of its files
    digests = store.content_digests()
    assert digests.shape == (3, 32) and bytes(digests[1]) == folder_train.content_digest(np.arange(5, 10))
