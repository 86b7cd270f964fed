"""Teacher sources by scheme: onnx:, torchscript:, code (timm: and torchvision: with the real libraries in
test_hub_libraries.py), head-less stores, and the head/classes check."""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from cli.main import cli
from distill.models import create_model
from distill.models.export import export_model
from distill.models.teachers import is_checkpoint_spec, load_teacher
from featstore.datasets import load_dataset
from featstore.errors import CheckpointError, InvalidInput, StoreError
from featstore.extract import extract_teacher
from featstore.store import open_store


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory, digits_test):
    """An fsd convnet teacher exported to ONNX (embedding only), and the torch network itself."""
    torch.manual_seed(0)
    net = create_model("convnet_teacher", num_classes=10, embedding_dim=16).eval()
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    result = export_model(net, path, digits_test.get_images(np.arange(8)))
    assert result.max_abs_diff < 1e-4
    return path, net


def _width(shape):
    return int(np.prod(shape[1:])) if all(isinstance(d, int) for d in shape[1:]) else "width"


def _identity_onnx(path, shape, meta=None):
    """A model whose output is its input flattened: shows exactly what the adapter feeds it."""
    node = helper.make_node("Flatten", ["input"], ["embedding"], axis=1)
    graph = helper.make_graph(
        [node],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", _width(shape)])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_onnx_teacher_extracts_what_torch_computes(tmp_path, onnx_teacher, digits_test):
    path, net = onnx_teacher
    source = load_teacher(f"onnx:{path}")
    assert source.head_weight is None and source.embedding_dim == 16 and source.input_shape == [1, 8, 8]
    url = str(tmp_path / "s.zarr")
    extract_teacher(source, digits_test, url, dtype="float32", progress=False)
    store = open_store(url)
    assert not store.has_head and store.meta["head"] is None and store.shape.num_classes == 10
    with torch.no_grad():
        expected = net.forward_features(digits_test.get_images(np.arange(len(digits_test)))).numpy()
    stored = np.concatenate([store.read_chunk(c)[0][:, 0] for c in range(store.num_chunks)])
    np.testing.assert_allclose(stored, expected, atol=1e-4)
    with pytest.raises(StoreError, match="fit-head"):
        store.head_weight()


def test_onnx_export_with_head_gives_its_embedding_not_its_logits(tmp_path, onnx_teacher, digits_test):
    """fsd export --with-head writes (embedding, logits): the embedding is found from the graph (the logits
    are computed from it); ?output= names either."""
    _, net = onnx_teacher
    path = tmp_path / "with_head.onnx"
    export_model(net, path, digits_test.get_images(np.arange(8)), with_head=True)
    assert load_teacher(f"onnx:{path}").embedding_dim == 16
    assert load_teacher(f"onnx:{path}?output=logits").embedding_dim == 10
    assert load_teacher(f"onnx:{path}?output=1").model.output_name == "logits"


def test_onnx_embedding_beside_a_linear_score_is_the_embedding(tmp_path):
    """Two (batch, D) outputs computed from the same features, neither from the other: the one that is not a
    linear layer's result (through its activation) is the embedding; two of a kind are refused."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [12, 2], np.ones(24, np.float32))
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Relu", ["flat"], ["embedding"]),
        helper.make_node("Gemm", ["flat", "w"], ["gemm"]),
        helper.make_node("Sigmoid", ["gemm"], ["score"]),
    ]
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 12]),
    ]
    graph = helper.make_graph(
        nodes,
        "scored",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        outputs,
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "scored.onnx"))
    assert load_teacher(f"onnx:{tmp_path / 'scored.onnx'}").model.output_name == "embedding"
    nodes[1] = helper.make_node("Gemm", ["flat", "w"], ["embedding"])  # now both are linear layers' results
    outputs[1] = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 2, 2])], outputs, [weight]
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "two.onnx")
    )
    with pytest.raises(InvalidInput, match=r"none is clearly the embedding .*: score \(batch, 2\), embedding"):
        load_teacher(f"onnx:{tmp_path / 'two.onnx'}")


def test_onnx_pixel_normalisation_is_the_affine_map(tmp_path):
    """mean/std in 0..255 units: x_model = (255·(x·std_d + mean_d) − mean) / std, per channel."""
    path = _identity_onnx(tmp_path / "id.onnx", ["batch", 3, 2, 2])
    source = load_teacher(f"onnx:{path}?mean=127.5&std=128")
    dataset = types.SimpleNamespace(spec="fake", normalisation=((0.5, 0.4, 0.3), (0.25, 0.2, 0.1)))
    source.model.adapt_to_dataset(dataset)
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2) / 10
    got = source.model.forward_features(x).numpy().reshape(3, 2, 2)
    for c, (m, s) in enumerate(zip((0.5, 0.4, 0.3), (0.25, 0.2, 0.1), strict=True)):
        np.testing.assert_allclose(got[c], (255 * (x[0, c].numpy() * s + m) - 127.5) / 128, rtol=1e-5)
    undeclared = types.SimpleNamespace(spec="fake", normalisation=None)
    with pytest.raises(InvalidInput, match="normalisation"):
        source.model.adapt_to_dataset(undeclared)


def test_onnx_layout_channels_and_metadata(tmp_path):
    path = _identity_onnx(tmp_path / "nhwc.onnx", ["batch", 2, 2, 3], meta={"channels": "bgr"})
    source = load_teacher(f"onnx:{path}")
    assert source.model.layout == "nhwc" and source.input_shape == [3, 2, 2] and source.embedding_dim == 12
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2)
    got = source.model.forward_features(x).numpy().reshape(2, 2, 3)
    np.testing.assert_array_equal(got, x[0].flip(0).permute(1, 2, 0).numpy())  # BGR, channels last
    dynamic = _identity_onnx(tmp_path / "dyn.onnx", ["batch", 3, "h", "w"])
    with pytest.raises(InvalidInput, match="size"):
        load_teacher(f"onnx:{dynamic}")
    assert load_teacher(f"onnx:{dynamic}?size=4").input_shape == [3, 4, 4]
    with pytest.raises(InvalidInput, match="unknown option"):
        load_teacher(f"onnx:{path}?sise=4")


def test_onnx_file_that_is_not_a_model_is_an_error_and_writes_nothing(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01 this is not a protobuf model")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        load_teacher(f"onnx:{junk}")
    result = _invoke("extract-teacher", "--teacher", f"onnx:{junk}", "--dataset", "digits", "--out", tmp_path / "s")
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_head_over_other_classes_is_refused_unless_dropped(tmp_path, monkeypatch):
    (tmp_path / "three_class_teacher.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
            return body, body, nn.Linear(8, 3)
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "s.zarr"
    args = ["extract-teacher", "--teacher", "three_class_teacher:build", "--trust-code", "--dataset", "digits"]
    result = _invoke(*args, "--out", out, "--quiet")
    assert result.exit_code == 2 and "3 classes" in result.stderr and "10" in result.stderr, result.output
    assert not out.exists()
    result = _invoke(*args, "--out", out, "--quiet", "--drop-head")
    assert result.exit_code == 0, result.output
    assert not open_store(out).has_head
    student = tmp_path / "student.pt"
    result = _invoke("train-student", "--store", out, "--dataset", "digits", "--out", student, "--epochs", "1")
    assert result.exit_code == 2 and "fit-head" in result.stderr and not student.exists()


def test_every_model_command_takes_any_spec(tmp_path, onnx_teacher):
    path, _ = onnx_teacher
    report = tmp_path / "r.json"
    result = _invoke("eval", "--faiss", "--model", f"onnx:{path}", "--dataset", "digits", "--out", report)
    assert result.exit_code == 0, result.output
    assert report.exists()
    store = tmp_path / "s.zarr"
    assert _invoke("extract-teacher", "--teacher", f"onnx:{path}", "--dataset", "digits", "--out", store).exit_code == 0
    result = _invoke("store", "verify", store, "--teacher", f"onnx:{path}", "--sample", "16")
    assert result.exit_code == 0, result.output
    assert is_checkpoint_spec(path) and not is_checkpoint_spec("onnx:x.onnx") and not is_checkpoint_spec("a.b:c")


# -- timm / torchvision: the real libraries are tested in test_hub_libraries.py ------------------------


def test_a_library_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets when it is not installed
    with pytest.raises(InvalidInput, match="timm"):
        load_teacher("timm:resnet18")
