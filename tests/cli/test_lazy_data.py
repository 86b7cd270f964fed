"""The CLI on datasets read from files: a corrupt image is one ``Error:`` line naming it (exit 2), or with
--skip-bad-samples is left out and counted in the store's provenance; a RecordIO face set runs end to end;
--image-size lets the student render the teacher's crops at another size."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from featstore.datasets.mxrec import write_mxrec
from featstore.store import open_store


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def write_tree(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for cls in range(2):
        for k in range(8):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            path = root / "train" / f"c{cls}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("lazy_cli")
    tree = write_tree(base / "imgs")
    spec = f"folder:{tree}?size=16"
    teacher = base / "teacher.pt"
    common = ["--epochs", "1", "--device", "cpu", "--loader-workers", "0", "--eval-split", "none"]
    result = invoke("train-teacher", "--dataset", spec, "--out", teacher, "--quiet", *common)
    assert result.exit_code == 0, result.output
    return {"base": base, "tree": tree, "spec": spec, "teacher": teacher}


def test_corrupt_image_is_one_error_line_or_left_out(work, tmp_path) -> None:
    broken = tmp_path / "imgs"
    shutil.copytree(work["tree"], broken)
    (broken / "train" / "c1" / "3.png").write_bytes(b"\x89PNG truncated")
    args = ["extract-teacher", "--teacher", work["teacher"], "--dataset", f"folder:{broken}?size=16", "--quiet"]
    result = invoke(*args, "--out", tmp_path / "s.zarr", "--loader-workers", "1")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: folder: cannot read image") and "c1/3.png" in lines[0]
    result = invoke(*args, "--out", tmp_path / "skip.zarr", "--skip-bad-samples", "--views", "2", "--chunk-rows", "4")
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "skip.zarr")
    assert store.meta["dataset"]["left_out"] == {"count": 1, "rows": [11]}
    assert np.isnan(store.read_rows(11, 12)[2]).all()
    verified = invoke("store", "verify", tmp_path / "skip.zarr")
    assert verified.exit_code == 0, verified.output
    result = invoke(
        "train-student",
        "--store",
        tmp_path / "skip.zarr",
        "--dataset",
        f"folder:{broken}?size=16",
        "--out",
        tmp_path / "student.pt",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--split",
        "train",
        "--eval-split",
        "none",
        "--quiet",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output + result.stderr


def test_teacher_and_student_at_different_sizes(work, tmp_path) -> None:
    store = tmp_path / "s.zarr"
    result = invoke(
        "extract-teacher", "--teacher", work["teacher"], "--dataset", work["spec"], "--out", store, "--views", "2"
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert open_store(store).meta["teacher"]["input_shape"] == [3, 16, 16]
    result = invoke("store", "verify", store, "--teacher", work["teacher"], "--sample", "8", "--loader-workers", "0")
    assert result.exit_code == 0, result.output
    out = tmp_path / "student.pt"
    args = ["--dataset", work["spec"], "--out", out, "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    result = invoke("train-student", "--store", store, *args, "--image-size", "12", "--eval-split", "none", "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    # eval renders at the size the student was trained at unless told otherwise
    result = invoke(
        "eval", "--faiss", "--model", out, "--dataset", work["spec"], "--split", "train", "--out", tmp_path / "r.json"
    )
    assert result.exit_code == 0, result.output + result.stderr


def test_mxrec_end_to_end(tmp_path) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for label in range(2):
        for _ in range(6):
            from io import BytesIO

            buffer = BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            samples.append((buffer.getvalue(), label))
    write_mxrec(tmp_path / "faces", samples)
    spec = f"mxrec:{tmp_path / 'faces'}?size=16"
    teacher = tmp_path / "t.pt"
    common = ["--device", "cpu", "--loader-workers", "0", "--quiet"]
    result = invoke(
        "train-teacher", "--dataset", spec, "--out", teacher, "--epochs", "1", "--eval-split", "none", *common
    )
    assert result.exit_code == 0, result.output + result.stderr
    result = invoke("extract-teacher", "--teacher", teacher, "--dataset", spec, "--out", tmp_path / "s.zarr", *common)
    assert result.exit_code == 0, result.output + result.stderr
    assert open_store(tmp_path / "s.zarr").shape.num_samples == 12
