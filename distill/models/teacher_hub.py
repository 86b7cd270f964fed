"""``timm:NAME`` and ``torchvision:NAME`` teachers, with ``?weights=PATH`` (a local state_dict).

Fine-grained users hold ImageNet backbones from these two libraries. Both are built with random weights
and then loaded from the user's file (``torch.load(weights_only=True)``, or a ``.safetensors`` file), so
nothing is downloaded — ``pretrained=1`` asks the library to fetch its own weights and is the one option that
needs a network. ``num_classes=K`` sizes the classifier to a checkpoint fine-tuned on K classes (by default
it is read from the weights); ``head=0`` leaves the classifier out (a head-less embedding model).

The embedding is the pooled pre-logits feature: timm's ``forward_head(forward_features(x), pre_logits=True)``;
for torchvision the input of the network's last ``nn.Linear`` (its classifier, which becomes the head).
Both libraries are imported only when such a teacher is asked for; timm needs a torchvision that matches
the installed torch.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models import teacher_spec as opts
from distill.models.registry import TEACHER_SOURCES
from featstore.atomic import file_sha256
from featstore.errors import CheckpointError, InputNotFound, InvalidInput

OPTIONS = ("weights", "num_classes", "pretrained", "head")


def _library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise _unusable(name, exc) from None
        _skip_torchvision_operators(exc)
        try:
            return importlib.import_module(name)
        except Exception as again:  # noqa: BLE001 - still not importable: say why
            raise _unusable(name, again) from None
    except Exception as exc:  # noqa: BLE001 - ImportError, or a library broken beside this torch
        raise _unusable(name, exc) from None


def _unusable(name: str, exc: BaseException) -> InvalidInput:
    return InvalidInput(
        f"{name}: these models need the {name} package importable beside this torch ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}); install one built for torch {torch.__version__}"
    )


def _skip_torchvision_operators(exc: BaseException) -> None:
    """Import torchvision without its compiled operators (nms, roi_align, …), which fsd never calls.

    Why: PyPI's Linux torchvision wheels link torch's CUDA libraries, so beside the CPU torch wheel their
    ``_C`` extension does not load and ``import torchvision`` fails while registering fake kernels for the
    missing ``torchvision::nms`` ("operator torchvision::nms does not exist"). The model definitions timm and
    ``torchvision.models`` build are plain torch modules and need none of those operators, so the
    registrations are skipped (a warning says so) rather than refusing the whole library."""
    import sys
    import types
    import warnings

    for module in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[module]  # the half-imported package, so the next import starts clean
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    warnings.warn(
        f"torchvision's compiled operators do not load beside torch {torch.__version__} "
        f"({str(exc).splitlines()[0]}); fsd uses only its model definitions, which do not need them",
        RuntimeWarning,
        stacklevel=3,
    )


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


def _parse(argument: str, spec: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    name, options = opts.split_options(argument)
    opts.check_known(spec, options, OPTIONS)
    if not name:
        raise InvalidInput(f"teacher {spec!r}: name the architecture, as in 'timm:resnet50'")
    parsed: dict[str, Any] = {
        "weights": Path(options["weights"]) if "weights" in options else None,
        "num_classes": opts.positive_int(spec, "num_classes", options["num_classes"])
        if "num_classes" in options
        else None,
        "pretrained": opts.flag(spec, "pretrained", options.get("pretrained", "0")),
        "head": opts.flag(spec, "head", options.get("head", "1")),
    }
    if parsed["weights"] is not None and parsed["pretrained"]:
        raise InvalidInput(f"teacher {spec!r}: give weights=PATH or pretrained=1, not both")
    return name, parsed, options


def _classes_in(state: dict[str, torch.Tensor], key: str | None) -> int | None:
    weight = state.get(f"{key}.weight") if key else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None


def _identity(spec_name: str, parsed: dict[str, Any], options: dict[str, str], model: nn.Module) -> str:
    digest = hashlib.sha256(f"{spec_name}|{opts.canonical(options)}".encode())
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


class _TimmEmbedder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@TEACHER_SOURCES.register("timm")
def timm_teacher(argument: str, spec: str):
    """``timm:NAME[?weights=PATH&num_classes=K&head=0]``."""
    from distill.models.teachers import source_from_parts

    timm = _library("timm")
    name, parsed, options = _parse(argument, spec)
    state = load_state(parsed["weights"], spec) if parsed["weights"] is not None else None
    try:
        probe = timm.create_model(name, pretrained=False, num_classes=0)
        classifier = (getattr(probe, "default_cfg", None) or {}).get("classifier")
        classes = parsed["num_classes"] or (_classes_in(state, classifier) if state else None)
        kwargs = {} if classes is None else {"num_classes": classes}
        model = timm.create_model(name, pretrained=parsed["pretrained"], **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise InvalidInput(f"teacher {spec!r}: {str(exc).splitlines()[0]}") from None
    _load_weights(model, state, spec)
    head = model.get_classifier() if parsed["head"] else None
    if not isinstance(head, nn.Linear):
        head = None
    width = int(getattr(model, "head_hidden_size", None) or model.num_features)
    identity = _identity(f"timm:{name}", parsed, options, model)
    return source_from_parts(_TimmEmbedder(model), head, f"timm:{name}", identity, width)


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return found[-1] if found else None


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class _TorchvisionEmbedder(nn.Module):
    """The network with its classifier replaced by the identity: its output is the pre-logits feature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@TEACHER_SOURCES.register("torchvision")
def torchvision_teacher(argument: str, spec: str):
    """``torchvision:NAME[?weights=PATH&num_classes=K&head=0]``."""
    from distill.models.teachers import source_from_parts

    models = _library("torchvision.models")
    name, parsed, options = _parse(argument, spec)
    state = load_state(parsed["weights"], spec) if parsed["weights"] is not None else None
    try:
        model = models.get_model(name, weights=None)
        last = _last_linear(model)
        classes = parsed["num_classes"] or (_classes_in(state, last[0]) if state and last else None)
        if classes is not None:
            model = models.get_model(name, weights=None, num_classes=classes)
        if parsed["pretrained"]:
            model = models.get_model(name, weights="DEFAULT")
    except ValueError as exc:  # torchvision's "Unknown model"
        raise InvalidInput(f"teacher {spec!r}: {str(exc).splitlines()[0]}") from None
    _load_weights(model, state, spec)
    last = _last_linear(model)
    if last is None:
        raise InvalidInput(f"teacher {spec!r}: the network has no linear classifier to split its embedding at")
    identity = _identity(f"torchvision:{name}", parsed, options, model)
    _replace(model, last[0], nn.Identity())
    head = last[1] if parsed["head"] else None
    embedder = _TorchvisionEmbedder(model)
    return source_from_parts(embedder, head, f"torchvision:{name}", identity, int(last[1].in_features))
