"""A model trained by someone else, run through fsd unchanged: PaddleOCR's PP-OCRv4 text-line recognizer as
rapidocr-onnxruntime ships it, cut at its sequence features and averaged into a text-line embedding.

The recognizer takes (B, 3, 48, W) BGR pixels scaled as (x/255 − 0.5)/0.5; its tensor ``transpose_51.tmp_0``
is the (B, T, 120) sequence the CTC head reads. Cut there (onnx shape inference + ``onnx.utils.Extractor``)
and reduced by a ``ReduceMean`` over T, it gives a (B, 120) embedding of the whole line. Text lines are drawn
with Pillow's default font, each word a class, and read back as ``folder:DIR?size=48,160``: a non-square
input, which is what the recognizer needs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from cli.main import cli
from featstore.datasets import load_dataset
from featstore.store import open_store

RECOGNIZER = Path("models") / "ch_PP-OCRv4_rec_infer.onnx"
SEQUENCE = "transpose_51.tmp_0"  # (B, T, 120): the features the CTC head classifies
HEIGHT, WIDTH = 48, 160
WORDS = ("hello", "world", "python", "distill", "teacher", "store")
RENDERINGS = 2
PREPROCESS = "mean=127.5&std=127.5&channels=bgr"  # PaddleOCR's (x/255 − 0.5)/0.5 on BGR pixels


def _recognizer() -> Path:
    found = importlib.util.find_spec("rapidocr_onnxruntime")  # located, not imported (it pulls in OpenCV)
    if found is None or found.origin is None:
        pytest.skip("rapidocr-onnxruntime is not installed (pip install rapidocr-onnxruntime)")
    path = Path(found.origin).parent / RECOGNIZER
    if not path.is_file():
        pytest.skip(f"rapidocr-onnxruntime ships no {RECOGNIZER}")
    return path


@pytest.fixture(scope="module")
def line_embedder(tmp_path_factory) -> Path:
    """The recognizer cut at its sequence features, averaged over the sequence: (B, 120)."""
    import onnx
    from onnx import helper, shape_inference, utils

    model = shape_inference.infer_shapes(onnx.load(str(_recognizer())))
    cut = utils.Extractor(model).extract_model([model.graph.input[0].name], [SEQUENCE])
    opset = next(o.version for o in cut.opset_import if o.domain in ("", "ai.onnx"))
    mean = (
        helper.make_node("ReduceMean", [SEQUENCE], ["embedding"], keepdims=0, axes=[1])
        if opset < 18  # axes became an input in opset 18
        else helper.make_node("ReduceMean", [SEQUENCE, "mean_axes"], ["embedding"], keepdims=0)
    )
    if opset >= 18:
        cut.graph.initializer.append(helper.make_tensor("mean_axes", onnx.TensorProto.INT64, [1], [1]))
    cut.graph.node.append(mean)
    del cut.graph.output[:]
    cut.graph.output.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 120]))
    onnx.checker.check_model(cut)
    path = tmp_path_factory.mktemp("ocr") / "pp_ocrv4_line_embedding.onnx"
    onnx.save(cut, str(path))
    return path


def _line(word: str, rendering: int) -> Image.Image:
    """``word`` in Pillow's default font, dark on light, with a small change of size, place and grey levels."""
    rng = np.random.default_rng([rendering, *map(ord, word)])
    font = ImageFont.load_default(size=int(rng.integers(26, 33)))
    paper, ink = int(rng.integers(225, 256)), int(rng.integers(0, 50))
    image = Image.new("RGB", (WIDTH, HEIGHT), (paper,) * 3)
    draw = ImageDraw.Draw(image)
    top, bottom = draw.textbbox((0, 0), word, font=font)[1::2]
    place = (int(rng.integers(2, 12)), (HEIGHT - (bottom - top)) // 2 - top + int(rng.integers(-2, 3)))
    draw.text(place, word, fill=(ink,) * 3, font=font)
    return image


@pytest.fixture(scope="module")
def text_lines(tmp_path_factory) -> Path:
    """``DIR/train/<word>/<k>.png``: each word drawn ``RENDERINGS`` times."""
    root = tmp_path_factory.mktemp("lines")
    for word in WORDS:
        (root / "train" / word).mkdir(parents=True)
        for k in range(RENDERINGS):
            _line(word, k).save(root / "train" / word / f"{k}.png")
    return root


def _direct(model: Path, files: list[Path]) -> np.ndarray:
    """onnxruntime on the PNG files' pixels, preprocessed as PaddleOCR does, without fsd."""
    import onnxruntime as ort

    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    x = ((pixels[..., ::-1] - 127.5) / 127.5).transpose(0, 3, 1, 2)  # (x/255 − 0.5)/0.5, BGR, NCHW
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]


def test_pp_ocrv4_line_embeddings_through_fsd_equal_onnxruntime(tmp_path, line_embedder, text_lines):
    dataset = f"folder:{text_lines}?size={HEIGHT},{WIDTH}"
    teacher = f"onnx:{line_embedder}?{PREPROCESS}&size={HEIGHT},{WIDTH}"
    store = tmp_path / "lines.zarr"
    args = ["extract-teacher", "--teacher", teacher, "--dataset", dataset, "--out", store]
    result = CliRunner().invoke(cli, [*map(str, args), "--dtype", "float32", "--loader-workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    opened = open_store(str(store))
    assert opened.shape.dim == 120 and opened.meta["teacher"]["input_shape"] == [3, HEIGHT, WIDTH]
    stored = np.concatenate([opened.read_chunk(c)[0][:, 0] for c in range(opened.num_chunks)])
    labels = np.concatenate([opened.read_chunk(c)[1] for c in range(opened.num_chunks)])

    lines = load_dataset(dataset, "train")
    expected = _direct(line_embedder, [text_lines / "train" / key for key in lines.keys])
    assert np.abs(stored - expected).max() <= 1e-5  # (a) the same numbers as onnxruntime on the same pixels

    distance = np.linalg.norm(stored[:, None] - stored[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    nearest = distance.argmin(axis=1)
    np.testing.assert_array_equal(labels[nearest], labels)  # (b) each line's nearest line is the same word
