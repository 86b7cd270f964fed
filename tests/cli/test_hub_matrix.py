"""The compatibility matrix: the smallest model of each timm family and a range of torchvision models, each as a
student (one training step of ``train-student``) and as a teacher (``extract-teacher`` then ``store verify
--teacher``), through the CLI, with random weights and tiny images. Teachers store float32: some random initialisations give embeddings too
small for float16.

A few representative rows run in ``make test``; the rest are ``slow`` (``make test-all``). Each row names the
image side it runs at and the spec options it needs: a model of fixed input size is built for the data's size
with the library's own option (``img_size`` / ``image_size``); Inception needs at least 75 px.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from cli.main import cli
from distill.models import hub
from distill.models.hub import import_library
from featstore.errors import InvalidInput
from featstore.spec_query import SpecQuery

SIDE = 32


@dataclass(frozen=True)
class Row:
    spec: str  # timm:NAME or torchvision:NAME, with the options it needs at `side`
    side: int = SIDE
    fast: bool = False  # run by `make test`
    head: bool = True  # the classifier is a linear layer, sized to the data's 2 classes (num_classes=2)


TIMM = [
    Row("timm:resnet10t", fast=True),
    Row("timm:efficientnet_b0"),
    Row("timm:tf_efficientnetv2_b0"),
    Row("timm:mobilenetv3_small_050", fast=True),
    Row("timm:mobilenetv4_conv_small"),
    Row("timm:mobilenetv2_050"),
    Row("timm:ghostnet_050"),
    Row("timm:regnetx_002"),
    Row("timm:convnext_atto"),
    Row("timm:edgenext_xx_small"),
    Row("timm:mobilevit_xxs"),
    Row("timm:fastvit_t8"),
    Row("timm:repvit_m0_9", head=False),
    Row("timm:efficientvit_m0?img_size=32"),
    Row("timm:efficientvit_b0"),
    Row("timm:levit_128s?img_size=32", head=False),
    Row("timm:vit_tiny_patch16_224?img_size=32&patch_size=8", fast=True),
    Row("timm:deit_tiny_patch16_224?img_size=32&patch_size=8"),
    Row("timm:deit_tiny_distilled_patch16_224?img_size=32&patch_size=8", head=False),
    Row("timm:swin_tiny_patch4_window7_224?img_size=32&window_size=4"),
    Row("timm:mobileone_s0"),
    Row("timm:densenet121"),
    Row("timm:inception_v3", side=75),
    Row("timm:hgnetv2_b0"),
    Row("timm:mixnet_s"),
    Row("timm:mnasnet_small"),
    Row("timm:lcnet_050"),
    Row("timm:tinynet_e"),
    Row("timm:rexnet_100"),
    Row("timm:dla46_c"),
    Row("timm:efficientformerv2_s0?img_size=32"),
    Row("timm:poolformerv2_s12"),
    Row("timm:pvt_v2_b0"),
    Row("timm:tiny_vit_5m_224"),
    Row("timm:starnet_s050"),
]

TORCHVISION = [
    Row("torchvision:resnet18"),
    Row("torchvision:mobilenet_v3_small", fast=True),
    Row("torchvision:mobilenet_v2"),
    Row("torchvision:efficientnet_b0"),
    Row("torchvision:regnet_y_400mf"),
    Row("torchvision:shufflenet_v2_x0_5"),
    Row("torchvision:mnasnet0_5"),
    Row("torchvision:densenet121"),
    Row("torchvision:convnext_tiny"),
    Row("torchvision:squeezenet1_0", head=False, fast=True),
    Row("torchvision:googlenet"),
    Row("torchvision:inception_v3", side=75),
    Row("torchvision:swin_t"),
    Row("torchvision:vit_b_16?image_size=32"),
    Row("torchvision:fcn_resnet50", head=False),
]


def _params(rows: list[Row]) -> list:
    return [pytest.param(r, id=r.spec.split("?")[0], marks=() if r.fast else pytest.mark.slow) for r in rows]


ROWS = _params(TIMM + TORCHVISION)


def _invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def _ok(*args: object) -> Result:
    result = _invoke(*args)
    assert result.exit_code == 0, f"exit {result.exit_code} {result.exception!r}\n{result.output}"
    return result


@pytest.fixture(scope="module")
def libraries():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # torchvision without its compiled operators
        try:
            return import_library("timm"), import_library("torchvision.models")
        except InvalidInput as exc:
            if "No module named" in str(exc):
                pytest.skip(f"timm or torchvision is not installed ({exc})")
            raise


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A two-class folder dataset: 8 training images (one batch: one step) and 4 test images."""
    root = tmp_path_factory.mktemp("hub_matrix") / "imgs"
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            path = root / split / f"c{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def stores(images, libraries, tmp_path_factory):
    """side → a store with a head (a small timm teacher's) over the images at that side, made on first use."""
    timm, _ = libraries
    work = tmp_path_factory.mktemp("hub_matrix_stores")
    torch.manual_seed(0)
    weights = work / "teacher.pt"
    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), weights)
    made: dict[int, Path] = {}

    def store(side: int) -> Path:
        if side not in made:
            made[side] = work / f"s{side}.zarr"
            _ok("extract-teacher", "--teacher", f"timm:resnet10t?weights={weights}", "--dataset",
                f"folder:{images}?size={side}", "--out", made[side], "--views", 1, "--chunk-rows", 8,
                "--loader-workers", 0, "--quiet")  # fmt: skip
        return made[side]

    return store


