"""The face pipeline end to end, on generated 112×112 JPEG faces in a RecordIO train.rec/test.rec (no real faces are available offline):

fsd teacher → fsd export --onnx → extract-teacher --teacher onnx: (a head-less store) → store fit-head
--head arcface → train-student --arch mobilefacenet --recipe th-kd → eval --bin (a .bin written here in
insightface's layout) → export --onnx → parity, and the exported student evaluated as onnx:.
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from featstore.datasets.mxrec import write_mxrec

IDENTITIES, TRAIN_PER_ID, TEST_PER_ID, SIZE = 4, 10, 6, 112


def _face(identity: int, sample: int) -> Image.Image:
    """An identity is a colour and a stripe orientation; each sample shifts and re-noises it."""
    rng = np.random.default_rng(1000 * identity + sample)
    colours = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], dtype=np.float64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    angle = np.pi * identity / IDENTITIES
    stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / 6.0 + rng.uniform(0, 2 * np.pi))
    image = colours[identity][None, None, :] * (0.6 + 0.4 * stripes[..., None])
    image += rng.normal(scale=12, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    # the faces as insightface ships them: <split>.rec + <split>.idx in MXNet RecordIO, JPEG payloads
    for split, count, offset in (("train", TRAIN_PER_ID, 0), ("test", TEST_PER_ID, 100)):
        samples = [(_jpeg(_face(i, offset + k)), i) for i in range(IDENTITIES) for k in range(count)]
        assert write_mxrec(root / "rec", samples, split=split) == IDENTITIES * count
    # 20 pairs (10 folds of 2): genuine pairs from the same identity, impostors across identities
    images, same = [], []
    for p in range(20):
        a = p % IDENTITIES
        b = a if p % 2 == 0 else (a + 1) % IDENTITIES
        images += [_jpeg(_face(a, 200 + 2 * p)), _jpeg(_face(b, 201 + 2 * p))]
        same.append(p % 2 == 0)
    with open(root / "synthetic.bin", "wb") as handle:
        pickle.dump((images, same), handle, protocol=4)
    return root


def test_face_pipeline_end_to_end(faces, h):
    dataset = f"mxrec:{faces / 'rec'}?size={SIZE}"
    teacher, onnx_teacher, store = faces / "teacher.pt", faces / "teacher.onnx", faces / "store.zarr"
    h.run_ok("train-teacher", "--dataset", dataset, "--out", teacher, "--epochs", 3, "--batch-size", 8, "--quiet")
    exported = h.run_ok("export", teacher, "--onnx", onnx_teacher).stdout
    assert "max |Δ|" in exported
    h.run_ok("extract-teacher", "--teacher", f"onnx:{onnx_teacher}", "--dataset", dataset, "--out", store, "--quiet")
    fitted = h.run_ok("store", "fit-head", store, "--head", "arcface", "--epochs", 30).stdout
    assert "arcface head (4 classes)" in fitted
    student = faces / "student.pt"
    h.run_ok(
        "train-student",
        "--store",
        store,
        "--dataset",
        dataset,
        "--arch",
        "mobilefacenet",
        "--recipe",
        "th-kd",
        "--epochs",
        1,
        "--batch-size",
        8,
        "--out",
        student,
        "--quiet",
    )
    reports = {}
    for name, model in (("teacher", f"onnx:{onnx_teacher}"), ("student", student)):
        out = faces / f"{name}.json"
        h.run_ok("eval", "--faiss", "--model", model, "--bin", faces / "synthetic.bin", "--out", out)
        reports[name] = json.loads(out.read_text())["bin"]["synthetic"]
    assert reports["teacher"]["pairs"] == 20 and reports["teacher"]["flip_test"]
    assert reports["teacher"]["accuracy"] >= 0.9, reports["teacher"]  # the identities are easy to tell apart
    onnx_student = faces / "student.onnx"
    line = h.run_ok("export", student, "--onnx", onnx_student).stdout
    parity = json.loads((faces / "student.onnx.parity.json").read_text())
    assert parity["max_abs_diff_embedding"] < 1e-3 and f"{parity['max_abs_diff_embedding']:.3g}" in line
    out = faces / "student_onnx.json"
    h.run_ok("eval", "--faiss", "--model", f"onnx:{onnx_student}", "--bin", faces / "synthetic.bin", "--out", out)
    via_onnx = json.loads(out.read_text())["bin"]["synthetic"]
    assert abs(via_onnx["accuracy"] - reports["student"]["accuracy"]) <= 0.05  # same network, same pairs
    print(  # the figures of this run, for the record (pytest -s)
        f"teacher .bin {reports['teacher']['accuracy']:.3f}, student {reports['student']['accuracy']:.3f}, "
        f"student via ONNX {via_onnx['accuracy']:.3f}, parity max|Δ| {parity['max_abs_diff_embedding']:.2e}"
    )
