"""``timm:NAME`` and ``torchvision:NAME`` teachers, with ``?weights=PATH`` (a local state_dict).

Fine-grained users hold ImageNet backbones from these two libraries. Both are built with random weights
and then loaded from the user's file (``torch.load(weights_only=True)``, or a ``.safetensors`` file), so
nothing is downloaded — ``pretrained=1`` asks the library to fetch its own weights and is the one option that
needs a network. ``num_classes=K`` sizes the classifier to a checkpoint fine-tuned on K classes (by default
it is read from the weights); ``head=0`` leaves the classifier out (a head-less embedding model). Every other
option is the library's (``img_size=64``), passed to its factory.

The embedding and the head follow the libraries' own contracts (:mod:`distill.models.hub`). Two warnings,
once per spec: random weights (distilling from them is almost always a mistake), and a classifier that is not
a linear layer (the store will be head-less; ``fsd store fit-head`` gives it one).
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models import hub
from distill.models.registry import TEACHER_SOURCES
from distill.models.teacher_source import source_from_parts
from featstore.atomic import file_sha256
from featstore.errors import CheckpointError, InputNotFound, InvalidInput
from featstore.spec_query import SpecQuery

OPTIONS = ("weights", "num_classes", "pretrained", "head")
"""The options fsd reads; every other ``?key=value`` goes to the library's model factory (``img_size=64``)."""

MAX_CLASSES = 10**7
"""The largest ``num_classes`` a classifier is sized to (more than any face dataset's identities)."""

WIDTH_PROBE_SIDE = 64
"""Side of the one image that measures a head-less torchvision model's width (small: any side gives it)."""


def load_state(path: Path, spec: str) -> dict[str, torch.Tensor]:
    """A state_dict from ``path`` without running pickled code; a ``{"state_dict": …}`` wrapper is opened."""
    if not path.is_file():
        raise InputNotFound(f"teacher {spec!r}: weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many kinds for "not weights"
        raise CheckpointError(f"{path} is not a loadable state_dict ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of tensors)")
    return state


def _parse(argument: str, spec: str) -> tuple[str, dict[str, Any], SpecQuery]:
    name, options = SpecQuery.split(argument, spec, OPTIONS, what="teacher", rest=True)
    if not name:
        raise InvalidInput(f"teacher {spec!r}: name the architecture, as in 'timm:resnet50'")
    weights = options.text("weights", None)
    parsed: dict[str, Any] = {
        "weights": Path(weights) if weights is not None else None,
        "num_classes": options.int("num_classes", None, low=1, high=MAX_CLASSES),
        "pretrained": options.bool("pretrained", False),
        "head": options.bool("head", True),
        "kwargs": options.rest(),
    }
    if parsed["weights"] is not None and parsed["pretrained"]:
        raise InvalidInput(f"teacher {spec!r}: give weights=PATH or pretrained=1, not both")
    return name, parsed, options


def _classes_in(state: dict[str, torch.Tensor], key: str | tuple[str, ...] | None) -> int | None:
    """The class count of the classifier weights under ``key`` (timm names two for a distilled model)."""
    key = key[0] if isinstance(key, tuple | list) and key else key
    weight = state.get(f"{key}.weight") if isinstance(key, str) else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None


def _identity(spec_name: str, parsed: dict[str, Any], options: SpecQuery, model: nn.Module) -> str:
    digest = hashlib.sha256(f"{spec_name}|{options.canonical()}".encode())
    if parsed["weights"] is not None:
        digest.update(file_sha256(parsed["weights"]).encode())
    else:  # random or library weights: the weights themselves are the identity
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor] | None, spec: str) -> None:
    if state is None:
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"teacher {spec!r}: the weights do not fit ({str(exc).splitlines()[0]})") from None


@functools.cache
def _warn_random_weights(spec: str) -> None:
    """Once per spec and process: a teacher of random weights teaches nothing worth a store."""
    warnings.warn(
        f"teacher {spec}: random weights (neither ?weights=PATH nor ?pretrained=1); distilling from an untrained "
        "network is almost always a mistake",
        UserWarning,
        stacklevel=4,
    )


@functools.cache
def _warn_head_less(spec: str, why: str) -> None:
    """Once per spec and process: the store will have no head, and ``fsd store fit-head`` gives it one."""
    warnings.warn(
        f"teacher {spec}: {why}, so the store will be head-less; fit a head on it with "
        "`fsd store fit-head STORE` before a recipe that needs one (th-kd)",
        UserWarning,
        stacklevel=4,
    )


def _source(split: hub.Split, parsed: dict[str, Any], spec: str, arch: str, identity: str):
    if parsed["weights"] is None and not parsed["pretrained"]:
        _warn_random_weights(spec)
    if not parsed["head"]:
        return source_from_parts(split.embedder, None, arch, identity, split.width)
    if split.why_no_head is not None:
        _warn_head_less(spec, split.why_no_head)
    return source_from_parts(split.embedder, split.head, arch, identity, split.width)


@TEACHER_SOURCES.register("timm")
def timm_teacher(argument: str, spec: str):
    """``timm:NAME[?weights=PATH&num_classes=K&head=0&pretrained=1&TIMM_OPTION=VALUE…]``."""
    name, parsed, options = _parse(argument, spec)
    state = load_state(parsed["weights"], spec) if parsed["weights"] is not None else None
    kwargs = dict(parsed["kwargs"])
    classes = parsed["num_classes"]
    if classes is None and state is not None:
        probe = hub.create_timm(name, spec, num_classes=0, **kwargs)
        classes = _classes_in(state, (getattr(probe, "pretrained_cfg", None) or {}).get("classifier"))
    if classes is not None:
        kwargs["num_classes"] = classes
    model = hub.create_timm(name, spec, pretrained=parsed["pretrained"], **kwargs)
    _load_weights(model, state, spec)
    identity = _identity(f"timm:{name}", parsed, options, model)
    return _source(hub.split_timm(model.eval(), spec), parsed, spec, f"timm:{name}", identity)


def _classifier_key(model: nn.Module, spec: str) -> str | None:
    """The dotted name of the torchvision classifier's final linear layer (to read the class count from weights)."""
    names = {id(module): name for name, module in model.named_modules()}
    head = hub.split_torchvision(model, spec).head
    return names.get(id(head)) if head is not None else None


@TEACHER_SOURCES.register("torchvision")
def torchvision_teacher(argument: str, spec: str):
    """``torchvision:NAME[?weights=PATH&num_classes=K&head=0&pretrained=1&OPTION=VALUE…]``."""
    name, parsed, options = _parse(argument, spec)
    state = load_state(parsed["weights"], spec) if parsed["weights"] is not None else None
    kwargs = dict(parsed["kwargs"])
    classes = parsed["num_classes"]
    if classes is None and state is not None:
        classes = _classes_in(state, _classifier_key(hub.create_torchvision(name, spec, **kwargs), spec))
    if classes is not None:
        kwargs["num_classes"] = classes
    model = hub.create_torchvision(name, spec, pretrained=parsed["pretrained"], **kwargs)
    _load_weights(model, state, spec)
    identity = _identity(f"torchvision:{name}", parsed, options, model)
    split = hub.split_torchvision(model.eval(), spec)
    if split.width is None:  # a pooled stand-in for the classifier: the width is the pooled map's channels
        split.width = hub.probe(split.embedder, WIDTH_PROBE_SIDE, 3)
    return _source(split, parsed, spec, f"torchvision:{name}", identity)
