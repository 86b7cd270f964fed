"""``timm:NAME[?OPTION=VALUE…]`` and ``torchvision:NAME[?…]`` students: library backbones, fsd's split.

Each is a library backbone with fsd's embedding/head split.

The backbone's pooled pre-logits feature (the libraries' own contract, :mod:`distill.models.hub`) goes through
:class:`distill.models.backbone.BackboneStudent`'s embedding layer and a fresh classifier head. Options of the
spec's query go to the library's factory (``timm:vit_tiny_patch16_224?img_size=64&drop_path_rate=0.1``);
``pretrained=1`` starts from the library's own weights (the one option that needs a network). The backbone is
probed once at the data's image size, so a model that cannot take it is an ``Error:`` line before training.
"""

from __future__ import annotations

from distill.models import hub
from distill.models.backbone import BackboneStudent
from distill.models.registry import STUDENT_SOURCES
from featstore.errors import InvalidInput
from featstore.spec_query import SpecQuery

OPTIONS = ("pretrained",)
"""The option fsd reads itself; every other one is the library's."""


def _options(argument: str, library: str) -> tuple[str, str, bool, dict]:
    name, options = SpecQuery.split(argument, f"{library}:{argument}", OPTIONS, what="student", rest=True)
    spec = f"student {library}:{argument}"
    if not name:
        raise InvalidInput(f"{spec}: name the architecture, as in '{library}:resnet18'")
    return name, spec, bool(options.bool("pretrained", False)), options.rest()


def _timm_backbone(argument: str, in_channels: int) -> tuple[hub.HubEmbedder, int | None]:
    name, spec, pretrained, kwargs = _options(argument, "timm")
    if kwargs.setdefault("in_chans", in_channels) != in_channels:
        raise InvalidInput(f"{spec}: in_chans={kwargs['in_chans']}, but the dataset has {in_channels} channel(s)")
    model = hub.create_timm(name, spec, pretrained=pretrained, num_classes=0, **kwargs)
    split = hub.split_timm(model, spec, with_head=False)
    return split.embedder, split.width


def _torchvision_backbone(argument: str, in_channels: int) -> tuple[hub.HubEmbedder, int | None]:
    name, spec, pretrained, kwargs = _options(argument, "torchvision")
    if in_channels != 3:
        raise InvalidInput(f"{spec} takes RGB images, the dataset has {in_channels} channel(s)")
    split = hub.split_torchvision(hub.create_torchvision(name, spec, pretrained=pretrained, **kwargs), spec)
    return split.embedder, split.width


def _builder(make):
    def build(
        name: str,
        num_classes: int,
        in_channels: int = 3,
        embedding_dim: int | None = None,
        input_size: int | None = None,
        head: str = "linear",
        head_scale: float | None = None,
        head_margin: float | None = None,
    ) -> BackboneStudent:
        backbone, width = make(name, in_channels)
        if input_size is not None:  # the data's side: a model that cannot take it says so now, not at step one
            width = hub.probe(backbone, input_size, in_channels)
        if width is None:
            raise InvalidInput(f"student {name}: its feature width is known only from the data; give input_size")
        return BackboneStudent(backbone, width, num_classes, embedding_dim, head, head_scale, head_margin)

    return build


STUDENT_SOURCES.register("timm")(_builder(_timm_backbone))
STUDENT_SOURCES.register("torchvision")(_builder(_torchvision_backbone))
