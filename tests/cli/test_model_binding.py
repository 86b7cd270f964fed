"""Every command that runs a model goes through one binding (distill.models.binding): --image-size reaches the
model in each of them, head-less stores work everywhere, and float16 refuses embeddings it would zero.

The teacher is Python code (``module:function``, with --trust-code) whose embedding's last coordinate is the
side of the images it was fed / 100, so each test reads back which size the model actually saw.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from distill.evaluation.request import EvalRequest, run_eval
from featstore.store import open_store

TEACHER_CODE = '''
import torch
from torch import nn


class SizeNet(nn.Module):
    """Embeds an image as (3 mixed channel means, side / 100) times ``scale``."""

    def __init__(self, scale=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.mix = nn.Linear(3, 3)
        self.scale = scale

    def forward(self, x):
        side = torch.full((len(x), 1), x.shape[-1] / 100.0)
        return self.scale * torch.cat([self.mix(x.mean(dim=(2, 3))), side], 1)


def with_head():
    net = SizeNet()
    return net, net.forward, nn.Linear(4, 2)


def headless():
    net = SizeNet()
    return net, net.forward, None


def tiny():
    net = SizeNet(scale=1e-9)
    return net, net.forward, None


def subnormal():
    net = SizeNet(scale=2e-5)
    return net, net.forward, None


def only_32():
    net = SizeNet()

    def embed(x):
        if x.shape[-1] != 32:
            raise ValueError(f"this network takes 32x32 images, got {tuple(x.shape)}")
        return net(x)

    return net, embed, None
'''
MODULE = "fsd_binding_size_teacher"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A 2-class folder: 16 train and 8 test images of 40×48 pixels, and the teacher module beside them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("binding")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 8)):
        for i in range(n):
            path = root / "imgs" / split / f"c{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    (root / f"{MODULE}.py").write_text(textwrap.dedent(TEACHER_CODE))
    return root


@pytest.fixture(autouse=True)
def _importable(data, monkeypatch):
    monkeypatch.syspath_prepend(str(data))


def spec(data: Path) -> str:
    return f"folder:{data / 'imgs'}?size=32"


def extract(h, data: Path, out: Path, teacher: str = "with_head", *extra):
    return h.invoke("extract-teacher", "--teacher", f"{MODULE}:{teacher}", "--trust-code", "--dataset", spec(data),
                    "--out", out, "--chunk-rows", 8, "--loader-workers", 0, "--quiet", *extra)  # fmt: skip


def test_extract_and_verify_honour_image_size(h, data, tmp_path):
    store = tmp_path / "s.zarr"
    result = extract(h, data, store, "with_head", "--image-size", 20)
    assert result.exit_code == 0, h.describe(result)
    opened = open_store(str(store))
    rows = opened.read_rows(0, opened.shape.num_samples)[0][:, 0]
    np.testing.assert_allclose(rows[:, -1], 0.2, rtol=1e-3)  # the teacher saw 20×20 images
    assert opened.meta["teacher"]["input_shape"] == [3, 20, 20]
    teacher = ["--teacher", f"{MODULE}:with_head", "--trust-code", "--sample", 8, "--loader-workers", 0]
    # without --image-size the live check renders at the size the store records
    verified = h.run_ok("store", "verify", store, *teacher)
    assert "live check: 8 rows" in verified.stdout and "0 bad" in verified.stdout, verified.stdout
    # another --image-size reaches the teacher too: its rows no longer match the stored ones
    other = h.invoke("store", "verify", store, *teacher, "--image-size", 28)
    assert other.exit_code == 1, h.describe(other)


def test_eval_model_spec_honours_image_size_and_loader_workers(data, monkeypatch):
    import distill.models.binding as binding

    bound = []
    real = binding.bind_model
    monkeypatch.setattr(binding, "bind_model", lambda *a, **kw: bound.append(real(*a, **kw)) or bound[-1])
    model = f"{MODULE}:with_head"
    request = EvalRequest(
        model=model, trust_code=True, dataset=spec(data), split="test", image_size=24, loader_workers=0, device="cpu"
    )
    result = run_eval(request)
    np.testing.assert_allclose(result.queries.embeddings[:, -1], 0.24, rtol=1e-6)
    assert result.queries.source["input_shape"] == [3, 24, 24]
    assert result.queries.logits is not None and result.queries.logits.shape == (8, 2)  # its head's
    assert [b.dataset.options.workers for b in bound] == [0]  # --loader-workers reached the dataset


def test_eval_gallery_model_honours_image_size(h, data, tmp_path):
    """--image-size reaches the query model and the gallery model alike."""
    out = tmp_path / "r.json"
    h.run_ok("eval", "--faiss", "--model", f"{MODULE}:with_head", "--gallery-model", f"{MODULE}:with_head",
             "--trust-code", "--dataset", spec(data), "--image-size", 24, "--loader-workers", 0, "--device", "cpu",
             "--out", out)  # fmt: skip
    report = json.loads(out.read_text())
    assert report["source"]["input_shape"] == report["cross_model"]["gallery"]["input_shape"] == [3, 24, 24]


def test_embed_honours_image_size(h, data, tmp_path):
    out = tmp_path / "e.h5"
    images = data / "imgs" / "test"
    h.run_ok("embed", "--model", f"{MODULE}:headless", "--trust-code", "--images", images, "--out", out,
             "--image-size", 36, "--device", "cpu")  # fmt: skip
    with h5py.File(out) as handle:
        np.testing.assert_allclose(handle["embeddings"][:, -1], 0.36, rtol=1e-6)
        assert json.loads(handle.attrs["fsd"])["size"] == 36


def test_online_teacher_honours_image_size(h, data, tmp_path):
    out = tmp_path / "student.pt"
    h.run_ok("train-student", "--online-teacher", f"{MODULE}:with_head", "--trust-code", "--dataset", spec(data),
             "--image-size", 20, "--out", out, "--epochs", 1, "--batch-size", 8, "--loader-workers", 0,
             "--quiet")  # fmt: skip
    ckpt = torch.load(out, weights_only=True)
    assert list(ckpt["dataset"]["image_shape"]) == [3, 20, 20]
    assert ckpt["embedding_dim"] == 4  # the student was sized to the bound teacher's probed width


def test_a_head_less_store_works_everywhere(h, data, tmp_path):
    store = tmp_path / "headless.zarr"
    result = extract(h, data, store, "headless")
    assert result.exit_code == 0, h.describe(result)
    text = h.run_ok("store", "info", store).stdout
    assert f"none (a head-less teacher); TH-KD needs one: fsd store fit-head {store} --head arcface" in text, text
    info = json.loads(h.run_ok("store", "info", store, "--json").stdout)
    assert info["head"] is None and info["shape"]["classes"] == 2
    verified = h.run_ok("store", "verify", store, "--teacher", f"{MODULE}:headless", "--trust-code", "--sample", 4)
    assert "live check: 4 rows" in verified.stdout, verified.stdout
    report = tmp_path / "r.json"
    h.run_ok("eval", "--faiss", "--store", store, "--device", "cpu", "--out", report)
    evaluated = json.loads(report.read_text())
    assert "retrieval" in evaluated and "classification" not in evaluated  # no head: no top-1
    before = h.snapshot(tmp_path)
    refused = h.invoke("train-student", "--store", store, "--dataset", spec(data), "--recipe", "th-kd",
                       "--out", tmp_path / "s.pt", "--epochs", 1, "--loader-workers", 0, "--quiet")  # fmt: skip
    line = h.assert_refused(refused, before, tmp_path, "no teacher head")
    assert f"fsd store fit-head {store} --head arcface" in line and "'th-kd'" in line
    # a recipe that never uses the teacher's logits trains from the head-less store as it is
    student = tmp_path / "pkt.pt"
    h.run_ok("train-student", "--store", store, "--dataset", spec(data), "--recipe", "pkt", "--out", student,
             "--epochs", 1, "--batch-size", 8, "--loader-workers", 0, "--quiet")  # fmt: skip
    assert torch.load(student, weights_only=True)["extra"]["teacher_head"] is None
    h.run_ok("store", "fit-head", store, "--head", "arcface", "--epochs", 1, "--device", "cpu")
    assert "arcface, 2 classes (fitted" in h.run_ok("store", "info", store).stdout


def test_float16_refuses_embeddings_it_would_store_as_zeros(h, data, tmp_path):
    store = tmp_path / "tiny.zarr"
    before = h.snapshot(tmp_path)
    line = h.assert_refused(extract(h, data, store, "tiny"), before, tmp_path, "float16 would store")
    assert "bfloat16" in line and "float32" in line
    result = extract(h, data, store, "tiny", "--dtype", "bfloat16")
    assert result.exit_code == 0, h.describe(result)
    opened = open_store(str(store))
    assert (np.abs(opened.read_rows(0, opened.shape.num_samples)[0]) > 0).all()  # nothing was zeroed


def test_float16_warns_for_embeddings_below_its_normal_range(h, data, tmp_path):
    with pytest.warns(RuntimeWarning, match="below float16's normal range.*bfloat16"):
        result = extract(h, data, tmp_path / "sub.zarr", "subnormal")
    assert result.exit_code == 0, h.describe(result)


def test_eval_model_spec_that_cannot_take_the_input_is_one_error_line(h, data, tmp_path):
    """The binding probes the model before evaluating: its failure is one line naming the input it got."""
    args = ["eval", "--faiss", "--model", f"{MODULE}:only_32", "--trust-code", "--dataset", spec(data),
            "--loader-workers", 0, "--device", "cpu", "--out", tmp_path / "r.json"]  # fmt: skip
    h.run_ok(*args)  # 32×32, the dataset spec's size: fine
    (tmp_path / "r.json").unlink()
    before = h.snapshot(tmp_path)
    line = h.assert_refused(h.invoke(*args, "--image-size", 20), before, tmp_path, "fails on a (8, 3, 20, 20) batch")
    assert "takes 32x32 images" in line


@pytest.mark.slow
def test_dask_extraction_binds_once_on_the_driver_and_honours_image_size(h, data, tmp_path, monkeypatch):
    """extract-teacher --workers: the driver loads the teacher once (workers bind their own copy, at the
    driver's --image-size), and the store equals the single-process one."""
    import distill.models.binding as binding

    loads = []
    real = binding.load_teacher
    monkeypatch.setattr(binding, "load_teacher", lambda spec, **kw: loads.append(spec) or real(spec, **kw))
    monkeypatch.chdir(data)  # dask workers import the teacher's module from the current directory
    single, distributed = tmp_path / "one.zarr", tmp_path / "dask.zarr"
    assert extract(h, data, single, "with_head", "--image-size", 20).exit_code == 0
    loads.clear()
    result = extract(h, data, distributed, "with_head", "--image-size", 20, "--workers", 1)
    assert result.exit_code == 0, h.describe(result)
    assert loads == [f"{MODULE}:with_head"]  # once on the driver
    a, b = open_store(str(single)), open_store(str(distributed))
    np.testing.assert_array_equal(a.read_rows(0, 16)[0], b.read_rows(0, 16)[0])
    np.testing.assert_allclose(b.read_rows(0, 16)[0][:, 0, -1], 0.2, rtol=1e-3)
