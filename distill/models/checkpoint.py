"""Checkpoints: a typed description of a trained network, saved atomically, loaded without pickle code.

A checkpoint is a plain dict of tensors and JSON-like values (so ``torch.load(weights_only=True)`` can
read it and a malicious file cannot run code), described by :class:`Checkpoint` and validated once here.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models.registry import create_model
from featstore.atomic import atomic_torch_save, file_sha256
from featstore.errors import CheckpointError, InputNotFound, OutputExists
from featstore.store import fsd_version

CHECKPOINT_FORMAT = 1
KINDS = ("teacher", "student")


@dataclass
class Checkpoint:
    """What fsd needs to rebuild and trust a trained network.

    Attributes:
        kind: ``"teacher"`` or ``"student"``.
        arch: The model's name as :func:`~distill.models.registry.create_model` takes it.
        model_config: Keyword arguments of the model's constructor.
        state_dict: The weights.
        head_type: The classifier head's type (``"linear"``, ``"arcface"``…).
        embedding_dim: The embedding's size.
        num_classes: The head's number of classes.
        dataset: The training data: ``spec``, ``split``, ``fingerprint``, ``image_shape`` (and ``normalisation``).
        extra: The training log, recipe, store provenance and other records.
        format: The checkpoint format version.
        fsd_version: The fsd version that wrote it.
    """

    kind: str  # "teacher" | "student"
    arch: str
    model_config: dict[str, Any]  # keyword arguments of the registered constructor
    state_dict: dict[str, torch.Tensor]
    head_type: str
    embedding_dim: int
    num_classes: int
    dataset: dict[str, Any]  # {spec, split, fingerprint, image_shape}
    extra: dict[str, Any] = field(default_factory=dict)  # training log, recipe, store provenance
    format: int = CHECKPOINT_FORMAT
    fsd_version: str = field(default_factory=fsd_version)

    def build_model(self, *, trust_code: bool = False) -> nn.Module:
        """Rebuild the network with its weights, in eval mode.

        An architecture written in Python code (``module:function``) is rebuilt only with ``trust_code``, and
        warns when that code changed since training.

        Args:
            trust_code: Whether a ``module:function`` architecture may run its Python code.

        Returns:
            The network.

        Raises:
            CheckpointError: Sizes, config or weights that do not fit the architecture.
        """
        sizes = [(k, v) for k, v in [*self.model_config.items(), ("embedding_dim", self.embedding_dim)] if k in SIZES]
        bad = {k: v for k, v in sizes if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0)}
        if bad:  # torch would fail deep inside a layer ("negative dimension"), or build a model of nothing
            raise CheckpointError(
                f"checkpoint {', '.join(f'{k}={v!r}' for k, v in bad.items())}: sizes must be positive integers"
            )
        try:
            model = create_model(self.arch, trust_code=trust_code, **self.model_config)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint model_config does not fit arch {self.arch!r}: {exc}") from None
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint weights do not fit arch {self.arch!r}: {str(exc).splitlines()[0]}"
            ) from None
        if trust_code and self.extra.get("code_sha256"):
            from distill.models.code_models import check_code_source

            check_code_source(self.arch, self.extra["code_sha256"])
        return model.eval()


SIZES = ("embedding_dim", "num_classes", "in_channels")
"""Integer sizes a checkpoint records; each must be positive before a model is built from them."""


def save_checkpoint(ckpt: Checkpoint, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``ckpt`` atomically: the file at ``path`` is either the old one or this complete one.

    Args:
        ckpt: The checkpoint.
        path: Where to write it.
        overwrite: Whether an existing file may be replaced.

    Returns:
        ``path``.

    Raises:
        OutputExists: ``path`` exists and ``overwrite`` is not set.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    payload = asdict(ckpt)
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in ckpt.state_dict.items()}
    atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | Path, *, kind: str | None = None) -> Checkpoint:
    """Load an fsd checkpoint with ``weights_only=True``, so a malicious file cannot run code.

    Args:
        path: The checkpoint file.
        kind: With it, the kind (``"teacher"`` or ``"student"``) the file must be.

    Returns:
        The validated checkpoint.

    Raises:
        InputNotFound: ``path`` is not a file.
        CheckpointError: Anything else that is wrong with the file, in a line a user can read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(
            f"{path} is not a safe fsd checkpoint (refused by weights_only loading: {first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        # a text or random file read as a legacy pickle fails with any of these (KeyError: an unknown opcode)
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fsd checkpoint (format {CHECKPOINT_FORMAT})")
    try:
        ckpt = Checkpoint(**payload)
    except TypeError as exc:
        raise CheckpointError(f"{path} is an fsd checkpoint with unexpected fields ({exc})") from None
    if not isinstance(ckpt.dataset, dict) or not {"spec", "split", "fingerprint", "image_shape"} <= set(ckpt.dataset):
        raise CheckpointError(
            f"{path}: checkpoint lacks its dataset description (spec, split, fingerprint, image_shape)"
        )
    if not isinstance(ckpt.model_config, dict) or not isinstance(ckpt.state_dict, dict):
        raise CheckpointError(f"{path}: checkpoint model_config/state_dict are malformed")
    if ckpt.kind not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {ckpt.kind!r}")
    if kind is not None and ckpt.kind != kind:
        raise CheckpointError(f"{path} is a {ckpt.kind} checkpoint, a {kind} checkpoint is needed")
    return ckpt


def load_teacher_source(path: str | Path):
    """A teacher checkpoint as the :class:`featstore.teacher.TeacherSource` extraction needs."""
    return source_from_checkpoint(load_checkpoint(path, kind="teacher"), path)


def source_from_checkpoint(ckpt: Checkpoint, path: str | Path, *, trust_code: bool = False):
    """Present a loaded checkpoint (teacher or student) as a :class:`featstore.teacher.TeacherSource`.

    The source carries its network, the file's sha256, its training input shape and its head.
    """
    from featstore.teacher import TeacherSource

    model = ckpt.build_model(trust_code=trust_code)
    head = model.head
    return TeacherSource(
        model=model,
        arch=ckpt.arch,
        checkpoint_sha256=file_sha256(path),
        embedding_dim=ckpt.embedding_dim,
        input_shape=list(ckpt.dataset["image_shape"]),
        head_type=ckpt.head_type,
        head_weight=head.weight.detach().cpu().numpy().astype("float32"),
        head_bias=None if head.bias is None else head.bias.detach().cpu().numpy().astype("float32"),
        head_scale=getattr(head, "scale", None),
        head_margin=getattr(head, "margin", None),
    )
