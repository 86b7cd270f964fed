"""Bring your own teacher: the one factory for every way a command can name a network.

The commands' ``--teacher``, ``--model`` and ``--online-teacher`` all go through :func:`load_teacher`.

A spec is ``SCHEME:ARGUMENT`` for a registered scheme (:data:`distill.models.registry.TEACHER_SOURCES`),
``module:function`` (Python code), or a path to an fsd checkpoint:

* ``PATH`` — an fsd teacher checkpoint (``fsd train-teacher``), loaded with ``weights_only=True``.
* ``onnx:PATH[?size=…&mean=…&std=…]`` — an ONNX embedding model (:mod:`distill.models.teacher_onnx`).
* ``timm:NAME[?weights=PATH]``, ``torchvision:NAME[?weights=PATH]`` — library backbones with local weights
  (:mod:`distill.models.teacher_hub`).
* ``torchscript:PATH`` — a TorchScript file whose module has an exported ``forward_features(x)`` (or whose
  ``forward(x)`` returns the embedding) and a ``head`` submodule with ``weight`` (C, D) [and ``bias``].
* ``module:function`` — Python code returning ``(model, embed_fn, head)``: ``embed_fn(x)`` gives the
  embedding, ``head`` is the classifier (an ``nn.Linear`` or an fsd head, or None for a head-less model). It
  runs arbitrary code, so it is accepted only with an explicit ``--trust-code`` (``trust_code=True``).

A teacher without a classifier gives a head-less store; ``fsd store fit-head`` trains one on the stored
embeddings afterwards. ``drop_head=True`` leaves a teacher's own head out (one over other classes).

Provenance: a checkpoint or TorchScript file is identified by its sha256; code by the sha256 of the
spec and of its module's source file, so editing the code makes a resumed extraction refuse the old store.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models import teacher_hub, teacher_onnx  # noqa: F401  (registration side effects)
from distill.models.checkpoint import load_teacher_source
from distill.models.code_models import call_factory, foreign_failure, import_factory, is_code_spec, source_digest
from distill.models.registry import TEACHER_SOURCES
from distill.models.teacher_source import source_from_parts
from featstore.atomic import file_sha256
from featstore.errors import CheckpointError, FsdError, InputNotFound, InvalidInput


class _EmbedAdapter(nn.Module):
    """Gives any (model, embed_fn) pair the ``forward_features`` extraction calls.

    What the user's function returns is checked on every call: a (batch, width) tensor, or one ``Error:``
    line saying what it gave.
    """

    def __init__(self, model: nn.Module, embed_fn, arch: str) -> None:
        super().__init__()
        self.model = model
        self._embed = embed_fn
        self.arch = arch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self._embed(x)
        except FsdError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code failed on this batch
            raise InvalidInput(
                f"teacher {self.arch!r}: its embedding function fails on a {tuple(x.shape)} batch: "
                f"{foreign_failure(exc)}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidInput(
                f"teacher {self.arch!r}: its embedding function maps a {tuple(x.shape)} batch to {got}, not a "
                "(batch, width) torch tensor"
            )
        return out


def _source(model: nn.Module, embed_fn, head, arch: str, sha: str):
    return source_from_parts(_EmbedAdapter(model, embed_fn, arch), head, arch, sha)


def _torchscript(path: Path):
    if not path.is_file():
        raise InputNotFound(f"TorchScript teacher {path} does not exist")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what users ship
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for "not TorchScript"
        raise CheckpointError(f"{path} is not a loadable TorchScript module ({type(exc).__name__})") from None
    embed = module.forward_features if hasattr(module, "forward_features") else module.forward
    head = getattr(module, "head", None)  # none: a head-less embedding model
    return _source(module, embed, head, f"torchscript:{path.name}", file_sha256(path))


@TEACHER_SOURCES.register("torchscript")
def _torchscript_source(argument: str, spec: str):
    return _torchscript(Path(argument))


def _function(spec: str):
    factory, module = import_factory(spec, "teacher")
    result = call_factory(factory, spec, "teacher")
    if not (isinstance(result, tuple) and len(result) == 3):
        raise InvalidInput(f"teacher {spec!r} must return (model, embed_fn, head)")
    model, embed_fn, head = result
    # The identity a store records: the spec, the factory's source and the weights it returned — a factory
    # that loads its weights from a file keeps its source when the weights change.
    digest = source_digest(spec, module)
    for part in (model, head):
        if part is not None:
            _hash_state(digest, part)
    return _source(model, embed_fn, head, spec, digest.hexdigest())


def _hash_state(digest: Any, module: Any) -> None:
    """Feed every tensor of ``module``'s state (name, dtype, shape, bytes) to ``digest``."""
    state = module.state_dict() if hasattr(module, "state_dict") else {}
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())


def is_checkpoint_spec(spec: str | Path) -> bool:
    """True when ``spec`` names an fsd checkpoint file rather than a scheme or Python code.

    This is the rule :func:`load_teacher` applies.
    """
    text = str(spec)
    if Path(text).exists():
        return True
    scheme, sep, _ = text.partition(":")
    return not ((sep and scheme in TEACHER_SOURCES) or is_code_spec(text))


def load_teacher(spec: str | Path, *, trust_code: bool = False, drop_head: bool = False):
    """A :class:`featstore.teacher.TeacherSource` from any supported teacher spec.

    Args:
        spec: A teacher spec (the forms the module docstring lists).
        trust_code: Accept a ``module:function`` spec, which runs arbitrary code.
        drop_head: Leave the teacher's own classifier out.

    Returns:
        The teacher source.

    Raises:
        InvalidInput: A ``module:function`` spec without ``trust_code``, or a teacher that cannot be used.
        InputNotFound: A file the spec names that does not exist.
        CheckpointError: A file that is not a loadable checkpoint or TorchScript module.
    """
    text = str(spec)
    scheme, sep, rest = text.partition(":")
    if sep and scheme in TEACHER_SOURCES and not Path(text).exists():
        source = TEACHER_SOURCES.get(scheme)(rest, text)
    elif is_code_spec(text) and not Path(text).exists():
        if not trust_code:
            raise InvalidInput(
                f"teacher {text!r} is neither a file nor one of {', '.join(TEACHER_SOURCES.names())}:…; as Python "
                "code (module:function) it runs only with --trust-code"
            )
        source = _function(text)
    else:
        source = load_teacher_source(text)
    return source.without_head() if drop_head else source
