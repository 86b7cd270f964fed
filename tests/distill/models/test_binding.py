"""The model binding (distill.models.binding): one object giving the input, the embedding, the head and the
provenance of any model spec bound to a dataset."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from distill.models import create_model
from distill.models.binding import ModelSpec, bind_images, bind_model
from distill.models.export import export_model
from distill.models.heads import frozen_head
from featstore.datasets import load_dataset
from featstore.errors import InvalidInput
from featstore.teacher import DatasetRequest, TeacherBinder


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    net = create_model("convnet_teacher", num_classes=10, embedding_dim=16).eval()
    path = tmp_path_factory.mktemp("binding") / "t.onnx"
    export_model(net, path, load_dataset("digits", "test").get_images(np.arange(4)))
    return path, net


def test_an_onnx_binding_describes_its_input_and_has_no_head(onnx_file):
    path, net = onnx_file
    binding = bind_model(f"onnx:{path}", "digits", "test")
    assert binding.head is None and binding.logits(torch.zeros(2, 16)) is None
    assert binding.input.shape == (1, 8, 8) and binding.input.layout == "nchw" and binding.input.pixel_scaling is None
    assert binding.provenance["head"] is None and binding.provenance["embedding_dim"] == 16
    embeddings, logits = binding.embed_dataset(torch.device("cpu"), batch_size=100)
    with torch.no_grad():
        expected = net.forward_features(binding.dataset.get_images(np.arange(len(binding.dataset)))).numpy()
    assert logits is None
    np.testing.assert_allclose(embeddings, expected, atol=1e-4)
    np.testing.assert_allclose(binding.probe, expected[: len(binding.probe)], atol=1e-4)


def _checkpoint(tmp_path, kind: str):
    from distill.models.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    arch = f"convnet_{kind}"
    net = create_model(arch, num_classes=10, embedding_dim=8)
    dataset = {"spec": "digits", "split": "train", "fingerprint": "x", "image_shape": [1, 8, 8]}
    ckpt = Checkpoint(kind, arch, {"num_classes": 10, "embedding_dim": 8}, net.state_dict(), "linear", 8, 10, dataset)
    return save_checkpoint(ckpt, tmp_path / f"{kind}.pt")


def test_a_checkpoint_binding_gives_its_own_head(tmp_path):
    binding = bind_model(_checkpoint(tmp_path, "teacher"), "digits", "test", loader_workers=0)
    assert binding.dataset.options.workers == 0  # the loader options reach the dataset
    z, logits = binding.embed_dataset(torch.device("cpu"))
    source = binding.source
    head = frozen_head(source.head_type, torch.from_numpy(source.head_weight), torch.from_numpy(source.head_bias))
    np.testing.assert_allclose(logits, head(torch.from_numpy(z)).numpy(), atol=1e-5)
    assert binding.head is not None and binding.provenance["head"] == {"type": "linear", "num_classes": 10}


def test_a_student_checkpoint_binds_only_where_students_are_asked_for(tmp_path):
    from featstore.errors import CheckpointError

    path = _checkpoint(tmp_path, "student")
    with pytest.raises(CheckpointError, match="a teacher checkpoint is needed"):
        bind_model(path, "digits", "test")
    assert bind_model(path, "digits", "test", students=True).checkpoint.kind == "student"


def test_the_binder_is_picklable_and_binds_what_it_loaded(onnx_file):
    path, _ = onnx_file
    spec = ModelSpec(f"onnx:{path}")
    assert isinstance(spec, TeacherBinder) and pickle.loads(pickle.dumps(spec)) == spec
    source = spec.load()
    binding = spec.bind(DatasetRequest("digits", "test"), source)
    assert binding.source is source  # bound without loading the model again


def test_images_of_another_channel_count_are_refused(onnx_file):
    path, _ = onnx_file
    with pytest.raises(InvalidInput, match=r"takes 1-channel images; these images are RGB"):
        bind_images(f"onnx:{path}", image_size=None, default_size=112, default_normalisation=((0.5,) * 3, (0.5,) * 3))


def test_an_input_of_the_wrong_size_names_the_option_to_change():
    from featstore.teacher import TeacherSource, check_input_shape

    source = TeacherSource(None, "onnx:face.onnx", "sha", 512, [3, 112, 112], None, None, None)
    with pytest.raises(
        InvalidInput,
        match=r"expects input \[3, 112, 112\], dataset x gives \[3, 32, 32\] \(render it with --image-size 112\)",
    ):
        check_input_shape(source, [3, 32, 32], "dataset x")
    check_input_shape(source, [3, 112, 112], "dataset x")
