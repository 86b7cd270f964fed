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
import traceback
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
    """The function a ``module:function`` spec names, and its module (the current directory importable).

    Importing runs the module's code: whatever it raises (a syntax error, a failing top-level statement, a
    ``sys.exit``) is one line naming the spec, the exception and the line of the user's file it came from.
    """
    module_name, _, function_name = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InvalidInput(f"{role} {spec!r}: cannot import it ({exc})") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own code failed while importing
        raise InvalidInput(f"{role} {spec!r}: importing {module_name} failed: {foreign_failure(exc)}") from None
    factory = getattr(module, function_name, None)
    if factory is None:
        raise InvalidInput(f"{role} {spec!r}: cannot import it (module {module_name} has no {function_name})")
    if not callable(factory):
        raise InvalidInput(f"{role} {spec!r}: {function_name} is not a function")
    return factory, module


def call_factory(factory: Callable[..., Any], spec: str, role: str, **arguments: Any) -> Any:
    """Call the user's function; its own failure (a ``sys.exit`` included) is one line naming it and where."""
    try:
        return factory(**arguments)
    except FsdError:  # already one readable line (e.g. a checkpoint the function loads)
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of foreign code becomes one line
        raise InvalidInput(f"{role} {spec!r} failed: {foreign_failure(exc)}") from None


def foreign_failure(exc: BaseException) -> str:
    """Describe an exception raised by the user's code as ``Type: message (at file.py:LINE)``.

    The message is its first line; the frame is the deepest outside torch and fsd (where the user's code went
    wrong), else the deepest.

    A ``SystemExit`` reads as ``sys.exit(CODE)``: a factory that exits must not end fsd silently.
    """
    if isinstance(exc, SystemExit):
        what = f"it called sys.exit({exc.code!r})"
    elif isinstance(exc, SyntaxError):
        what = f"SyntaxError: {exc.msg}"
    else:
        text = str(exc).strip()
        what = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{what} (at {Path(exc.filename).name}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not _library_file(f.filename)]
    frame = (own or frames or [None])[-1]
    return what if frame is None else f"{what} (at {Path(frame.filename).name}:{frame.lineno})"


def _library_file(filename: str) -> bool:
    """Whether a traceback frame belongs to torch, fsd's packages or Python's import machinery."""
    if filename.startswith("<frozen"):
        return True
    path = Path(filename).resolve()
    return any(root in path.parents for root in _LIBRARY_ROOTS)


_FSD_ROOT = Path(__file__).resolve().parents[2]
_LIBRARY_ROOTS = (
    Path(torch.__file__).resolve().parent,
    *(_FSD_ROOT / name for name in ("distill", "featstore", "cli")),
)
"""Folders whose frames are not the user's: torch's and fsd's three packages."""


def source_digest(spec: str, module: ModuleType) -> Any:
    """A sha256 fed the spec and the module's source file: what identifies code across runs.

    Callers may feed it more (a teacher's weights).
    """
    digest = hashlib.sha256(spec.encode())
    source_file = inspect.getsourcefile(module)
    if source_file:
        digest.update(Path(source_file).read_bytes())
    return digest


def source_sha256(spec: str, module: ModuleType) -> str:
    """The hex digest of :func:`source_digest` of ``spec`` and ``module``."""
    return source_digest(spec, module).hexdigest()


class CodeStudent(EmbeddingNet):
    """An fsd-shaped model from user code: its ``forward_features``, and its ``head`` (or ``forward_head``).

    Args:
        net: The user's model.
        embedding_dim: The width of its ``forward_features``.
        num_classes: Its head's number of classes.
    """

    def __init__(self, net: nn.Module, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.embedding_dim, self.num_classes = embedding_dim, num_classes

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        """The user model's classifier head."""
        return self.net.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The user model's embedding of ``x``."""
        return self.net.forward_features(x)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """The logits of embeddings ``z``: the user model's ``forward_head`` when it has one, else its head."""
        own = getattr(self.net, "forward_head", None)
        return own(z) if callable(own) else self.net.head(z)


PROBE_BATCHES = (2, 3)
"""Batch sizes of the build-time probe, each run in eval and in train mode. Two sizes catch a width that
depends on the batch; train mode catches code that fails only while training (BatchNorm needs 2 rows)."""


@torch.no_grad()
def _probe(fn: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor, train: bool) -> Any:
    """Run ``fn(x)`` with ``model`` in train or eval mode, leaving the model as it was.

    What is restored is its mode, its buffers (train-mode BatchNorm updates running statistics) and the global
    RNG (dropout draws from it).
    """
    was_training = model.training
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        model.train(train)
        try:
            return fn(x)
        finally:
            model.train(was_training)
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


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
    """Build the student a ``module:function`` spec names (see the module docstring), probed once.

    Trust is checked by the caller.

    Args:
        spec: ``module:function``.
        num_classes: The data's number of classes.
        in_channels: The images' channels.
        embedding_dim: The embedding's size (None: the model's own width).
        input_size: The images' side (the probe's; None: 32).
        head: A backbone's head type (an fsd-shaped model keeps its own head).
        head_scale: A margin head's scale s (None: the head's default).
        head_margin: A margin head's margin m (None: the head's default).

    Returns:
        The student, with the sha256 of its code in ``code_sha256``.

    Raises:
        InvalidInput: The code fails, or the model it returns has the wrong type or shape.
    """
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
    x = torch.randn(max(PROBE_BATCHES), in_channels, side, side, generator=torch.Generator().manual_seed(0))
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
    """Probe forwards that must each give a (batch, width) tensor of one width.

    Every batch size of :data:`PROBE_BATCHES` (rows of ``x``) runs in eval and in train mode.

    Returns:
        The eval-mode output on all of ``x``.
    """
    first: torch.Tensor | None = None
    whole: torch.Tensor | None = None
    for train in (False, True):
        mode = "in train mode" if train else "in eval mode"
        for rows in PROBE_BATCHES:
            batch = x[:rows]
            try:
                out = _probe(fn, model, batch, train)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a model that cannot take the dataset's images
                raise InvalidInput(
                    f"student {spec!r}: {what} fails {mode} on a {tuple(batch.shape)} batch: {foreign_failure(exc)}"
                ) from None
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != rows:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InvalidInput(
                    f"student {spec!r}: {what} maps a {tuple(batch.shape)} batch to {shape} {mode}, not (batch, "
                    "features): pool and flatten, or return a model with forward_features and head"
                )
            if not train and rows == x.shape[0]:
                whole = out
            if first is None:
                first = out
            elif out.shape[1] != first.shape[1]:
                raise InvalidInput(
                    f"student {spec!r}: {what} gives {first.shape[1]} features on a batch of {PROBE_BATCHES[0]} in "
                    f"eval mode but {out.shape[1]} on a batch of {rows} {mode}: its width must depend on neither the batch size nor the mode"
                )
    assert whole is not None, "PROBE_BATCHES must include the rows of x"
    return whole
