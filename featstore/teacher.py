"""The teacher contract: what featstore needs of a network, and how a network is bound to one dataset.

featstore never imports distill, so it defines the contract and the binding rules here and the model zoo
(``distill.models.binding``) builds objects that satisfy them:

* :class:`TeacherSource` — a loaded network (``forward_features``) with its provenance and its head, or
  ``None`` for a head-less embedding model.
* :class:`TeacherBinding` — a source bound to one dataset: the dataset as rendered for the network, the
  network adapted to the dataset's normalisation, the input shape checked and the embedding width probed
  on the first samples. Every command that runs a teacher over data holds one.
* :class:`TeacherBinder` — a picklable recipe that loads the teacher and binds it to a
  :class:`DatasetRequest`; dask workers get the recipe and bind their own copy.

The rules live in one place: :func:`resolve_image_size` (which size a dataset read from files renders at),
:func:`bind_source` (normalisation hook, input shape, probe) and :func:`bind_request` (both, plus loading
the dataset). A network that wants another pixel scaling than the dataset's tensors defines
``adapt_to_dataset(dataset)`` (an ONNX face model does); :func:`bind_source` calls it.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from featstore.datasets import Dataset, LoadOptions, load_dataset
from featstore.datasets.base import ImageSize, renders_any_size
from featstore.errors import FsdError, InvalidInput
from featstore.loader import identity_batches

PROBE_ROWS = 8  # samples embedded at binding time: the width, the error of a misfit input, the value range


@dataclass
class TeacherSource:
    """A loaded teacher plus the provenance the store records about it.

    Attributes:
        model: an ``nn.Module`` (or any object) with ``forward_features(x) -> (batch, embedding_dim)``.
        arch: the teacher's name, recorded in the store and named in messages.
        checkpoint_sha256: the sha256 of the weights it is loaded from (resume identity).
        embedding_dim: D; None until the binding's probe, for a head-less teacher of unknown width.
        input_shape: the fixed input ``[C, H, W]``, or None for a teacher that takes any input.
        head_type: the classifier's kind; None with ``head_weight`` None for a head-less embedding model.
        head_weight: the classifier's (C, D) weights, or None.
        head_bias: its (C,) bias, or None.
        head_scale: the scale of a margin head (ArcFace, CosFace), or None.
        head_margin: the margin of a margin head, or None.
    """

    model: Any  # an nn.Module with forward_features(x) -> (batch, embedding_dim)
    arch: str
    checkpoint_sha256: str
    embedding_dim: int | None  # None until the binding's probe, for a head-less teacher of unknown width
    input_shape: list[int] | None  # None: any input (teachers brought as code or TorchScript)
    head_type: str | None  # None with head_weight None: a head-less embedding model (ONNX, pooled timm)
    head_weight: np.ndarray | None  # (C, D)
    head_bias: np.ndarray | None
    head_scale: float | None = None
    head_margin: float | None = None

    @property
    def has_head(self) -> bool:
        """Whether the teacher comes with a classifier."""
        return self.head_weight is not None

    @property
    def head_classes(self) -> int | None:
        """The number of classes the head scores, or None for a head-less teacher."""
        return None if self.head_weight is None else int(np.asarray(self.head_weight).shape[0])

    def without_head(self) -> TeacherSource:
        """Return the same network as a head-less embedding model (its classifier left out of the store)."""
        return dataclasses.replace(
            self, head_type=None, head_weight=None, head_bias=None, head_scale=None, head_margin=None
        )


@dataclass(frozen=True)
class DatasetRequest:
    """Which dataset a teacher is bound to and how it is read (picklable: dask workers receive it).

    Attributes:
        spec: the dataset spec (``digits``, ``folder:DIR?size=64``, ...).
        split: the split to read.
        image_size: ``--image-size``: S (a square) or (H, W); None to let the teacher or the fallback decide.
        loader_workers: decoding processes (None: the default, 0: this process).
        skip_bad_samples: leave unreadable samples out rather than stop.
        fallback_image_size: the size of a dataset read from files when neither the option nor the teacher
            fixes one (``store verify`` passes the size the store records).
    """

    spec: str
    split: str
    image_size: ImageSize | None = None  # S (a square) or (H, W)
    loader_workers: int | None = None
    skip_bad_samples: bool = False
    fallback_image_size: ImageSize | None = None

    def in_process(self) -> DatasetRequest:
        """Return the same request decoded in this process (dask workers are the parallelism, and daemons)."""
        return dataclasses.replace(self, loader_workers=0)


@dataclass
class TeacherBinding:
    """A teacher bound to one dataset (see :func:`bind_source`).

    Attributes:
        source: the teacher.
        dataset: the dataset as rendered for it.
        probe: (n, D) float32 identity-view embeddings of the first readable samples.
    """

    source: TeacherSource
    dataset: Dataset
    probe: np.ndarray  # (n, D) float32: the identity-view embeddings of the first samples

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of this dataset's rendered views.

        Args:
            x: (batch, C, H, W) rendered views, on the network's device.

        Returns:
            The (batch, D) embeddings.
        """
        return self.source.model.forward_features(x)

    def to(self, device: torch.device | str) -> TeacherBinding:
        """Move the network to ``device`` in eval mode.

        Args:
            device: where the network runs.

        Returns:
            This binding.
        """
        self.source.model.eval().to(torch.device(device))
        return self


