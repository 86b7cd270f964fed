"""ONNX models in the forms found in the wild, through every command that runs one; and ONNX models or specs
that cannot run, each refused with one ``Error:`` line before anything is written.

Every form is the same small network (Conv → ReLU → global pool → Gemm: an 8-wide embedding, random
weights) written with ``onnx.helper`` in another way: a fixed batch of 1 or 8, a dynamic batch, fixed or
dynamic height and width, channels last, the logits as a first output beside the embedding, float16, and
opsets 11 to 21. The stored embeddings are compared with the float32, dynamic-batch form run directly by
onnxruntime on the dataset's tensors: the form changes how fsd must feed the model, never what it computes.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from featstore.datasets import load_dataset
from featstore.store import open_store

SIDE = 32
WIDTH = 8  # embedding width
CLASSES = 5  # the logits' width, in the forms that have them
RNG = np.random.default_rng(7)
CONV_W = RNG.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
CONV_B = RNG.normal(0, 0.1, 4).astype(np.float32)
EMBED_W = RNG.normal(0, 1.0, (4, WIDTH)).astype(np.float32)
HEAD_W = RNG.normal(0, 1.0, (WIDTH, CLASSES)).astype(np.float32)


@dataclass(frozen=True)
class Form:
    """How one ONNX file declares the network (see the module docstring)."""

    batch: int | str = "batch"
    size: tuple[int | str, int | str] = (SIDE, SIDE)
    layout: str = "nchw"
    logits_first: bool = False
    extra: str = ""  # another output after the embedding: "aux" (a second head on the pooled features),
    # "feature_map" (the ReLU's map, with the logits as the only 2-D output)
    input_type: int | None = None  # another element type for the input (e.g. uint8)
    float16: bool = False
    opset: int = 17
    meta: dict[str, str] = field(default_factory=dict)


def _tensor(name: str, array: np.ndarray, float16: bool) -> onnx.TensorProto:
    return helper.make_tensor(
        name,
        TensorProto.FLOAT16 if float16 else TensorProto.FLOAT,
        array.shape,
        array.astype(np.float16 if float16 else np.float32).tobytes(),
        raw=True,
    )


def write_torch_export(path: Path) -> Path:
    """The network as torch exports it by default (no ``dynamic_axes``): every dimension fixed, batch 1."""
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, WIDTH, bias=False))  # fmt: skip
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(CONV_W))
        net[0].bias.copy_(torch.from_numpy(CONV_B))
        net[4].weight.copy_(torch.from_numpy(EMBED_W.T))
    with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, SIDE, SIDE),), str(path), dynamo=False, opset_version=17)
    return path


def write_model(path: Path, form: Form) -> Path:
    """The network of the module docstring in ``form``, saved at ``path``."""
    elem = TensorProto.FLOAT16 if form.float16 else TensorProto.FLOAT
    h, w = form.size
    shape = [form.batch, 3, h, w] if form.layout == "nchw" else [form.batch, h, w, 3]
    nodes = []
    first = "input"
    if form.layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [
        helper.make_node("Conv", [first, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "embed_w"], ["embedding"]),
    ]
    weights = [
        _tensor("conv_w", CONV_W, form.float16),
        _tensor("conv_b", CONV_B, form.float16),
        _tensor("embed_w", EMBED_W, form.float16),
    ]
    outputs = [helper.make_tensor_value_info("embedding", elem, [form.batch, WIDTH])]
    if form.logits_first:
        nodes.append(helper.make_node("Gemm", ["embedding", "head_w"], ["logits"]))
        weights.append(_tensor("head_w", HEAD_W, form.float16))
        outputs.insert(0, helper.make_tensor_value_info("logits", elem, [form.batch, CLASSES]))
    if form.extra == "aux":
        nodes.append(helper.make_node("Gemm", ["flat", "aux_w"], ["aux"]))
        weights.append(_tensor("aux_w", RNG.normal(0, 1, (4, WIDTH)), form.float16))
        outputs.append(helper.make_tensor_value_info("aux", elem, [form.batch, WIDTH]))
    if form.extra == "feature_map":
        nodes.append(helper.make_node("Gemm", ["embedding", "head_w"], ["logits"]))
        weights.append(_tensor("head_w", HEAD_W, form.float16))
        outputs = [
            helper.make_tensor_value_info("logits", elem, [form.batch, CLASSES]),
            helper.make_tensor_value_info("relu", elem, [form.batch, 4, h, w]),
        ]
    if form.input_type is not None:
        nodes.insert(0, helper.make_node("Cast", ["raw"], ["input"], to=elem))
    source = ("raw", form.input_type) if form.input_type is not None else ("input", elem)
    graph = helper.make_graph(nodes, "form", [helper.make_tensor_value_info(*source, shape)], outputs, weights)
    opset = helper.make_opsetid("", form.opset)
    model = helper.make_model(graph, opset_imports=[opset], ir_version=helper.find_min_ir_version_for([opset]))
    for key, value in form.meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


FORMS: dict[str, Form | None] = {
    "torch-export-default": None,  # write_torch_export: fixed batch 1, as third-party models often come
    "fixed-batch-1": Form(batch=1),
    "fixed-batch-8": Form(batch=8),
    "dynamic-batch": Form(),
    "dynamic-hw": Form(size=("height", "width")),
    "fixed-hw-other-dataset-size": Form(),  # the dataset's own size is 24: rendered at the model's 32
    "nhwc": Form(layout="nhwc"),
    "two-outputs-logits-first": Form(logits_first=True),
    "float16": Form(float16=True),
    "opset-11": Form(opset=11),
    "opset-13": Form(opset=13),
    "opset-17-fixed-batch-8": Form(opset=17, batch=8),
    "opset-21": Form(opset=21),
}


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """``DIR/<split>/<class>/<k>.png``: 3 classes × 3 training and 2 test images of random pixels."""
    root = tmp_path_factory.mktemp("forms") / "images"
    for c in range(3):
        for k in range(3):
            _png(root / "train" / f"c{c}" / f"{k}.png", 10 * c + k)
        for k in range(2):
            _png(root / "test" / f"c{c}" / f"{k}.png", 100 + 10 * c + k)
    return root


@pytest.fixture(scope="module")
def verification_bin(tmp_path_factory) -> Path:
    """An insightface-style verification .bin of 10 pairs (the fewest 10-fold takes) of random 24×24 images."""
    import io

    encoded = []
    for i in range(20):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(1000 + i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    path = tmp_path_factory.mktemp("bin") / "pairs.bin"
    path.write_bytes(pickle.dumps((encoded, [bool(i % 2) for i in range(10)]), protocol=2))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("ref") / "reference.onnx", Form())


def _expected(reference: Path, dataset_spec: str, image_size: int | None = None) -> np.ndarray:
    dataset = load_dataset(dataset_spec, "train", image_size=image_size)
    x = dataset.get_images(np.arange(len(dataset))).numpy()
    session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"input": x})[0]


def _stored(url: Path) -> np.ndarray:
    store = open_store(str(url))
    return np.concatenate([store.read_chunk(c)[0][:, 0] for c in range(store.num_chunks)])


@pytest.mark.parametrize("name", FORMS, ids=FORMS)
def test_onnx_form_extracts_verifies_and_evaluates(h, tmp_path, images, reference, verification_bin, name):
    form = FORMS[name]
    model = (
        write_torch_export(tmp_path / f"{name}.onnx") if form is None else write_model(tmp_path / f"{name}.onnx", form)
    )
    other_size = name == "fixed-hw-other-dataset-size"
    dataset = f"folder:{images}?size=24" if other_size else f"folder:{images}"
    spec = f"onnx:{model}"
    store = tmp_path / "store.zarr"
    common = ["--loader-workers", "0"]
    h.run_ok("extract-teacher", "--teacher", spec, "--dataset", dataset, "--out", store, "--dtype", "float32",
             "--quiet", *common)  # fmt: skip
    expected = _expected(reference, dataset, image_size=SIDE if other_size else None)
    tolerance = 4e-3 * np.abs(expected).max() if form is not None and form.float16 else 1e-5  # fp16: ~10 ulp
    np.testing.assert_allclose(_stored(store), expected, atol=tolerance, rtol=0)
    assert open_store(str(store)).shape.dim == WIDTH  # the embedding, never the logits
    h.run_ok("store", "verify", store, "--teacher", spec, *common)

    report = tmp_path / "report.json"
    # no --image-size: a model of fixed H/W renders a file dataset at its (H, W) in eval as in extract-teacher
    result = h.invoke("eval", "--faiss", "--model", spec, "--dataset", dataset, "--split", "test", "--out", report,
                      *common)  # fmt: skip
    assert result.exit_code == 0, h.describe(result)
    source = json.loads(report.read_text())["source"]
    assert source["arch"] == f"onnx:{model.name}" and source["input_shape"][1:] == [SIDE, SIDE]
    faces = tmp_path / "faces.json"
    h.run_ok("eval", "--faiss", "--model", spec, "--bin", verification_bin, "--out", faces)
    assert 0.0 <= json.loads(faces.read_text())["bin"]["pairs"]["accuracy"] <= 1.0


def write_failing_model(path: Path) -> Path:
    """A model that loads but fails when run: it reshapes its 3×32×32 input to rows of 7 values."""
    rows = helper.make_tensor("rows", TensorProto.INT64, [2], [-1, 7])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "rows"], ["embedding"])],
        "fails",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 7])],
        [rows],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


# (form, spec options, words the one Error line holds); grouped as docs/reliability.md groups bad input
REFUSED = {
    # bounds, checked before any array of the size exists
    "declared-100000x100000": (Form(size=(100000, 100000)), "", "bound of 2048"),
    "size-999999": (Form(size=("height", "width")), "?size=999999", "size=999999 is out of range [1, 2048]"),
    "fixed-batch-100000": (Form(batch=100000), "", "bound of 268435456"),
    # one Error: line, never a traceback
    "output-not-an-output": (Form(logits_first=True), "?output=abc", "not one of the model's outputs: logits"),
    "output-index-out-of-range": (Form(logits_first=True), "?output=2", "not one of the model's outputs"),
    "size-not-a-number": (Form(size=("height", "width")), "?size=abc", "size must be an integer s or h,w, got 'abc'"),
    "size-three-numbers": (Form(size=("height", "width")), "?size=4,5,6", "size must be an integer s or h,w"),
    "size-disagrees-with-fixed": (Form(), "?size=48", "fixed at 32"),
    "metadata-not-json": (Form(meta={"fsd.normalisation": "{not json"}), "", "is not json"),
    "metadata-bad-layout": (Form(meta={"layout": "chw"}), "", "layout must be one of nchw, nhwc, got 'chw'"),
    "nhwc-bgr-on-nchw": (Form(), "?layout=nhwc&channels=bgr", "contradicts the model's input"),
    "two-embeddings": (Form(extra="aux"), "", "none is clearly the embedding"),
    "logits-beside-feature-map": (Form(extra="feature_map"), "", "none is clearly the embedding"),
    "uint8-input": (Form(input_type=TensorProto.UINT8), "", "fsd feeds float"),
    # noise: no warning before the line
    "std-zero": (Form(), "?mean=127.5&std=0", "std=0 must be positive"),
    "mean-without-std": (Form(), "?mean=127.5", "give both mean and std"),
}


@pytest.mark.parametrize("name", REFUSED, ids=REFUSED)
def test_onnx_model_or_spec_that_cannot_run_is_one_error_line(h, tmp_path, images, capfd, name):
    form, query, words = REFUSED[name]
    spec = f"onnx:{write_model(tmp_path / 'model.onnx', form)}{query}"
    before = h.snapshot(tmp_path)
    capfd.readouterr()
    result = h.invoke("extract-teacher", "--teacher", spec, "--dataset", f"folder:{images}", "--out",
                      tmp_path / "store.zarr", "--loader-workers", "0", "--quiet")  # fmt: skip
    h.assert_refused(result, before, tmp_path, match=words)  # nothing written: no store directory
    assert result.stderr.startswith("Error: ") and "Warning" not in result.stderr, h.describe(result)
    assert capfd.readouterr().err == ""  # nothing from numpy or onnxruntime on the process's own stderr


def test_onnx_model_that_fails_when_run_is_one_error_line_and_onnxruntime_stays_quiet(h, tmp_path, images, capfd):
    spec = f"onnx:{write_failing_model(tmp_path / 'fails.onnx')}"
    before = h.snapshot(tmp_path)
    capfd.readouterr()
    for args in (
        ["extract-teacher", "--teacher", spec, "--dataset", f"folder:{images}", "--out", tmp_path / "s.zarr"],
        ["eval", "--faiss", "--model", spec, "--dataset", f"folder:{images}", "--out", tmp_path / "r.json"],
    ):
        result = h.invoke(*args, "--loader-workers", "0")
        line = h.assert_refused(result, before, tmp_path, match="fails on")
        assert "cannot be reshaped" in line and line.count("fails on") == 1 and result.stderr.startswith("Error: ")
    assert "onnxruntime" not in capfd.readouterr().err  # its coloured log line never precedes the Error: line


@pytest.mark.slow
def test_non_square_fixed_batch_model_through_dask_workers_gives_the_same_bytes(h, tmp_path, images):
    """A model fixed at batch 4 and 24×40 (H×W): --workers renders the dataset at (24, 40) in every worker, as
    one process does, and writes the same bytes; store verify renders it so again."""
    model = write_model(tmp_path / "wide.onnx", Form(batch=4, size=(24, 40)))
    spec, dataset = f"onnx:{model}", f"folder:{images}?size=24,40"
    stored = []
    for name, extra in (("one.zarr", []), ("dask.zarr", ["--workers", "1"])):
        h.run_ok("extract-teacher", "--teacher", spec, "--dataset", dataset, "--out", tmp_path / name, "--dtype",
                 "float32", "--device", "cpu", "--loader-workers", "0", "--quiet", *extra)  # fmt: skip
        assert open_store(str(tmp_path / name)).meta["teacher"]["input_shape"] == [3, 24, 40]
        stored.append(_stored(tmp_path / name))
    np.testing.assert_array_equal(stored[0], stored[1])
    h.run_ok("store", "verify", tmp_path / "one.zarr", "--teacher", spec, "--loader-workers", "0")


def test_non_square_model_on_a_square_dataset_spec_warns_that_view_0_is_a_stretched_square(tmp_path, images):
    from distill.models.teachers import load_teacher

    source = load_teacher(f"onnx:{write_model(tmp_path / 'wide.onnx', Form(size=(24, 40)))}")
    with pytest.warns(RuntimeWarning, match="give the dataset size=24,40"):
        source.model.adapt_to_dataset(load_dataset(f"folder:{images}", "train", image_size=(24, 40)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole image: nothing to say
        source.model.adapt_to_dataset(load_dataset(f"folder:{images}?size=24,40", "train"))
