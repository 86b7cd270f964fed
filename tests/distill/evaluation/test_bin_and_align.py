"""Verification .bin files (safe reading, 10-fold accuracy with flip test) and 5-point alignment."""

from __future__ import annotations

import io
import math
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from distill.evaluation.align import ARCFACE_TEMPLATE, align_face, read_landmarks, similarity_transform
from distill.evaluation.protocols.bin import bin_accuracy, kfold_ids, read_bin
from distill.evaluation.protocols.pairs import lfw_accuracy
from featstore.errors import InvalidInput


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_bin(path, pairs: int = 20):
    images = [_png(i % 256) for i in range(2 * pairs)]
    flags = [bool(i % 2) for i in range(pairs)]
    with open(path, "wb") as handle:
        pickle.dump((images, flags), handle, protocol=2)
    return images, flags


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_read_bin_round_trip_and_refusals(tmp_path):
    images, flags = write_bin(tmp_path / "lfw.bin")
    bins = read_bin(tmp_path / "lfw.bin")
    assert bins.name == "lfw" and bins.images == images and bins.same.tolist() == flags
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([_png(0), _Payload()], [True])))
    with pytest.raises(InvalidInput, match="objects other than"):
        read_bin(evil)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(pickle.dumps(([_png(0)] * 3, [True])))
    with pytest.raises(InvalidInput, match="two images per pair"):
        read_bin(odd)
    (tmp_path / "junk.bin").write_bytes(b"\x00garbage")
    with pytest.raises(InvalidInput, match=r"is not a verification \.bin"):
        read_bin(tmp_path / "junk.bin")


def test_eval_refuses_a_bin_with_a_pickle_payload(tmp_path):
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([_Payload(), _png(0)], [True])))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["eval", "--faiss", "--model", "m.pt", "--bin", str(evil), "--out", str(out)])
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and not out.exists(), result.output


def test_kfold_ids_are_sklearn_kfold():
    from sklearn.model_selection import KFold

    expected = np.empty(25, dtype=int)
    for fold, (_, test) in enumerate(KFold(10).split(np.zeros(25))):
        expected[test] = fold
    np.testing.assert_array_equal(kfold_ids(25), expected)


def test_bin_accuracy_is_lfw_accuracy_of_the_flip_summed_cosines():
    rng = np.random.default_rng(0)
    same = rng.random(40) < 0.5
    plain = rng.normal(size=(80, 6))
    flipped = plain + rng.normal(scale=0.5, size=(80, 6))
    # an independent spelling of the flip test: sum, normalise, cosine of images 2p and 2p+1
    summed = plain + flipped
    a, b = summed[0::2], summed[1::2]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    report = bin_accuracy(plain.astype(np.float32), flipped.astype(np.float32), same)
    reference = lfw_accuracy(cos, same, kfold_ids(40))
    assert math.isclose(report["accuracy"], reference["accuracy_mean"], abs_tol=1e-12)
    assert math.isclose(report["accuracy_std"], float(np.std(reference["fold_accuracy"])), abs_tol=1e-12)
    # genuine pairs made identical, impostors orthogonal: every fold is right
    z = np.zeros((80, 6))
    for p in range(40):
        z[2 * p] = np.eye(6)[p % 6]
        z[2 * p + 1] = z[2 * p] if same[p] else np.eye(6)[(p + 1) % 6]
    assert bin_accuracy(z, None, same)["accuracy"] == 1.0


def test_similarity_transform_recovers_a_known_similarity():
    angle, scale, shift = math.radians(20), 1.7, np.array([5.0, -3.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = ARCFACE_TEMPLATE / 2 + 10
    dst = scale * src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_align_face_puts_the_landmarks_on_the_template():
    canvas = np.zeros((200, 240, 3), np.uint8)
    points = ARCFACE_TEMPLATE * 1.5 + np.array([40.0, 20.0])  # a face 1.5× larger, shifted
    for x, y in points.round().astype(int):
        canvas[y - 1 : y + 2, x - 1 : x + 2] = 255
    aligned = np.asarray(align_face(Image.fromarray(canvas), points.round()), dtype=np.float64)[..., 0]
    for x, y in ARCFACE_TEMPLATE:
        window = aligned[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4]
        peak = np.unravel_index(np.argmax(window), window.shape)
        assert abs(int(y) - 3 + peak[0] - y) <= 1.5 and abs(int(x) - 3 + peak[1] - x) <= 1.5


def test_landmarks_for_missing_images_are_an_error_and_nothing_is_written(tmp_path):
    images = tmp_path / "faces"
    images.mkdir()
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(images / "1.jpg")
    marks = tmp_path / "ijb_name_5pts_score.txt"
    line = " ".join(f"{v:.2f}" for v in ARCFACE_TEMPLATE.ravel())
    marks.write_text(f"1.jpg {line} 0.99\n2.jpg {line} 0.98\n")
    assert list(read_landmarks(marks)) == ["1.jpg", "2.jpg"]
    out = tmp_path / "e.h5"
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            "--model",
            "onnx:missing.onnx",
            "--images",
            str(images),
            "--landmarks",
            str(marks),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2 and not out.exists()
    (tmp_path / "bad.txt").write_text("1.jpg 1 2 3\n")
    with pytest.raises(InvalidInput, match="10 coordinates"):
        read_landmarks(tmp_path / "bad.txt")
