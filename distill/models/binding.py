"""The model binding: one object that ties any model spec to the data it runs on.

Every command that runs a model — ``extract-teacher`` (one process and dask workers), ``store verify
--teacher``, ``eval --model``/``--gallery-model``/``--bin``, ``embed``, ``train-student --online-teacher`` —
goes through this module, so each gets the same rules:

* **which network**: :class:`ModelSpec` loads any spec :func:`distill.models.teachers.load_teacher` takes
  (an fsd checkpoint, ``onnx:``, ``timm:``, ``torchvision:``, ``torchscript:``, ``module:function`` with
  ``trust_code``), and for evaluation also student checkpoints;
* **which input**: a dataset read from files renders at ``--image-size``, else at the model's fixed input
  size (:func:`featstore.teacher.resolve_image_size`); the model is adapted to the dataset's normalisation,
  the input shape is checked, and the first samples are embedded (:func:`featstore.teacher.bind_source`), so
  a misfit is one ``Error:`` line before any output is written;
* **what it gives**: :class:`ModelBinding` — the dataset as rendered for the model, :attr:`ModelBinding.input`
  (shape, layout, channel order, normalisation), a batched :meth:`~ModelBinding.embed` and
  :meth:`~ModelBinding.embed_dataset`, the head (:attr:`ModelBinding.head`, ``None`` for a head-less model)
  and :attr:`ModelBinding.provenance`.

featstore never imports distill: the contract (:class:`featstore.teacher.TeacherBinding`,
:class:`featstore.teacher.TeacherBinder`) and the binding rules live there; this module satisfies them for
every model spec, and :class:`ModelSpec` is picklable so dask workers bind their own copy.

What the binding reads of a network beyond ``forward_features``: ``adapt_to_dataset(dataset)`` (called by
the rules above), and, for describing its input, the optional attributes ``layout`` (``nchw``/``nhwc``),
``bgr`` (bool), ``pixel_mean``/``pixel_std`` (its own 0..255 scaling) and ``recorded_normalisation`` (the
normalisation an fsd export was trained on) — what :class:`distill.models.teacher_onnx.OnnxEmbedder` offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.models.checkpoint import load_checkpoint, source_from_checkpoint
from distill.models.heads import frozen_head
from distill.models.teachers import is_checkpoint_spec, load_teacher
from featstore.datasets import Dataset
from featstore.datasets.base import ImageSize
from featstore.errors import InvalidInput
from featstore.loader import identity_batches
from featstore.progress import progress
from featstore.teacher import (
    DatasetRequest,
    TeacherBinding,
    TeacherSource,
    bind_request,
    bind_source,
    check_embeddings,
    check_input_shape,
)

__all__ = ["ModelBinding", "ModelInput", "ModelSpec", "bind_images", "bind_model", "bind_to_dataset"]

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class ModelInput:
    """What the model is fed: the rendered tensor's shape and normalisation, and how the model itself takes it.

    How it takes it is its layout, channel order and its own pixel scaling when it converts the dataset's.
    """

    shape: tuple[int, ...]  # (C, H, W) of the rendered views
    normalisation: Normalisation | None  # the dataset's (mean, std) on [0, 1] pixels; None: undeclared
    layout: str = "nchw"
    channels: str = "rgb"
    pixel_scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # the model's 0..255 mean/std

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in a store's, a checkpoint's or a report's provenance."""
        return {
            "shape": list(self.shape),
            "normalisation": None if self.normalisation is None else [list(v) for v in self.normalisation],
            "layout": self.layout,
            "channels": self.channels,
            "pixel_scaling": None if self.pixel_scaling is None else [list(v) for v in self.pixel_scaling],
        }