@pytest.mark.parametrize("row", ROWS)
def test_as_a_student_it_trains_one_step(row, images, stores, tmp_path):
    out = tmp_path / "student.pt"
    _ok("train-student", "--store", stores(row.side), "--dataset", f"folder:{images}?size={row.side}", "--out", out,
        "--arch", row.spec, "--recipe", "th-kd", "--epochs", 1, "--batch-size", 8, "--loader-workers", 0,
        "--quiet")  # fmt: skip
    saved = torch.load(out, weights_only=True)
    assert saved["arch"] == row.spec and saved["extra"]["log"], saved.keys()


def _random_weights(row: Row, path: Path) -> str:
    """The row's network with random weights saved to ``path``, as the teacher spec that loads them: a
    teacher is rebuilt by every command (extract, verify), so its weights must be a file, as a user's are."""
    library, _, argument = row.spec.partition(":")
    name, options = SpecQuery.split(argument, row.spec, (), rest=True)
    kwargs = options.rest()
    if row.head:
        kwargs["num_classes"] = 2  # the data's classes, as a fine-tuned checkpoint has them
    torch.manual_seed(0)
    make = hub.create_timm if library == "timm" else hub.create_torchvision
    torch.save(make(name, row.spec, **kwargs).state_dict(), path)
    return f"{row.spec}{'&' if '?' in row.spec else '?'}weights={path}"


@pytest.mark.parametrize("row", ROWS)
def test_as_a_teacher_it_extracts_and_verifies(row, images, libraries, tmp_path):
    store, spec = tmp_path / "t.zarr", f"folder:{images}?size={row.side}"
    teacher = _random_weights(row, tmp_path / "weights.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ok("extract-teacher", "--teacher", teacher, "--dataset", spec, "--out", store, "--views", 1,
            "--chunk-rows", 8, "--dtype", "float32", "--loader-workers", 0, "--quiet")  # fmt: skip
    said = " ".join(str(w.message) for w in caught)
    assert ("head-less" in said) == (not row.head), said
    verified = _ok("store", "verify", store, "--teacher", teacher, "--sample", 4)
    assert "0 bad" in verified.stdout and "live check: 4 rows" in verified.stdout, verified.stdout


def test_a_fixed_size_model_at_another_size_is_one_error_line_naming_the_option(h, images, stores, tmp_path):
    """Without ``?img_size=32`` a ViT built for 224 px refuses the 32-px data, as student and as teacher, and
    writes nothing."""
    spec, before = f"folder:{images}?size={SIDE}", h.snapshot(tmp_path)
    student = h.invoke("train-student", "--store", stores(SIDE), "--dataset", spec, "--out", tmp_path / "s.pt",
                       "--arch", "timm:vit_tiny_patch16_224", "--epochs", 1, "--batch-size", 8,
                       "--loader-workers", 0, "--quiet")  # fmt: skip
    h.assert_refused(student, before, tmp_path, match="?img_size=32")
    teacher = h.invoke("extract-teacher", "--teacher", "timm:vit_tiny_patch16_224?head=0", "--dataset", spec,
                       "--out", tmp_path / "t.zarr", "--loader-workers", 0, "--quiet")  # fmt: skip
    h.assert_refused(teacher, before, tmp_path, match="?img_size=32")
