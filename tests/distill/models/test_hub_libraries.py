"""timm and torchvision for real (not stand-ins): teachers from local weights, students, and the CLI.

``make test`` installs both (torchvision pinned to the torch wheel). Beside the CPU torch wheel PyPI's
torchvision cannot load its compiled operators; fsd then imports it without them (a warning), which is
what these tests exercise on CI. The networks are built with random weights: nothing is downloaded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from distill.models.hub import import_library
from distill.models.registry import create_model
from distill.models.teachers import load_teacher
from featstore.errors import CheckpointError, InputNotFound, InvalidInput


def _import(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the compiled-operators warning, on a CPU torch
        try:
            return import_library(name)
        except InvalidInput as exc:
            if "No module named" in str(exc):
                pytest.skip(f"{name} is not installed ({exc})")
            raise


@pytest.fixture(scope="module")
def timm():
    return _import("timm")


@pytest.fixture(scope="module")
def tv_models():
    return _import("torchvision.models")


def test_a_timm_teacher_embeds_with_the_pre_logits_of_its_own_network(tmp_path, timm):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    weights = tmp_path / "r18.pt"
    torch.save(net.state_dict(), weights)
    source = load_teacher(f"timm:resnet18?weights={weights}")
    assert source.head_weight.shape == (5, 512) and source.embedding_dim == 512
    np.testing.assert_array_equal(source.head_weight, net.get_classifier().weight.detach().numpy())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(x), pre_logits=True)
        got = source.model.forward_features(x)
    torch.testing.assert_close(got, expected)
    headless = load_teacher(f"timm:resnet18?weights={weights}&head=0")
    assert headless.head_weight is None and headless.checkpoint_sha256 != source.checkpoint_sha256
    with pytest.raises(InvalidInput, match="Unknown model"):
        load_teacher("timm:nope")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_teacher(f"timm:resnet18?weights={weights}&num_classes=7")


def test_a_torchvision_teacher_splits_at_its_last_linear(tmp_path, tv_models):
    torch.manual_seed(0)
    net = tv_models.get_model("mobilenet_v3_small", weights=None, num_classes=4).eval()
    weights = tmp_path / "mnv3.pt"
    torch.save(net.state_dict(), weights)
    source = load_teacher(f"torchvision:mobilenet_v3_small?weights={weights}")
    assert source.head_weight.shape == (4, 1024)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = torch.from_numpy(source.head_weight) @ source.model.forward_features(x).T
        logits = logits.T + torch.from_numpy(source.head_bias)
        torch.testing.assert_close(logits, net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["timm:resnet18", "torchvision:resnet18"])
def test_library_students_have_the_embedding_head_split(arch, timm, tv_models):
    student = create_model(arch, num_classes=3, in_channels=3, embedding_dim=16, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = student.forward_features(x)
        assert z.shape == (2, 16) and student.head.weight.shape == (3, 16)
        torch.testing.assert_close(student(x), student.forward_head(z))


def test_a_timm_student_is_sized_from_the_pooled_width_not_num_features(timm):
    """MobileNetV3/V4 pool ``num_features`` channels and then widen them to ``head_hidden_size``."""
    for name in ("mobilenetv3_small_050", "mobilenetv4_conv_small"):
        net = timm.create_model(name, num_classes=0)
        assert net.head_hidden_size != net.num_features
        student = create_model(f"timm:{name}", num_classes=3, in_channels=1, embedding_dim=8, input_size=32)
        assert student.embed[0].in_features == net.head_hidden_size
        loss = student(torch.randn(4, 1, 32, 32)).sum()  # the first training step that used to crash
        loss.backward()


def test_spec_options_reach_the_library_parsed(timm, tv_models):
    student = create_model(
        "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&drop_path_rate=0.1&class_token=false&global_pool=avg",
        num_classes=2, in_channels=3, input_size=32,
    )  # fmt: skip
    vit = student.backbone.model
    assert tuple(vit.patch_embed.img_size) == (32, 32) and vit.cls_token is None
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    with pytest.raises(InvalidInput, match="does not take these options"):
        create_model("timm:resnet18?no_such_option=3", num_classes=2, in_channels=3)
    teacher = load_teacher("torchvision:resnet18?zero_init_residual=true")
    assert not teacher.model.model.layer1[0].bn2.weight.any()


@pytest.mark.parametrize(
    ("arch", "side", "match", "as_teacher"),
    [
        ("timm:vit_tiny_patch16_224", 64, r"\?img_size=64", True),
        ("timm:levit_128s", 64, r"\?img_size=64", True),
        ("timm:inception_v3", 64, "at least 75×75 px", False),  # one explanation for both roles: one build
    ],
)
def test_a_model_that_cannot_take_the_data_size_names_the_option(arch, side, match, as_teacher, timm, tv_models):
    with pytest.raises(InvalidInput, match=match):
        create_model(arch, num_classes=2, in_channels=3, input_size=side)
    if as_teacher:
        teacher = load_teacher(arch)
        with pytest.raises(InvalidInput, match=match):
            teacher.model.forward_features(torch.zeros(1, 3, side, side))


def test_pretrained_weights_without_a_network_is_one_line(monkeypatch, timm, tv_models):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InputNotFound, match="could not be fetched.*weights=PATH"):
        load_teacher("torchvision:resnet18?pretrained=1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-fsd-test")
    with pytest.raises(InputNotFound, match="could not be fetched.*weights=PATH"):
        load_teacher("timm:resnet18?pretrained=1")


def test_an_unreachable_hub_makes_pretrained_weights_fail_at_once_in_offline_mode(monkeypatch, timm):
    """One short request finds the hub unreachable: the download runs in huggingface_hub's offline mode (the
    local cache still serves, nothing retries for a minute) and the mode is restored afterwards."""
    import huggingface_hub.utils
    import timm.models._hub as timm_hub
    from huggingface_hub import constants

    from distill.models import hub

    asked, offline = [], []

    class Unreachable:
        def head(self, url, timeout):
            asked.append((url, timeout))
            raise OSError("[Errno -2] Name or service not known")

    real_download = timm_hub.hf_hub_download

    def download(*args, **kwargs):
        offline.append(constants.HF_HUB_OFFLINE)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", Unreachable)
    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    monkeypatch.setenv("HF_HOME", "/nonexistent-fsd-test")
    with pytest.raises(InputNotFound, match="could not be fetched.*weights=PATH"):
        load_teacher("timm:resnet18?pretrained=1")
    assert asked == [(constants.ENDPOINT, hub.HUB_PROBE_TIMEOUT_S)] and offline and all(offline)
    assert constants.HF_HUB_OFFLINE is False


def test_torchvision_builds_nothing_it_would_download(monkeypatch, tv_models):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.warns(UserWarning, match="head-less"):
        source = load_teacher("torchvision:lraspp_mobilenet_v3_large")
    assert source.head_weight is None
    assert source.model.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, 960)


def test_random_weights_and_an_unsplittable_classifier_each_warn_once(timm):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = load_teacher("timm:repvit_m0_9")
        load_teacher("timm:repvit_m0_9")
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert sum("random weights" in m for m in messages) == 1, messages
    assert sum("head-less" in m and "fsd store fit-head" in m for m in messages) == 1, messages
    assert first.head_weight is None and first.embedding_dim == 384


@pytest.mark.parametrize("spec", ["timm:dla46_c", "timm:efficientformerv2_s0?img_size=32"])
def test_a_conv_or_two_averaged_classifiers_become_one_linear_head(spec, timm):
    """DLA classifies with a 1×1 convolution, a distilled EfficientFormer with the mean of two linear heads:
    both are one linear map of the embedding, stored as the head and reproducing the model's logits."""
    source = load_teacher(spec)
    net = source.model.model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = source.model.forward_features(x)
        logits = z @ torch.from_numpy(source.head_weight).T + torch.from_numpy(source.head_bias)
        torch.testing.assert_close(logits, net.forward_head(net.forward_features(x)), rtol=1e-4, atol=1e-5)


def test_library_options_are_parsed_to_the_types_the_factories_take():
    from featstore.spec_query import SpecQuery

    query = ("img_size=64&drop_path_rate=0.1&class_token=false&global_pool=avg&img_size2=64,96&act=none"
             "&weights=w.pt&rate=1e-3&odd=nan")  # fmt: skip
    options = SpecQuery.parse(query, f"timm:x?{query}", ("weights",), what="teacher", rest=True)
    assert options.rest() == {
        "img_size": 64, "drop_path_rate": 0.1, "class_token": False, "global_pool": "avg", "img_size2": (64, 96),
        "act": None, "rate": 0.001, "odd": "nan",
    }  # fmt: skip
    assert options.text("weights", None) == "w.pt" and options.canonical().startswith("act=none&class_token=")
    with pytest.raises(InvalidInput, match=r"teacher 'timm:x\?.*': option 'img_size' given twice"):
        SpecQuery.parse("img_size=1&img_size=2", f"timm:x?{query}", ("weights",), what="teacher", rest=True)