@dataclass
class ModelBinding(TeacherBinding):
    """A model bound to one dataset (see the module docstring); satisfies featstore's binding contract.

    Attributes:
        source: The network and its provenance.
        dataset: The dataset it is bound to (rendered at the size the binding chose).
        probe: The identity-view embeddings of the first samples (the binding's check).
        spec: The model spec as given.
        checkpoint: The fsd checkpoint of a checkpoint spec (eval's ``--th-mix`` reads it), else None.
    """

    spec: str = ""
    checkpoint: Any = None  # the fsd Checkpoint of a checkpoint spec (eval's --th-mix reads it)
    _head: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def of(cls, binding: TeacherBinding, spec: str, checkpoint: Any = None) -> ModelBinding:
        """The model binding of featstore's ``binding``, named by ``spec`` (``checkpoint``: its fsd checkpoint)."""
        return cls(binding.source, binding.dataset, binding.probe, spec=spec, checkpoint=checkpoint)

    @property
    def input(self) -> ModelInput:
        """What the model is fed and how it takes it."""
        model = self.source.model
        mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
        return ModelInput(
            shape=tuple(int(v) for v in self.dataset.image_shape),
            normalisation=getattr(self.dataset, "normalisation", None),
            layout=str(getattr(model, "layout", "nchw")),
            channels="bgr" if getattr(model, "bgr", False) else "rgb",
            pixel_scaling=None if mean is None or std is None else (tuple(mean), tuple(std)),
        )

    @property
    def head(self) -> nn.Module | None:
        """The model's classifier as a frozen head (margin heads give margin-free logits), or None."""
        source = self.source
        if self._head is None and source.has_head:
            bias = None if source.head_bias is None else torch.from_numpy(np.asarray(source.head_bias))
            weight = torch.from_numpy(np.asarray(source.head_weight, dtype=np.float32))
            self._head = frozen_head(source.head_type, weight, bias, source.head_scale, source.head_margin)
        return self._head

    @property
    def provenance(self) -> dict[str, Any]:
        """What a store, a checkpoint or a report records about the model and its input."""
        source = self.source
        head = None if not source.has_head else {"type": source.head_type, "num_classes": source.head_classes}
        return {
            "spec": self.spec,
            "arch": source.arch,
            "checkpoint_sha256": source.checkpoint_sha256,
            "embedding_dim": source.embedding_dim,
            "input": self.input.to_dict(),
            "head": head,
        }

    def logits(self, z: torch.Tensor) -> torch.Tensor | None:
        """The head's logits of embeddings ``z`` (the model's own ``forward_head`` when it has one)."""
        if not self.source.has_head:
            return None
        own = getattr(self.source.model, "forward_head", None)
        if callable(own):
            return own(z)
        return self.head.to(z.device)(z)

    @torch.no_grad()
    def embed_dataset(
        self, device: torch.device, batch_size: int = 512, desc: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Embed the identity view of every sample, read through the dataset's loader (its worker processes).

        Args:
            device: Where the model runs.
            batch_size: Samples per forward pass.
            desc: With it, a progress bar on a terminal.

        Returns:
            (embeddings float32 (N, D), logits float32 (N, C) or None for a head-less model).
        """
        self.to(device)
        dataset = self.dataset
        embeddings, logits = [], []
        batches = identity_batches(dataset, np.arange(len(dataset)), batch_size, device)
        total = -(-len(dataset) // batch_size)
        for rendered in progress(batches, desc=desc, unit="batch", total=total, enabled=desc is not None, leave=False):
            z = self.embed(rendered.x[:, 0].to(device, non_blocking=True))
            embeddings.append(z.float().cpu())
            scores = self.logits(z)
            if scores is not None:
                logits.append(scores.float().cpu())
        width = self.source.embedding_dim or 0
        stacked = torch.cat(embeddings).numpy() if embeddings else np.zeros((0, width), np.float32)
        return stacked, (torch.cat(logits).numpy() if logits else None)


@dataclass(frozen=True)
class ModelSpec:
    """A picklable :class:`featstore.teacher.TeacherBinder` for a model spec.

    Attributes:
        spec: A model spec or an fsd checkpoint path.
        trust_code: Whether ``module:function`` specs may run their Python code.
        drop_head: Whether to leave the model's classifier out.
        students: Whether fsd *student* checkpoints are accepted too (evaluation runs them; extraction and
            verification want a teacher).
    """

    spec: str
    trust_code: bool = False
    drop_head: bool = False
    students: bool = False

    def load(self) -> TeacherSource:
        """The network and its provenance (loaded once per call; a binding keeps it)."""
        source, _ = self._load()
        return source

    def _load(self) -> tuple[TeacherSource, Any]:
        if not (self.students and is_checkpoint_spec(self.spec)):
            return load_teacher(self.spec, trust_code=self.trust_code, drop_head=self.drop_head), None
        ckpt = load_checkpoint(self.spec)
        source = source_from_checkpoint(ckpt, self.spec, trust_code=self.trust_code)
        return (source.without_head() if self.drop_head else source), ckpt

    def bind(self, request: DatasetRequest, source: TeacherSource | None = None) -> ModelBinding:
        """Load the model (unless given) and bind it to the dataset ``request`` names."""
        checkpoint = None
        if source is None:
            source, checkpoint = self._load()
        return ModelBinding.of(bind_request(source, request), self.spec, checkpoint)


def bind_model(
    spec: str | Path,
    dataset: str,
    split: str,
    *,
    image_size: ImageSize | None = None,
    loader_workers: int | None = None,
    skip_bad_samples: bool = False,
    fallback_image_size: ImageSize | None = None,
    trust_code: bool = False,
    drop_head: bool = False,
    students: bool = False,
) -> ModelBinding:
    """Bind the model ``spec`` names to the ``dataset`` spec's ``split``.

    Args:
        spec: A model spec (see :func:`distill.models.teachers.load_teacher`) or an fsd checkpoint path.
        dataset: The dataset spec it runs on.
        split: The split of that dataset.
        image_size: ``--image-size``: the size a dataset read from files renders at (default: the model's
            fixed input size, else ``fallback_image_size``, else the dataset's own).
        loader_workers: DataLoader processes reading the dataset (None: from the CPU count).
        skip_bad_samples: Whether unreadable images are left out rather than refused.
        fallback_image_size: The render size when neither ``image_size`` nor the model fixes one.
        trust_code: Whether ``module:function`` specs may run their Python code.
        drop_head: Whether to leave the model's classifier out.
        students: Whether fsd student checkpoints are accepted too.

    Returns:
        The model bound to the dataset, probed with one batch.

    Raises:
        InvalidInput: A misfit between model and data (input shape, width, failing forward).
    """
    request = DatasetRequest(
        dataset,
        split,
        image_size=image_size,
        loader_workers=loader_workers,
        skip_bad_samples=skip_bad_samples,
        fallback_image_size=fallback_image_size,
    )
    return ModelSpec(str(spec), trust_code=trust_code, drop_head=drop_head, students=students).bind(request)


def bind_to_dataset(
    spec: str | Path, dataset: Dataset, *, trust_code: bool = False, drop_head: bool = False
) -> ModelBinding:
    """Bind a model to a dataset its caller already loaded (training's own split)."""
    source = ModelSpec(str(spec), trust_code=trust_code, drop_head=drop_head).load()
    return ModelBinding.of(bind_source(source, dataset), str(spec))


def bind_images(
    spec: str | Path,
    *,
    image_size: int | None,
    default_size: int,
    default_normalisation: Normalisation,
    trust_code: bool = False,
) -> ModelBinding:
    """Bind a model to images that come from no dataset (verification ``.bin`` files, face folders).

    The images are RGB at ``image_size``, else the model's fixed input size, else ``default_size``; scaled with
    the normalisation the model was trained on when it records one (an fsd checkpoint, an ONNX file
    ``fsd export`` wrote), else ``default_normalisation``. One blank batch is embedded to check the model takes
    that input.

    Args:
        spec: A model spec or an fsd checkpoint (teacher or student).
        image_size: The images' side (None: see above).
        default_size: The side when neither ``image_size`` nor the model fixes one.
        default_normalisation: (mean, std) on [0, 1] pixels when the model records none.
        trust_code: Whether ``module:function`` specs may run their Python code.

    Returns:
        The model bound to images of that size and scaling.

    Raises:
        InvalidInput: A model that does not take 3-channel images of that size.
    """
    model_spec = ModelSpec(str(spec), trust_code=trust_code, students=True)
    source, checkpoint = model_spec._load()
    recorded = (checkpoint.dataset.get("normalisation") if checkpoint is not None else None) or getattr(
        source.model, "recorded_normalisation", None
    )
    norm = tuple(tuple(float(v) for v in part) for part in recorded) if recorded else default_normalisation
    size = image_size or (int(source.input_shape[-1]) if source.input_shape else default_size)
    images = SimpleNamespace(
        spec=f"images of {size}×{size}", split=None, normalisation=norm, image_shape=(3, size, size)
    )
    if source.input_shape is not None and int(source.input_shape[0]) != 3:
        raise InvalidInput(f"{spec} takes {source.input_shape[0]}-channel images; these images are RGB")
    adapt = getattr(source.model, "adapt_to_dataset", None)
    if adapt is not None:
        adapt(images)
    check_input_shape(source, [3, size, size], images.spec)
    probe = check_embeddings(source, torch.zeros(2, 3, size, size), images.spec)
    return ModelBinding(source, images, probe, spec=str(spec), checkpoint=checkpoint)  # type: ignore[arg-type]
