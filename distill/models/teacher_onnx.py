"""``onnx:PATH[?size=112&mean=127.5&std=127.5&layout=nchw&channels=rgb]`` — an ONNX model as a teacher.

The models face users hold (insightface's released ``w600k_r50.onnx``, ``glintr100.onnx`` …) are ONNX
files of the embedding network only: no classifier, a fixed 112×112 input, and pixels scaled as
(p − 127.5) / 127.5 on 0..255 RGB values. fsd's datasets hand over tensors already normalised their own way
(``ImageDataset.normalisation``), so this adapter turns them back into pixels and into the model's scaling:
x_model = (255·(x·std_d + mean_d) − mean) / std, per channel, an affine map fixed once per dataset.

Where each setting comes from, first match wins:

* options after ``?`` (``size``, ``mean``, ``std`` in 0..255 pixel units, ``layout`` nchw|nhwc, ``channels``
  rgb|bgr, ``output`` the index of the embedding output);
* the model's metadata (``custom_metadata_map``): ``mean``/``std``/``channels``/``layout``, and
  ``fsd.input=dataset``, which ``fsd export`` writes: the model takes the dataset's tensors as they are;
* the model's input shape (size and layout when the dimensions are fixed).

With no mean/std anywhere the model is fed the dataset's tensors unchanged (right for models exported by
fsd, and for models trained on the same normalisation). Runs with onnxruntime: the CUDA provider when
onnxruntime offers it, else the CPU, with torch's thread count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.models import teacher_spec as opts
from distill.models.registry import TEACHER_SOURCES
from featstore.atomic import file_sha256
from featstore.errors import CheckpointError, InputNotFound, InvalidInput

OPTIONS = ("size", "mean", "std", "layout", "channels", "output")


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
    settings.log_severity_level = 3  # no warnings on stderr for every shape-inference hint
    try:
        return ort.InferenceSession(str(path), sess_options=settings, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds for "not a model"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a loadable ONNX model ({first})") from None


class OnnxEmbedder(nn.Module):
    """An ONNX embedding network with ``forward_features``; see the module docstring for its input rules."""

    def __init__(self, path: Path, spec: str, options: dict[str, str]) -> None:
        super().__init__()
        self.spec = spec
        self.session = _session(path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidInput(f"teacher {spec!r}: the model has {len(inputs)} inputs; one image input is needed")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise InvalidInput(f"teacher {spec!r}: the model's input has shape {shape}; (batch, C, H, W) is needed")
        meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
        setting = {**{k: v for k, v in meta.items() if k in OPTIONS}, **options}
        self.layout = setting.get("layout") or ("nhwc" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "nchw")
        if self.layout not in ("nchw", "nhwc"):
            raise InvalidInput(f"teacher {spec!r}: layout must be nchw or nhwc, got {self.layout!r}")
        channels, height, width = shape[1:] if self.layout == "nchw" else (shape[3], shape[1], shape[2])
        if "size" in setting:
            height = width = opts.positive_int(spec, "size", setting["size"])
        self.channels = channels if isinstance(channels, int) else 3
        self.size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.bgr = setting.get("channels", "rgb") == "bgr"
        if setting.get("channels", "rgb") not in ("rgb", "bgr"):
            raise InvalidInput(f"teacher {spec!r}: channels must be rgb or bgr, got {setting['channels']!r}")
        self.pixel_mean = opts.floats(spec, "mean", setting["mean"]) if "mean" in setting else None
        self.pixel_std = opts.floats(spec, "std", setting["std"]) if "std" in setting else None
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise InvalidInput(f"teacher {spec!r}: give both mean and std (0..255 pixel units), or neither")
        outputs = self.session.get_outputs()
        self.output = int(setting.get("output", 0))
        if not 0 <= self.output < len(outputs):
            raise InvalidInput(f"teacher {spec!r}: output {self.output} outside the model's {len(outputs)} outputs")
        self._affine: tuple[np.ndarray, np.ndarray] | None = None  # set by adapt_to_dataset
        # fsd export records the normalisation of the dataset the network was trained on: how to scale
        # images that come from no dataset (a .bin, a folder for fsd embed) for it
        recorded = meta.get("fsd.normalisation")
        self.recorded_normalisation = tuple(tuple(v) for v in json.loads(recorded)) if recorded else None

    @property
    def needs_pixels(self) -> bool:
        return self.pixel_mean is not None

    def adapt_to_dataset(self, dataset: Any) -> None:
        """Fix the affine map from this dataset's normalisation to the model's (see the module docstring)."""
        if not self.needs_pixels:
            self._affine = None
            return
        declared = getattr(dataset, "normalisation", None)
        if declared is None:
            raise InvalidInput(
                f"teacher {self.spec!r} wants 0..255 pixels scaled by mean/std, but dataset {dataset.spec} does "
                "not declare its normalisation; drop mean/std to feed its tensors as they are"
            )
        mean_d, std_d = (np.broadcast_to(np.asarray(v, np.float32), (self.channels,)) for v in declared)
        mean, std = (
            np.broadcast_to(np.asarray(v, np.float32), (self.channels,)) for v in (self.pixel_mean, self.pixel_std)
        )
        scale = std_d * 255.0 / std
        shift = (mean_d * 255.0 - mean) / std
        self._affine = (scale[None, :, None, None].astype(np.float32), shift[None, :, None, None].astype(np.float32))

    def prepare(self, x: torch.Tensor) -> np.ndarray:
        """A dataset batch (n, C, H, W) as the array the model takes."""
        if self.needs_pixels and self._affine is None:
            raise InvalidInput(f"teacher {self.spec!r}: adapt_to_dataset() must run before embedding")
        array = x.detach().float().cpu().numpy()
        if self._affine is not None:
            array = array * self._affine[0] + self._affine[1]
        if self.bgr:
            array = array[:, ::-1]
        if self.layout == "nhwc":
            array = array.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(array, dtype=np.float32)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: self.prepare(x)})[self.output]
        out = np.asarray(out, dtype=np.float32)
        return torch.from_numpy(out.reshape(out.shape[0], -1) if out.ndim == 4 else out).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def embedding_dim(self) -> int:
        """From the output's declared shape, else by running one blank input."""
        declared = self.session.get_outputs()[self.output].shape
        if len(declared) == 2 and isinstance(declared[1], int):
            return int(declared[1])
        if self.size is None:
            raise InvalidInput(f"teacher {self.spec!r}: the model's input size is not fixed; give it as ?size=N")
        blank = np.zeros((1, self.channels, *self.size), np.float32)
        if self.layout == "nhwc":
            blank = blank.transpose(0, 2, 3, 1).copy()
        out = self.session.run(None, {self.input_name: blank})[self.output]
        return int(np.asarray(out).reshape(1, -1).shape[1])


@TEACHER_SOURCES.register("onnx")
def onnx_teacher(argument: str, spec: str):
    """``onnx:PATH[?options]`` → a head-less :class:`featstore.extract.TeacherSource`."""
    from featstore.extract import TeacherSource

    path_text, options = opts.split_options(argument)
    opts.check_known(spec, options, OPTIONS)
    path = Path(path_text)
    if not path.is_file():
        raise InputNotFound(f"ONNX teacher {path} does not exist")
    model = OnnxEmbedder(path, spec, options)
    digest = hashlib.sha256(f"{file_sha256(path)}|{opts.canonical(options)}".encode()).hexdigest()
    return TeacherSource(
        model=model.eval(),
        arch=f"onnx:{path.name}",
        checkpoint_sha256=digest,
        embedding_dim=model.embedding_dim(),
        input_shape=None if model.size is None else [model.channels, *model.size],
        head_type=None,
        head_weight=None,
        head_bias=None,
    )
