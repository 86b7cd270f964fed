"""The existing guarantees on the lazy path (a ``folder:`` dataset decoded by DataLoader workers): the student's
rendered view equals the teacher's pixel for pixel, teacher and student at different image sizes see the
same crop, --resume is bit-identical, and a file changed since extraction is caught by its content digest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.models.checkpoint import load_checkpoint, load_teacher_source
from distill.training.student import StudentConfig, resume_path_for, train_student
from distill.training.teacher import TeacherConfig, train_teacher
from featstore.datasets import LoadOptions, load_dataset
from featstore.errors import StoreError
from featstore.extract import extract_teacher
from featstore.loader import stream_views
from featstore.store import open_store
from featstore.stream import StoreStream
from featstore.verify import verify_live
from featstore.views import render_original, sample_view_params


def write_tree(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for cls in range(3):
        for k in range(per_class):
            w, h = int(rng.integers(24, 60)), int(rng.integers(24, 60))
            base = np.zeros((h, w, 3), np.uint8) + np.uint8(60 * cls)  # classes differ in colour
            pixels = (base + rng.integers(0, 80, size=(h, w, 3))).astype(np.uint8)
            path = root / "train" / f"c{cls}" / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("lazy")
    tree = write_tree(work / "imgs")
    spec = f"folder:{tree}?size=24"
    teacher = work / "teacher.pt"
    train_teacher(TeacherConfig(dataset=spec, out=teacher, epochs=1, eval_split=None, progress=False, loader_workers=0))
    url = str(work / "store.zarr")
    dataset = load_dataset(spec, options=LoadOptions(workers=1))
    extract_teacher(
        load_teacher_source(teacher), dataset, url, views=3, chunk_rows=8, seed=5, dtype="float32", progress=False
    )
    return {"work": work, "tree": tree, "spec": spec, "teacher": teacher, "url": url}


def student(setup: dict, out: Path, **kw) -> StudentConfig:
    base = {
        "store": setup["url"],
        "dataset": setup["spec"],
        "out": out,
        "recipe": "kd",
        "epochs": 2,
        "batch_size": 8,
        "eval_split": None,
        "device": "cpu",
        "progress": False,
        "loader_workers": 1,
    }
    return StudentConfig(**{**base, **kw})


@torch.no_grad()
def test_student_input_equals_teacher_input_pixel_for_pixel(setup) -> None:
    dataset = load_dataset(setup["spec"], options=LoadOptions(workers=2))
    model = load_teacher_source(setup["teacher"]).model.eval()
    seen = set()
    for batch, x in stream_views(dataset, StoreStream(open_store(setup["url"]), 8, seed=1)):
        sizes = dataset.source_sizes(batch.indices)
        fresh = np.stack(
            [
                sample_view_params(dataset.view_policy, 5, int(i), int(v), tuple(s))
                for i, v, s in zip(batch.indices, batch.view_ids, sizes)
            ]
        )
        teacher_input = dataset.render(batch.indices, fresh)  # what extraction rendered, from (seed, i, v)
        assert torch.equal(x, teacher_input)
        torch.testing.assert_close(model.forward_features(x), batch.embeddings, rtol=0, atol=1e-5)
        seen.update(batch.view_ids.tolist())
    assert seen == {0, 1, 2}


def test_student_at_another_size_sees_the_same_crop(setup) -> None:
    """Teacher at 24 × 24, student at 16 × 16: the same stored box, cut from the original, rendered at 16."""
    small = load_dataset(setup["spec"], image_size=16, options=LoadOptions(workers=0))
    batch, x = next(stream_views(small, StoreStream(open_store(setup["url"]), 4, seed=2)))
    assert x.shape == (4, 3, 16, 16)
    for row, params, got in zip(batch.indices, batch.view_params, x):
        with Image.open(small.root / small.keys[row]) as image:
            view = np.asarray(render_original(image.convert("RGB"), params, (16, 16)), np.float32) / 255.0
        expected = (view - np.array(small.mean)) / np.array(small.std)
        np.testing.assert_allclose(got.numpy(), expected.transpose(2, 0, 1), atol=1e-6)
    result = train_student(student(setup, setup["work"] / "s16.pt", image_size=16, epochs=1))
    assert load_checkpoint(result.path).dataset["image_shape"] == [3, 16, 16]


def test_resume_is_bit_identical_on_the_lazy_path(setup, tmp_path, monkeypatch) -> None:
    from distill.training.run import StudentRun

    full = train_student(student(setup, tmp_path / "full.pt"))
    save = StudentRun.save_resume_state

    def save_then_stop(self, *args, **kwargs):  # interrupted right after epoch 1's state is safely written
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(StudentRun, "save_resume_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt, match="last complete epoch"):
        train_student(student(setup, tmp_path / "part.pt"))
    monkeypatch.setattr(StudentRun, "save_resume_state", save)
    assert resume_path_for(tmp_path / "part.pt").exists() and not (tmp_path / "part.pt").exists()
    resumed = train_student(student(setup, tmp_path / "part.pt", resume=True, loader_workers=2))
    a, b = load_checkpoint(full.path).state_dict, load_checkpoint(resumed.path).state_dict
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_file_is_detected(setup, tmp_path) -> None:
    import shutil

    moved = tmp_path / "imgs"
    shutil.copytree(setup["tree"], moved)
    target = sorted((moved / "train" / "c1").iterdir())[0]
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # same size (the fingerprint cannot see it), other bytes
    target.write_bytes(bytes(data))
    spec = f"folder:{moved}?size=24"
    with pytest.raises(StoreError, match="changed since the store"):
        train_student(student(setup, tmp_path / "s.pt", dataset=spec, epochs=1))
    dataset = load_dataset(spec, options=LoadOptions(workers=0))
    live = verify_live(open_store(setup["url"]), load_teacher_source(setup["teacher"]), dataset, 64, 0)
    assert any("changed since extraction" in p for p in live.problems) and not live.ok
    untouched = load_dataset(setup["spec"], options=LoadOptions(workers=0))
    assert verify_live(open_store(setup["url"]), load_teacher_source(setup["teacher"]), untouched, 64, 0).ok