@runtime_checkable
class TeacherBinder(Protocol):
    """A picklable recipe that loads a teacher and binds it to a dataset request."""

    def bind(self, request: DatasetRequest, source: TeacherSource | None = None) -> TeacherBinding:
        """Bind ``source`` (loaded now when None) to the dataset ``request`` names."""
        ...

    def load(self) -> TeacherSource:
        """Load the teacher network and its provenance."""
        ...


TeacherLoader = Callable[[], TeacherSource] | tuple[Callable[[Any], TeacherSource], Any]


@dataclass(frozen=True)
class SourceBinder:
    """A :class:`TeacherBinder` over a loader function that returns a :class:`TeacherSource`.

    It is the Python API's way of naming a teacher without distill: ``loader(*arguments)`` loads it.
    """

    loader: Callable[..., TeacherSource]
    arguments: tuple[Any, ...] = ()

    def load(self) -> TeacherSource:
        """Load the teacher: ``loader(*arguments)``."""
        return self.loader(*self.arguments)

    def bind(self, request: DatasetRequest, source: TeacherSource | None = None) -> TeacherBinding:
        """Bind ``source`` (loaded now when None) to the dataset ``request`` names."""
        return bind_request(self.load() if source is None else source, request)


def as_binder(teacher: TeacherBinder | TeacherLoader) -> TeacherBinder:
    """Make a binder from a binder, a zero-argument loader or a picklable ``(function, argument)`` pair.

    Args:
        teacher: what the caller names the teacher with.

    Returns:
        ``teacher`` itself when it is a binder, else a :class:`SourceBinder` over the loader.

    Raises:
        InvalidInput: ``teacher`` is none of the three.
    """
    if isinstance(teacher, TeacherBinder):
        return teacher
    if isinstance(teacher, tuple):
        if len(teacher) != 2 or not callable(teacher[0]):
            raise InvalidInput("teacher loader must be a callable or a (function, argument) pair")
        return SourceBinder(teacher[0], (teacher[1],))
    if not callable(teacher):
        raise InvalidInput("teacher loader must be a callable or a (function, argument) pair")
    return SourceBinder(teacher)


def resolve_image_size(source: TeacherSource, request: DatasetRequest) -> ImageSize | None:
    """Choose the size a dataset read from files renders at.

    Args:
        source: the teacher, whose fixed input (if any) decides when the request gives no size.
        request: the dataset request.

    Returns:
        ``--image-size``, else the teacher's fixed input (H, W), else the request's fallback; None for an
        in-memory dataset, which has its own size.
    """
    if request.image_size is not None:
        return request.image_size
    if not renders_any_size(request.spec):
        return None
    if source.input_shape:
        return (int(source.input_shape[1]), int(source.input_shape[2]))
    return request.fallback_image_size


def bind_request(source: TeacherSource, request: DatasetRequest) -> TeacherBinding:
    """Load the dataset ``request`` names at the size the teacher wants and bind ``source`` to it.

    Args:
        source: the loaded teacher.
        request: the dataset to load.

    Returns:
        The binding (see :func:`bind_source`).

    Raises:
        InvalidInput: the dataset cannot be loaded, or the teacher does not fit it.
    """
    options = LoadOptions(workers=request.loader_workers, skip_bad_samples=request.skip_bad_samples)
    size = resolve_image_size(source, request)
    return bind_source(source, load_dataset(request.spec, request.split, image_size=size, options=options))


def bind_source(source: TeacherSource, dataset: Dataset) -> TeacherBinding:
    """Bind a loaded teacher to a loaded dataset.

    Adapts the teacher to the dataset's normalisation, checks the input shape, and embeds the first samples
    on the network's device: that gives the width a head-less teacher does not declare, and a one-line error
    for a network that cannot take these inputs, before anything is written.

    Args:
        source: the loaded teacher.
        dataset: the loaded dataset.

    Returns:
        The binding, holding the probe embeddings.

    Raises:
        InvalidInput: the teacher's input shape or output does not fit the dataset.
    """
    adapt = getattr(source.model, "adapt_to_dataset", None)
    if adapt is not None:  # e.g. an ONNX teacher converting this dataset's normalisation to its own
        adapt(dataset)
    check_input_shape(source, list(dataset.image_shape), f"dataset {dataset.spec}")
    probe = probe_embeddings(source, dataset)
    return TeacherBinding(source, dataset, probe)


