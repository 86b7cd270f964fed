"""timm and torchvision on their own feature contracts, for the ``timm:``/``torchvision:`` students and teachers.

Both kinds of spec share the code below:

* **Importing** the libraries (:func:`import_library`): only when such a model is asked for, and beside the CPU
  torch wheel, where torchvision's compiled operators do not load (fsd needs only its model definitions).
* **Building** (:func:`create_timm`, :func:`create_torchvision`): keyword arguments from the spec's query go to
  the library's own factory (``img_size``, ``in_chans``, ``drop_path_rate``…); nothing is downloaded unless
  ``pretrained`` is asked for (torchvision's backbone weights included), and a failed download is one line.
* **Splitting** a network into embedding and classifier: timm's ``forward_features`` then
  ``forward_head(pre_logits=True)``, of width ``head_hidden_size`` (else ``num_features``); torchvision's own
  classifier attribute (``fc``, ``classifier``, ``heads``, ``head``), whose final ``nn.Linear`` is the head and
  whose input is the embedding. A classifier that is not a linear layer gives a head-less model.
* **Explaining** a forward that fails on the data's images (:class:`HubEmbedder`): a model of fixed input size
  names the option that changes it; a model that needs larger images says how large.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featstore.errors import FsdError, InputNotFound, InvalidInput
from featstore.spec_query import SpecQuery

CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")
"""Where torchvision's classification models keep their classifier (ResNet/RegNet/Inception: ``fc``; VGG,
MobileNet, EfficientNet, ConvNeXt, DenseNet, MaxViT: ``classifier``; ViT: ``heads``; Swin: ``head``)."""

LARGEST_PROBE_SIDE = 512
"""The largest side tried when looking for the smallest input a network takes (only after a failed forward)."""


def import_library(name: str) -> Any:
    """``timm`` or ``torchvision.models``, importable beside this torch, or an :class:`InvalidInput` saying why."""
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
    registrations are skipped (a warning says so) rather than refusing the whole library.
    """
    for module in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[module]  # the half-imported package, so the next import starts clean
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    warnings.warn(
        f"torchvision's compiled operators do not load beside torch {torch.__version__} "
        f"({str(exc).splitlines()[0]}); fsd uses only its model definitions, which do not need them",
        RuntimeWarning,
        stacklevel=3,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _download_failed(spec: str, exc: BaseException) -> InputNotFound:
    return InputNotFound(
        f"{spec}: the pretrained weights could not be fetched ({_first_line(exc)}); without a network, download "
        "them elsewhere and pass ?weights=PATH"
    )


HUB_PROBE_TIMEOUT_S = 3.0
"""How long the Hugging Face Hub has to answer before ``pretrained=1`` takes it as unreachable."""


@contextlib.contextmanager
def _offline_when_unreachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode for the duration when its endpoint does not answer.

    One request has :data:`HUB_PROBE_TIMEOUT_S` to be answered. Offline, weights in the local cache still load
    and missing ones fail at once instead of after the hub's retries (about a minute of back-off). A reachable
    hub, or offline mode already set, changes nothing.
    """
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
    except ImportError:  # timm without the hub: its URLs go through torch.hub, which fails at once
        yield
        return
    if constants.HF_HUB_OFFLINE:
        yield
        return
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
        reachable = True
    except Exception:  # noqa: BLE001 - any failure to get an answer (name resolution, refused, timeout)
        reachable = False
    constants.HF_HUB_OFFLINE = not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def create_timm(name: str, spec: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``timm.create_model(name, pretrained, **kwargs)``, its refusals as one line naming the spec.

    With ``pretrained``, an unreachable hub is found out within seconds (:func:`_offline_when_unreachable`).

    Args:
        name: The timm model name.
        spec: The whole spec, named in error messages.
        pretrained: Download (or read from the cache) the model's pretrained weights.
        **kwargs: Options for the model's constructor, from the spec's query.

    Returns:
        The timm network, with its classifier.

    Raises:
        InvalidInput: The library is not importable, or an unknown model or option, or a failed build.
        InputNotFound: Pretrained weights that cannot be downloaded.
    """
    timm = import_library("timm")
    try:
        with _offline_when_unreachable() if pretrained else contextlib.nullcontext():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:  # an option the model's constructor does not take
        raise InvalidInput(f"{spec}: timm's {name} does not take these options ({_first_line(exc)})") from None
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or not pretrained:
            raise InvalidInput(f"{spec}: {str(exc).splitlines()[0]}") from None
        raise _download_failed(spec, exc) from None
    except FsdError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub's many kinds of "no network"
        if pretrained:
            raise _download_failed(spec, exc) from None
        raise InvalidInput(f"{spec}: timm cannot build {name} ({_first_line(exc)})") from None


def create_torchvision(name: str, spec: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``torchvision.models.get_model(name, weights=…, **kwargs)``, its refusals as one line.

    A model with a separately weighted backbone (segmentation, detection) gets ``weights_backbone=None``
    unless asked otherwise, so nothing is downloaded without ``pretrained``.

    Args:
        name: The torchvision model name.
        spec: The whole spec, named in error messages.
        pretrained: Download (or read from the cache) the model's default weights.
        **kwargs: Options for the model's builder, from the spec's query.

    Returns:
        The torchvision network, with its classifier.

    Raises:
        InvalidInput: The library is not importable, or an unknown model or option, or a failed build.
        InputNotFound: Pretrained weights that cannot be downloaded.
    """
    models = import_library("torchvision.models")
    try:
        builder = models.get_model_builder(name)
    except ValueError as exc:  # "Unknown model"
        raise InvalidInput(f"{spec}: {str(exc).splitlines()[0]}") from None
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs.setdefault("weights_backbone", None)
    try:
        return builder(weights="DEFAULT" if pretrained else None, **kwargs)
    except TypeError as exc:
        raise InvalidInput(f"{spec}: torchvision's {name} does not take these options ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - urllib's and torch.hub's many kinds of "no network"
        if pretrained:
            raise _download_failed(spec, exc) from None
        raise InvalidInput(f"{spec}: torchvision cannot build {name} ({_first_line(exc)})") from None


def drop_auxiliary_outputs(model: nn.Module) -> None:
    """Inception/GoogLeNet return (logits, aux) in training mode; fsd trains and embeds the main branch only."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attribute in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attribute):
                setattr(model, attribute, None)


@dataclass
class Split:
    """A library network cut into the embedding network and its classifier."""

    embedder: HubEmbedder
    head: nn.Linear | None  # None: head-less (the classifier is not a linear layer, or there is none)
    width: int | None  # None: known only after one forward
    why_no_head: str | None  # set when a classifier exists that fsd cannot store


def split_timm(model: nn.Module, spec: str, *, with_head: bool = True) -> Split:
    """Split a timm network by its own contract: the embedding is ``forward_head(forward_features(x), pre_logits=True)``.

    The head is the model's classifier as one linear map of that embedding: an ``nn.Linear``, a 1×1
    convolution (DLA), or the mean of two linear classifiers (distilled DeiT, EfficientFormer: what their
    ``forward_head`` returns in eval mode); it is kept only when it reproduces the model's own logits on a
    sample, so a classifier with a layer of its own after the embedding (LeViT's BN + linear) is left out.
    """
    width = int(getattr(model, "head_hidden_size", None) or model.num_features)
    embedder = HubEmbedder(model, spec, "timm")
    if not with_head:
        return Split(embedder, None, width, None)
    try:
        classifier = model.get_classifier()
    except AttributeError:  # built with num_classes=0 where get_classifier reaches into the removed head
        classifier = None
    if classifier is None or isinstance(classifier, nn.Identity):
        return Split(embedder, None, width, None)
    parts = classifier if isinstance(classifier, tuple) else (classifier,)
    linears = [_as_linear(part) for part in parts]
    kind = " + ".join(type(part).__name__ for part in parts)
    if any(linear is None for linear in linears):
        return Split(embedder, None, width, f"its classifier ({kind}) is not a linear layer")
    head = linears[0] if len(linears) == 1 else _mean_linear(linears)  # type: ignore[arg-type]
    if not _reproduces_logits(embedder, head):
        return Split(embedder, None, width, f"its classifier ({kind}) is not one linear map of the embedding")
    return Split(embedder, head, width, None)


def _as_linear(module: Any) -> nn.Linear | None:
    """``module`` as an ``nn.Linear`` of the same map: itself, or a 1×1 convolution's weights; else None."""
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        linear = nn.Linear(module.in_channels, module.out_channels, bias=module.bias is not None)
        linear.weight.data.copy_(module.weight.detach().flatten(1))
        if module.bias is not None:
            linear.bias.data.copy_(module.bias.detach())
        return linear
    return None


def _in_channels(model: nn.Module) -> int:
    """The channels the network's first convolution (or patch embedding) takes."""
    first = next((p for p in model.parameters() if p.ndim == 4), None)
    return int(first.shape[1]) if first is not None else 3


def _mean_linear(linears: list[nn.Linear]) -> nn.Linear:
    """One linear layer computing the mean of ``linears``' outputs."""
    mean = nn.Linear(linears[0].in_features, linears[0].out_features, bias=True)
    mean.weight.data.copy_(torch.stack([lin.weight.detach() for lin in linears]).mean(0))
    biases = [lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features) for lin in linears]
    mean.bias.data.copy_(torch.stack(biases).mean(0))
    return mean


@torch.no_grad()
def _reproduces_logits(embedder: HubEmbedder, head: nn.Linear) -> bool:
    """Whether ``head(embedding)`` equals the model's own logits on one random image (in eval mode)."""
    model = embedder.model
    fixed = embedder._fixed_size()
    sides = [fixed[0]] if fixed else [64, int((model.pretrained_cfg or {}).get("input_size", (3, 224))[-1])]
    was_training = model.training
    model.eval()
    try:
        for side in sides:
            try:
                features = model.forward_features(torch.randn(1, _in_channels(model), side, side))
            except (RuntimeError, AssertionError, ValueError, IndexError):
                continue
            logits = model.forward_head(features)
            mine = head(model.forward_head(features, pre_logits=True))
            return mine.shape == logits.shape and torch.allclose(mine, logits, rtol=1e-4, atol=1e-5)
        return False
    finally:
        model.train(was_training)


def split_torchvision(model: nn.Module, spec: str) -> Split:
    """Split a torchvision network at its own classifier attribute.

    The classifier's final ``nn.Linear`` is the head, replaced by the identity so that the network's output is
    the embedding. A classifier of another kind is replaced by global pooling; a segmentation model embeds
    with its pooled backbone.
    """
    drop_auxiliary_outputs(model)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(model, "classifier"):  # segmentation: backbone → dict of maps
        return Split(HubEmbedder(_PooledBackbone(backbone), spec, "torchvision"), None, None, "it is a dense predictor")
    attribute = next((a for a in CLASSIFIER_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Module)), None)
    if attribute is None:
        raise InvalidInput(f"{spec}: the network has no classifier ({', '.join(CLASSIFIER_ATTRIBUTES)}) to split at")
    classifier = getattr(model, attribute)
    if isinstance(classifier, nn.Linear):
        setattr(model, attribute, nn.Identity())
        return Split(HubEmbedder(model, spec, "torchvision"), classifier, classifier.in_features, None)
    last = list(classifier.children())[-1] if isinstance(classifier, nn.Sequential) and len(classifier) else None
    if isinstance(last, nn.Linear):
        names = list(classifier._modules)
        classifier._modules[names[-1]] = nn.Identity()
        return Split(HubEmbedder(model, spec, "torchvision"), last, last.in_features, None)
    setattr(model, attribute, _GlobalPool())
    return Split(
        HubEmbedder(model, spec, "torchvision"), None, None, f"its classifier ({attribute}) is not a linear layer"
    )


