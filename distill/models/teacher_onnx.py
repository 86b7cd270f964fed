"""``onnx:PATH[?size=112&mean=127.5&std=127.5&layout=nchw&channels=rgb&output=NAME]`` — an ONNX model as a teacher.

The models face users hold (insightface's released ``w600k_r50.onnx``, ``glintr100.onnx`` …) are ONNX
files of the embedding network only: no classifier, a fixed 112×112 input, and pixels scaled as
(p − 127.5) / 127.5 on 0..255 RGB values. fsd's datasets hand over tensors already normalised their own way
(``ImageDataset.normalisation``), so this adapter turns them back into pixels and into the model's scaling:
x_model = (255·(x·std_d + mean_d) − mean) / std, per channel, fixed once per dataset. Pixels that come
back as whole 0..255 levels (up to float32 rounding: every image decoded from an 8-bit file) are rounded to
them first, so the model sees exactly the (p − mean) / std its authors computed.

Where each setting comes from, first match wins:

* options after ``?`` (``size`` S or H,W; ``mean``, ``std`` in 0..255 pixel units; ``layout`` nchw|nhwc;
  ``channels`` rgb|bgr; ``output`` the embedding output's name or index);
* the model's metadata (``custom_metadata_map``): ``mean``/``std``/``channels``/``layout``/``output``, and
  ``fsd.normalisation`` (JSON), which ``fsd export`` writes: how the network's training data was scaled;
* the model's input: its layout and size when the dimensions are fixed, its element type.

Models as they are found in the wild, and what the adapter does with them:

* **a fixed batch dimension** (torch's export without ``dynamic_axes``): batches run in slices of that size,
  the last one padded by repeating its last sample, the padding's outputs dropped;
* **fixed or dynamic height and width**: a fixed side must match the dataset's (checked against each
  dataset); ``?size=`` fixes dynamic ones (and must agree with fixed ones);
* **NCHW or NHWC**, read from where the channel axis (1 or 3 wide) sits; ``?layout=`` settles an
  ambiguous shape and is refused where it contradicts the model's;
* **several outputs**: ``?output=NAME`` (or index) picks one; without it the embedding is found from the
  graph (:mod:`distill.models.onnx_outputs`) or the model is refused with its outputs listed — logits are
  never stored silently;
* **float16 (or float64) inputs**: batches are cast to the input's type and outputs back to float32.

Every declared size is checked against :data:`MAX_SIDE` and :data:`MAX_ELEMENTS` before anything is
allocated. With no mean/std anywhere the model is fed the dataset's tensors unchanged (right for models
exported by fsd, and for models trained on the same normalisation). Runs with onnxruntime: the CUDA provider
when onnxruntime offers it, else the CPU, with torch's thread count; onnxruntime's own log is silenced (its
failures become one ``Error:`` line).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.models.onnx_outputs import choose_embedding, resolve_output
from distill.models.registry import TEACHER_SOURCES
from featstore.atomic import file_sha256
from featstore.datasets import MAX_IMAGE_SIZE
from featstore.errors import CheckpointError, InputNotFound, InvalidInput
from featstore.spec_query import SpecQuery
from featstore.teacher import TeacherSource

OPTIONS = ("size", "mean", "std", "layout", "channels", "output")
MAX_SIDE = MAX_IMAGE_SIZE  # the largest side fsd renders, so fed to a model (a declared 100000 is refused)
MAX_ELEMENTS = 2**28  # the largest input one call may take: batch × C × H × W values (1 GiB of float32)
_FLOAT_INPUTS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_SILENT = 4  # onnxruntime's log severity that prints nothing below fatal
_WHOLE_LEVEL = 1e-3  # pixels this close to whole 0..255 levels are 8-bit values seen through float32


def _session(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a dependency of fsd
        raise InvalidInput("onnx: teachers need the onnxruntime package (pip install onnxruntime)") from None
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - no GPU here
        providers.insert(0, "CUDAExecutionProvider")
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = max(1, torch.get_num_threads())
    settings.log_severity_level = _SILENT  # failures are raised (and reported once), never logged in colour
    try:
        return ort.InferenceSession(str(path), sess_options=settings, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds for "not a model"
        raise CheckpointError(f"{path} is not a loadable ONNX model ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The onnxruntime message on one line, without its error-code prefix and C++ source locations."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+ .*? was false\. ", "", text)
    return text[:300]


def _dim(value: Any) -> int | None:
    """A declared dimension: its size when fixed, None when symbolic or unknown."""
    return int(value) if isinstance(value, int) and value > 0 else None


def _layout(spec: str, shape: list[Any], setting: SpecQuery) -> str:
    """NCHW or NHWC, from where the channel axis sits.

    A layout the option or metadata gives is checked against the shape.
    """
    first, last = _dim(shape[1]), _dim(shape[3])
    nchw, nhwc = first in (1, 3), last in (1, 3)
    inferred = "nchw" if nchw and not nhwc else "nhwc" if nhwc and not nchw else None
    layout = setting.choice("layout", None, ("nchw", "nhwc"))
    if layout is None:
        return inferred or "nchw"
    if inferred is not None and layout != inferred:
        raise InvalidInput(
            f"teacher {spec!r}: layout={layout} contradicts the model's input {_shape(shape)}, which is "
            f"{inferred.upper()} (its channels are axis {1 if inferred == 'nchw' else 3}); drop layout="
        )
    return layout


def _shape(shape: list[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class OnnxEmbedder(nn.Module):
    """An ONNX embedding network with ``forward_features``; see the module docstring for its input rules."""

    def __init__(self, path: Path, spec: str, options: SpecQuery) -> None:
        super().__init__()
        self.spec = spec
        self.session = _session(path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidInput(f"teacher {spec!r}: the model has {len(inputs)} inputs; one image input is needed")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise InvalidInput(
                f"teacher {spec!r}: the model's input has shape {_shape(shape)}; (batch, C, H, W) is needed"
            )
        self.input_dtype = _FLOAT_INPUTS.get(inputs[0].type)
        if self.input_dtype is None:
            raise InvalidInput(
                f"teacher {spec!r}: the model's input is {inputs[0].type}; fsd feeds float, float16 or double"
            )
        meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
        recorded = SpecQuery({k: v for k, v in meta.items() if k in OPTIONS}, spec, OPTIONS, "the metadata of teacher")
        # each setting from the spec's options when they give it, else from the model's metadata
        setting = {key: options if key in options else recorded for key in OPTIONS}
        self.layout = _layout(spec, shape, setting["layout"])
        channels, height, width = shape[1:] if self.layout == "nchw" else (shape[3], shape[1], shape[2])
        self.batch = _dim(shape[0])  # None: any batch size
        self.channels = _dim(channels)  # None: the dataset's
        self.height, self.width = _dim(height), _dim(width)
        size = setting["size"].sides("size", None, low=1, high=MAX_SIDE)
        if size is not None:
            self._set_size(size, shape)
        self._check_bounds(shape)
        self.bgr = setting["channels"].choice("channels", "rgb", ("rgb", "bgr")) == "bgr"
        if self.bgr and self.channels not in (None, 3):
            raise InvalidInput(f"teacher {spec!r}: channels=bgr needs a 3-channel input, the model takes {channels}")
        self.pixel_mean = setting["mean"].floats("mean", None, count=(1, 3))
        self.pixel_std = setting["std"].floats("std", None, count=(1, 3), positive=True)
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise InvalidInput(f"teacher {spec!r}: give both mean and std (0..255 pixel units), or neither")
        outputs = self.session.get_outputs()
        output = setting["output"].text("output", None)
        if output is not None:
            self.output = resolve_output(spec, outputs, output)
        else:
            self.output = 0 if len(outputs) == 1 else choose_embedding(spec, path, outputs)
        self.output_name = outputs[self.output].name
        self._affine: tuple[np.ndarray, ...] | None = None  # set by adapt_to_dataset
        # fsd export records the normalisation of the dataset the network was trained on: how to scale
        # images that come from no dataset (a .bin, a folder for fsd embed) for it
        self.recorded_normalisation = _recorded_normalisation(spec, meta.get("fsd.normalisation"))

    def _set_size(self, size: tuple[int, int], shape: list[Any]) -> None:
        for name, fixed, wanted in (("height", self.height, size[0]), ("width", self.width, size[1])):
            if fixed is not None and fixed != wanted:
                raise InvalidInput(
                    f"teacher {self.spec!r}: size={size[0]},{size[1]} disagrees with the model's input "
                    f"{_shape(shape)}, whose {name} is fixed at {fixed}; drop size= or give the model's"
                )
        self.height, self.width = size

    def _check_bounds(self, shape: list[Any]) -> None:
        """Refuse a declared size no machine could feed, before any array of that size exists."""
        for name, side in (("height", self.height), ("width", self.width)):
            if side is not None and side > MAX_SIDE:
                raise InvalidInput(
                    f"teacher {self.spec!r}: the model's input {_shape(shape)} has a {name} of {side}, above "
                    f"fsd's bound of {MAX_SIDE}"
                )
        known = [d for d in (self.batch, self.channels, self.height, self.width) if d is not None]
        if math.prod(known) > MAX_ELEMENTS:
            raise InvalidInput(
                f"teacher {self.spec!r}: one call of the model takes {_shape(shape)} = {math.prod(known)} values, "
                f"above fsd's bound of {MAX_ELEMENTS}"
            )

    @property
    def needs_pixels(self) -> bool:
        """Whether the model takes 0..255 pixels scaled by its own mean/std rather than the dataset's tensors."""
        return self.pixel_mean is not None

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) when both are fixed (by the model or ``?size=``), else None."""
        return (self.height, self.width) if self.height is not None and self.width is not None else None

    @property
    def input_shape(self) -> list[int] | None:
        """[C, H, W] when all three are fixed, else None (any dataset whose fixed sides match)."""
        return None if self.size is None or self.channels is None else [self.channels, *self.size]

    def adapt_to_dataset(self, dataset: Any) -> None:
        """Check the dataset's images against the model and fix the map from their normalisation to its own.

        The images must match the model's fixed sides; the affine map is the one the module docstring gives.
        """
        image_shape = getattr(dataset, "image_shape", None)
        if image_shape is not None:
            self._check_images(dataset, tuple(int(d) for d in image_shape))
        self._warn_square_crop(dataset)
        if not self.needs_pixels:
            self._affine = None
            return
        declared = getattr(dataset, "normalisation", None)
        if declared is None:
            raise InvalidInput(
                f"teacher {self.spec!r} wants 0..255 pixels scaled by mean/std, but dataset {dataset.spec} does "
                "not declare its normalisation; drop mean/std to feed its tensors as they are"
            )
        channels = self.channels or (int(image_shape[0]) if image_shape is not None else 3)
        mean_d, std_d = (_per_channel(v, channels, f"dataset {dataset.spec}'s normalisation") for v in declared)
        mean, std = (_per_channel(v, channels, f"teacher {self.spec!r}") for v in (self.pixel_mean, self.pixel_std))
        # two steps, not one fused affine map: the pixels in between are snapped back to whole 8-bit levels
        # when they are that (see prepare)
        self._affine = (
            (std_d * 255.0)[None, :, None, None].astype(np.float32),
            (mean_d * 255.0)[None, :, None, None].astype(np.float32),
            mean[None, :, None, None].astype(np.float32),
            std[None, :, None, None].astype(np.float32),
        )

    def _warn_square_crop(self, dataset: Any) -> None:
        """Warn when a non-square model is fed a centre *square* view, and say how to keep it whole.

        View 0 of a square dataset spec rendered at the model's size is that square stretched: a text line
        loses its ends.
        """
        policy = getattr(dataset, "view_policy", None)
        if self.size is None or self.size[0] == self.size[1] or getattr(policy, "crop_fraction", None) is None:
            return
        warnings.warn(
            f"teacher {self.spec!r} takes {self.size[0]}×{self.size[1]} images, but view 0 of dataset "
            f"{dataset.spec} is a centre square stretched to that size; give the dataset "
            f"size={self.size[0]},{self.size[1]} to render whole images",
            RuntimeWarning,
            stacklevel=2,
        )

    def _check_images(self, dataset: Any, image_shape: tuple[int, ...]) -> None:
        wanted = (self.channels, self.height, self.width)
        if len(image_shape) == 3 and all(w is None or w == g for w, g in zip(wanted, image_shape, strict=True)):
            if self.bgr and image_shape[0] != 3:
                raise InvalidInput(f"teacher {self.spec!r}: channels=bgr needs RGB images, {dataset.spec} gives gray")
            return
        model = "×".join("any" if d is None else str(d) for d in wanted)
        got = "×".join(str(d) for d in image_shape)
        if self.channels is not None and image_shape and self.channels != image_shape[0]:
            raise InvalidInput(
                f"teacher {self.spec!r} takes {model} (C×H×W) images, dataset {dataset.spec} gives {got}: "
                f"{image_shape[0]}-channel images for a {self.channels}-channel model"
            )
        raise InvalidInput(
            f"teacher {self.spec!r} takes {model} (C×H×W) images, dataset {dataset.spec} gives {got}; render the "
            "dataset at the model's size (--image-size, or the dataset's size= option)"
        )

    def prepare(self, x: torch.Tensor) -> np.ndarray:
        """A dataset batch (n, C, H, W) as the array the model takes (scaled, channel order, layout, dtype)."""
        if self.needs_pixels and self._affine is None:
            raise InvalidInput(f"teacher {self.spec!r}: adapt_to_dataset() must run before embedding")
        array = x.detach().float().cpu().numpy()
        if self._affine is not None:
            to_pixels, offset, mean, std = self._affine
            pixels = array * to_pixels + offset
            whole = np.rint(pixels)
            # images decoded from 8-bit files come back as whole levels up to float32 rounding (~1e-5): the
            # model then sees exactly its authors' (p − mean) / std, which sensitive networks need
            if np.abs(pixels - whole).max(initial=0.0) < _WHOLE_LEVEL:
                pixels = whole
            array = (pixels - mean) / std
        if self.bgr:
            array = array[:, ::-1]
        if self.layout == "nhwc":
            array = array.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(array, dtype=self.input_dtype)

    def run(self, array: np.ndarray) -> np.ndarray:
        """The chosen output for a prepared batch of any length, float32 (n, D).

        A model of fixed batch size runs in slices of that size, the last one padded and trimmed.
        """
        n = len(array)
        if self.batch is None or n == self.batch:
            return self._run_once(array)
        parts = []
        for start in range(0, n, self.batch):
            part = array[start : start + self.batch]
            short = self.batch - len(part)
            if short:  # pad with copies of the last sample; their outputs are dropped below
                part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
            parts.append(self._run_once(part)[: self.batch - short])
        return np.concatenate(parts)

    def _run_once(self, array: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = _SILENT
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: array}, quiet)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds for a failed run
            shape = "×".join(str(d) for d in array.shape)
            raise InvalidInput(f"teacher {self.spec!r} fails on a {shape} input: {_first_line(exc)}") from None
        out = np.asarray(out)
        if out.ndim == 4:  # a (n, D, 1, 1) pooled map, or a feature map taken whole
            out = out.reshape(out.shape[0], -1)
        if out.ndim != 2 or out.shape[0] != len(array):
            raise InvalidInput(
                f"teacher {self.spec!r}: output {self.output_name!r} has shape {tuple(out.shape)} for "
                f"{len(array)} inputs; an embedding is (batch, D) (choose another with ?output=NAME)"
            )
        return out.astype(np.float32, copy=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The (n, D) embedding of a dataset batch, on the batch's device."""
        return torch.from_numpy(self.run(self.prepare(x))).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding, as :meth:`forward_features`."""
        return self.forward_features(x)

    def embedding_dim(self) -> int:
        """From the output's declared shape, else by running one blank input of the model's fixed size."""
        declared = self.session.get_outputs()[self.output].shape
        widths = [_dim(d) for d in declared[1:]]
        if len(declared) in (2, 4) and all(w is not None for w in widths):
            return math.prod(widths)  # type: ignore[arg-type]
        if self.size is None:
            raise InvalidInput(
                f"teacher {self.spec!r}: the model's input size is not fixed and its output's width is not "
                "declared; give the size as ?size=S or ?size=H,W"
            )
        blank = np.zeros((self.batch or 1, self.channels or 3, *self.size), np.float32)
        if self.layout == "nhwc":
            blank = blank.transpose(0, 2, 3, 1)
        return int(self.run(np.ascontiguousarray(blank, dtype=self.input_dtype)).shape[1])


def _per_channel(values: Any, channels: int, where: str) -> np.ndarray:
    array = np.asarray(values, np.float32).reshape(-1)
    if array.size not in (1, channels):
        raise InvalidInput(f"{where}: {array.size} mean/std values for {channels}-channel images")
    return np.broadcast_to(array, (channels,)).astype(np.float32)


def _recorded_normalisation(spec: str, text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``fsd.normalisation`` metadata, ``[[mean…], [std…]]`` in 0..1 units, checked."""
    if text is None:
        return None
    try:
        mean, std = json.loads(text)
        parsed = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"teacher {spec!r}: the model's metadata fsd.normalisation is not JSON [[mean…], [std…]]: {text[:80]!r}"
        ) from None
    values = parsed[0] + parsed[1]
    if not (len(parsed[0]) in (1, 3) and len(parsed[1]) in (1, 3) and all(map(math.isfinite, values))):
        raise InvalidInput(f"teacher {spec!r}: the model's metadata fsd.normalisation is malformed: {text[:80]!r}")
    if not all(v > 0 for v in parsed[1]):
        raise InvalidInput(f"teacher {spec!r}: the model's metadata fsd.normalisation has a std ≤ 0: {text[:80]!r}")
    return parsed


@TEACHER_SOURCES.register("onnx")
def onnx_teacher(argument: str, spec: str):
    """``onnx:PATH[?options]`` → a head-less :class:`featstore.teacher.TeacherSource`."""
    path_text, options = SpecQuery.split(argument, spec, OPTIONS, what="teacher")
    path = Path(path_text)
    if not path.is_file():
        raise InputNotFound(f"ONNX teacher {path} does not exist")
    model = OnnxEmbedder(path, spec, options)
    digest = hashlib.sha256(f"{file_sha256(path)}|{options.canonical()}".encode()).hexdigest()
    return TeacherSource(
        model=model.eval(),
        arch=f"onnx:{path.name}",
        checkpoint_sha256=digest,
        embedding_dim=model.embedding_dim(),
        input_shape=model.input_shape,
        head_type=None,
        head_weight=None,
        head_bias=None,
    )


__all__ = ["MAX_ELEMENTS", "MAX_SIDE", "OPTIONS", "OnnxEmbedder", "onnx_teacher"]
