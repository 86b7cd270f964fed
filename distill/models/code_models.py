"""Python code as a model: ``module:function`` teachers and students, run only with ``--trust-code``.

Why a gate: naming ``pkg.nets:my_student`` imports that module and calls that function — arbitrary code —
so every command that would do it (``train-student --arch``, ``extract-teacher --teacher``, ``eval --model``
of a checkpoint trained from code, ``export``…) refuses unless the user passed ``--trust-code``. Like
``python -m``, the current directory is importable, so a module beside the user's data just works.

**Students.** The function is called with the keyword arguments it takes among ``num_classes``,
``in_channels``, ``embedding_dim`` and ``input_size`` (the dataset's image side) and returns an
``nn.Module`` of one of two shapes:

* a **backbone**: images ``(B, C, H, W)`` → pooled features ``(B, F)``. fsd adds what the
  timm/torchvision students get (:class:`distill.models.backbone.BackboneStudent`): a linear + BN
  embedding layer to ``embedding_dim`` (the teacher's width, so TH-KD can put the teacher's head on it)
  and a fresh classifier head;
* an **fsd-shaped model**: it has ``forward_features(x) -> (B, embedding_dim)`` and a ``head`` module
  (``nn.Linear(embedding_dim, num_classes)`` or an fsd head), used as it is.

Both are probed with one small batch at build time, so a model of the wrong shape is an ``Error:`` line
before training starts, not a crash at step one. A checkpoint records the sha256 of the module's source;
rebuilding it from changed code warns (the weights may no longer mean what they did).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from distill.models.backbone import BackboneStudent
from distill.models.base import EmbeddingNet
from featstore.errors import FsdError, InvalidInput

CODE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_code_spec(text: str) -> bool:
    """Whether ``text`` has the ``module:function`` form (a dotted module, a colon, an identifier)."""
    return bool(CODE_SPEC.match(str(text)))


def untrusted(spec: str, role: str) -> InvalidInput:
    """The refusal for code named without ``--trust-code``."""
    return InvalidInput(f"{role} {spec!r} is Python code (module:function); it runs only with --trust-code")


def import_factory(spec: str, role: str) -> tuple[Callable[..., Any], ModuleType]:
    """The function a ``module:function`` spec names, and its module (the current directory importable)."""
    module_name, _, function_name = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, function_name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"{role} {spec!r}: cannot import it ({exc})") from None
    if not callable(factory):
        raise InvalidInput(f"{role} {spec!r}: {function_name} is not a function")
    return factory, module


def call_factory(factory: Callable[..., Any], spec: str, role: str, **arguments: Any) -> Any:
    """Call the user's function; its own failure is one line naming it (the code is the user's to debug)."""
    try:
        return factory(**arguments)
    except FsdError:  # already one readable line (e.g. a checkpoint the function loads)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code becomes one readable line
        raise InvalidInput(f"{role} {spec!r} failed: {type(exc).__name__}: {exc}") from None


def source_digest(spec: str, module: ModuleType) -> Any:
    """A sha256 fed the spec and the module's source file (what identifies code across runs); callers may
    feed it more (a teacher's weights)."""
    digest = hashlib.sha256(spec.encode())
    source_file = inspect.getsourcefile(module)
    if source_file:
        digest.update(Path(source_file).read_bytes())
    return digest


def source_sha256(spec: str, module: ModuleType) -> str:
    return source_digest(spec, module).hexdigest()


class CodeStudent(EmbeddingNet):
    """An fsd-shaped model from user code: its ``forward_features``, and its ``head`` (or ``forward_head``)."""

    def __init__(self, net: nn.Module, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.embedding_dim, self.num_classes = embedding_dim, num_classes

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.net.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        own = getattr(self.net, "forward_head", None)
        return own(z) if callable(own) else self.net.head(z)


@torch.no_grad()
def _probe(fn: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return fn(x)
    finally:
        model.train(was_training)


def build_code_student(
    spec: str,
    num_classes: int,
    in_channels: int = 3,
    embedding_dim: int | None = None,
    input_size: int | None = None,
    head: str = "linear",
    head_scale: float | None = None,
    head_margin: float | None = None,
) -> EmbeddingNet:
    """The student a ``module:function`` spec builds (see the module docstring); trust is checked by the caller."""
    factory, module = import_factory(spec, "student")
    given = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "embedding_dim": embedding_dim,
        "input_size": input_size,
    }
    net = call_factory(factory, spec, "student", **_accepted(factory, given))
    if not isinstance(net, nn.Module):
        raise InvalidInput(f"student {spec!r} must return a torch.nn.Module, got {type(net).__name__}")
    side = int(input_size or 32)
    x = torch.zeros(2, in_channels, side, side)
    fsd_shaped = callable(getattr(net, "forward_features", None)) and isinstance(getattr(net, "head", None), nn.Module)
    student: EmbeddingNet
    if fsd_shaped:
        z = _shaped(spec, "forward_features", lambda t: net.forward_features(t), net, x)
        if embedding_dim is not None and z.shape[1] != embedding_dim:
            raise InvalidInput(
                f"student {spec!r}: forward_features gives {z.shape[1]}-d embeddings, {embedding_dim} asked for "
                "(take an embedding_dim argument, or return a backbone and let fsd add the embedding layer)"
            )
        student = CodeStudent(net, int(z.shape[1]), num_classes)
        logits = _shaped(spec, "its head", student.forward_head, net, z)
        if logits.shape[1] != num_classes:
            raise InvalidInput(
                f"student {spec!r}: its head gives {logits.shape[1]} classes, the data has {num_classes}"
            )
    else:
        width = int(_shaped(spec, "the model", net, net, x).shape[1])
        student = BackboneStudent(net, width, num_classes, embedding_dim, head, head_scale, head_margin)
    student.code_sha256 = source_sha256(spec, module)
    return student


def check_code_source(spec: str, recorded: str | None) -> None:
    """Warn when a checkpoint's code changed since it was trained (its sha256 differs from the recorded one)."""
    if not recorded:
        return
    _, module = import_factory(spec, "student")
    if source_sha256(spec, module) != recorded:
        warnings.warn(
            f"the code of {spec} changed since this checkpoint was trained: its weights are loaded into the new code",
            RuntimeWarning,
            stacklevel=2,
        )


def _accepted(factory: Callable[..., Any], given: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``factory`` takes by name (all of them when it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: pass nothing it may not take
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(given)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in given.items() if k in names}


def _shaped(
    spec: str, what: str, fn: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor
) -> torch.Tensor:
    """One probe forward that must give a (batch, width) tensor."""
    try:
        out = _probe(fn, model, x)
    except Exception as exc:  # noqa: BLE001 - a model that cannot take the dataset's images
        raise InvalidInput(
            f"student {spec!r}: {what} fails on a {tuple(x.shape)} batch: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidInput(
            f"student {spec!r}: {what} maps a {tuple(x.shape)} batch to {shape}, not (batch, features): pool and "
            "flatten, or return a model with forward_features and head"
        )
    return out