class _GlobalPool(nn.Module):
    """Stands in for a non-linear classifier: feature maps are averaged to a vector, vectors pass through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x


class _PooledBackbone(nn.Module):
    """A segmentation model's backbone, its last feature map (``out``) averaged to a vector."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        last = maps["out"] if "out" in maps else list(maps.values())[-1]
        return last.mean(dim=(2, 3))


class HubEmbedder(nn.Module):
    """A library network whose ``forward_features(x)`` (and ``forward``) is its pooled pre-logits embedding.

    A forward that fails on the given images is explained before it is re-raised: a network of fixed input
    size names the option that changes it, one that needs larger images says how large.
    """

    def __init__(self, model: nn.Module, spec: str, library: str) -> None:
        super().__init__()
        self.model = model
        self.spec, self.library = spec, library
        self._register_load_state_dict_pre_hook(_nest_under_model)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The (n, D) embedding of a batch, with no explanation of a failure."""
        if self.library == "timm":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (n, D) embedding of a batch; a failure the image size causes is raised as one line saying why."""
        try:
            return self.embed(x)
        except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            explained = self.explain(tuple(x.shape[-2:]), x.shape[1], x.device)
            if explained is None:
                raise
            raise explained from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding, as :meth:`forward_features`."""
        return self.forward_features(x)

    def explain(self, size: tuple[int, int], channels: int, device: torch.device) -> InvalidInput | None:
        """Say why the network cannot take images of ``size`` (H, W), naming what to change.

        Returns None when the size is not the reason.
        """
        fixed = self._fixed_size()
        if fixed is not None and tuple(fixed) != size:
            option = "img_size" if self.library == "timm" else "image_size"
            base = self.spec.split("?")[0]
            return InvalidInput(
                f"{self.spec} takes {fixed[0]}×{fixed[1]} inputs only and the data is {size[0]}×{size[1]}: build it "
                f"for the data's size with ?{option}={size[0]} ({base}?{option}={size[0]}), or resize the data to "
                f"{fixed[0]} px"
            )
        low = max(size)
        if self._runs(low, channels, device):
            return None
        high = 2 * low  # doubled until it runs (small sides first: a large forward is slow), then bisected
        while high <= LARGEST_PROBE_SIDE and not self._runs(high, channels, device):
            low, high = high, 2 * high
        if high <= LARGEST_PROBE_SIDE:
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (low, middle) if self._runs(middle, channels, device) else (middle, high)
            return InvalidInput(
                f"{self.spec} needs inputs of at least {high}×{high} px and the data is {size[0]}×{size[1]}: resize "
                f"the data (e.g. folder:PATH?size={high})"
            )
        return None

    def _fixed_size(self) -> tuple[int, int] | None:
        """The one input size the network takes, or None when it takes many."""
        if self.library == "timm":
            if not (getattr(self.model, "pretrained_cfg", None) or {}).get("fixed_input_size"):
                return None
            patch_embed = getattr(self.model, "patch_embed", None)
            if getattr(patch_embed, "dynamic_img_size", False):
                return None
            # what the model was built for, if the spec's query gives it
            asked = SpecQuery.split(self.spec, self.spec, (), rest=True)[1].rest().get("img_size")
            img_size = (
                asked
                if asked
                else getattr(patch_embed, "img_size", None) or self.model.pretrained_cfg.get("input_size")[-2:]
            )
            img_size = img_size if isinstance(img_size, tuple | list) else (img_size, img_size)
            return (int(img_size[0]), int(img_size[1]))
        side = getattr(self.model, "image_size", None)  # torchvision's ViT and MaxViT
        return (int(side), int(side)) if isinstance(side, int) else None

    @torch.no_grad()
    def _runs(self, side: int, channels: int, device: torch.device) -> bool:
        was_training = self.model.training
        self.model.eval()
        try:
            self.embed(torch.zeros(1, channels, side, side, device=device))
            return True
        except (RuntimeError, AssertionError, ValueError, IndexError):
            return False
        finally:
            self.model.train(was_training)


def _nest_under_model(state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Read a state saved from the bare library network (keys without ``model.``).

    Student checkpoints whose backbone was the library network itself hold such a state.
    """
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(f"{prefix}model.")]:
        state[f"{prefix}model.{key[len(prefix) :]}"] = state.pop(key)


def probe(embedder: HubEmbedder, side: int, channels: int) -> int:
    """The width of the embedding for ``side``-px images (one forward of two zero images, in eval mode)."""
    was_training = embedder.training
    embedder.eval()
    try:
        with torch.no_grad():
            out = embedder.forward_features(torch.zeros(2, channels, side, side))
    finally:
        embedder.train(was_training)
    if out.ndim != 2:
        raise InvalidInput(f"{embedder.spec}: its pooled features have shape {tuple(out.shape)}, not (batch, width)")
    return int(out.shape[1])


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The dotted name and module of the last ``nn.Linear`` of ``model`` (where a classifier usually sits)."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return found[-1] if found else None