def check_input_shape(source: TeacherSource, shape: list[int], where: str) -> None:
    """Refuse images of another shape than a teacher's fixed input, naming the option to change.

    Args:
        source: the teacher.
        shape: the images' ``[C, H, W]``.
        where: what gives the images, for the message.

    Raises:
        InvalidInput: the teacher has a fixed input and ``shape`` is not it.
    """
    if source.input_shape is not None and list(source.input_shape) != list(shape):
        height, width = source.input_shape[1:]
        size = f"--image-size {height}" if height == width else f"the dataset spec's size={height},{width}"
        hint = f" (render it with {size})" if list(source.input_shape[1:]) != list(shape[1:]) else ""
        raise InvalidInput(
            f"teacher {source.arch!r} expects input {list(source.input_shape)}, {where} gives {shape}{hint}"
        )


@torch.no_grad()
def probe_embeddings(source: TeacherSource, dataset: Dataset, rows: int = PROBE_ROWS) -> np.ndarray:
    """Embed the identity view of the first ``rows`` readable samples (in this process), checking the output.

    The output must be (batch, embedding_dim); this sets the width of a teacher that declares none. With
    ``skip_bad_samples`` unreadable samples are passed over (none readable: an empty probe, which the
    extraction reports).

    Args:
        source: the teacher.
        dataset: the dataset it is bound to.
        rows: how many samples to embed.

    Returns:
        (n, D) float32 embeddings, n <= ``rows``.

    Raises:
        InvalidInput: the teacher fails on the input or returns another shape.
    """
    x = _first_readable(dataset, rows)
    if x is None:
        return np.zeros((0, source.embedding_dim or 0), np.float32)
    return check_embeddings(source, x, f"dataset {dataset.spec}")


@torch.no_grad()
def check_embeddings(source: TeacherSource, x: torch.Tensor, where: str) -> np.ndarray:
    """Run ``source`` on the batch ``x`` and check its output shape.

    Args:
        source: the teacher; a head-less one of unknown width gets its ``embedding_dim`` here.
        x: a batch of rendered views.
        where: what gives the batch, for the message.

    Returns:
        The (batch, D) float32 embeddings.

    Raises:
        InvalidInput: the teacher raises on ``x``, returns no tensor, or returns another shape.
    """
    try:
        out = source.model.eval().forward_features(x.to(_model_device(source.model)))
    except FsdError:  # the teacher's own one-line account of what went wrong
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the user's model raises on this input
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise InvalidInput(
            f"teacher {source.arch!r} fails on a {list(x.shape[1:])} input of {where}: {type(exc).__name__}: {first}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise InvalidInput(f"teacher {source.arch!r} returns {type(out).__name__}, not a (batch, D) tensor")
    width = int(out.shape[-1]) if out.ndim == 2 and out.shape[0] == x.shape[0] else None
    if source.embedding_dim is None and width is not None:  # a head-less teacher declares no width
        source.embedding_dim = width
    if width is None or width != source.embedding_dim:
        expects = "its head expects" if source.has_head else "it declares"
        raise InvalidInput(
            f"teacher {source.arch!r} returns embeddings of shape {tuple(out.shape)} but {expects} "
            f"(batch, {source.embedding_dim})"
        )
    return out.float().cpu().numpy()


def check_head_classes(teacher: TeacherSource, num_classes: int, where: str) -> None:
    """Refuse a teacher head over another number of classes than the dataset's, naming the ways out.

    Such a head cannot teach the dataset (TH-KD would crash mid-training on the logits' shape).

    Args:
        teacher: the teacher.
        num_classes: the dataset's classes.
        where: the dataset, for the message.

    Raises:
        InvalidInput: the head scores another number of classes.
    """
    if teacher.has_head and teacher.head_classes != int(num_classes):
        raise InvalidInput(
            f"teacher {teacher.arch!r} has a head over {teacher.head_classes} classes but dataset "
            f"{where} has {num_classes}: extract without it (--drop-head) and fit one on the stored embeddings "
            "with fsd store fit-head"
        )


def _first_readable(dataset: Dataset, rows: int) -> torch.Tensor | None:
    """Return view 0 of the first ``rows`` samples that read, or None when none reads.

    They are decoded in this process: for a probe, worker processes cost more than they save.
    """
    quick = copy.copy(dataset)
    quick.options = dataclasses.replace(dataset.options, workers=0)
    parts: list[torch.Tensor] = []
    with warnings.catch_warnings():  # a skipped sample is reported by the command itself, once
        warnings.simplefilter("ignore", RuntimeWarning)
        for rendered in identity_batches(quick, np.arange(len(dataset)), rows):
            if len(rendered.rows):
                parts.append(rendered.x[:, 0])
            if sum(len(p) for p in parts) >= rows:
                break
    return torch.cat(parts)[:rows] if parts else None


def _model_device(model: Any) -> torch.device:
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")
