"""Deployment: an fsd network's embedding function as ONNX or TorchScript, checked against torch.

The export optionally includes the head; a parity check compares the exported file's outputs with torch's.

What is exported is what the store and the evaluation use: ``forward_features`` (input: the dataset's
normalised tensor, batch dimension dynamic), output ``embedding`` (N, D); with the head, a second output
``logits`` (N, C, margin-free). The ONNX file records ``fsd.input=dataset`` in its metadata, so
``onnx:FILE`` feeds it the dataset's tensors unchanged; TorchScript files get an exported
``forward_features`` method and the ``head`` submodule, which ``torchscript:FILE`` reads back.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featstore.atomic import atomic_path, atomic_paths, file_sha256, torch_write_errors
from featstore.errors import ENVIRONMENT_ERRNOS, InvalidInput, OutputExists, WriteFailed
from featstore.progress import progress

FORMATS = ("onnx", "torchscript")


class _Embedding(nn.Module):
    def __init__(self, model: nn.Module, with_head: bool) -> None:
        super().__init__()
        self.net = model
        self.with_head = with_head

    def forward(self, x: torch.Tensor):
        z = self.net.forward_features(x)
        return (z, self.net.forward_head(z)) if self.with_head else z


class _Scripted(nn.Module):
    """The TorchScript layout ``torchscript:`` teachers read: ``forward_features`` and a ``head``."""

    def __init__(self, model: nn.Module, with_head: bool) -> None:
        super().__init__()
        self.net = model
        if with_head:
            self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


@dataclass
class ExportResult:
    """What an export wrote and how closely it matches torch.

    Attributes:
        path: The exported file.
        format: ``"onnx"`` or ``"torchscript"``.
        with_head: Whether the head was exported (a ``logits`` output).
        max_abs_diff: Max |Δ| of the embeddings, torch vs the exported file, on the parity sample.
        max_abs_diff_logits: The same for the logits (None without the head).
        sample: The number of samples of the parity check.
    """

    path: Path
    format: str
    with_head: bool
    max_abs_diff: float  # embeddings, torch vs the exported file, on the parity sample
    max_abs_diff_logits: float | None
    sample: int

    def line(self) -> str:
        """The one line ``fsd export`` prints."""
        logits = "" if self.max_abs_diff_logits is None else f", logits {self.max_abs_diff_logits:.3g}"
        return (
            f"exported {self.path} ({self.format}{', with head' if self.with_head else ''}); parity on "
            f"{self.sample} samples: max |Δ| embedding {self.max_abs_diff:.3g}{logits}"
        )


def _write_onnx(model: nn.Module, path: Path, example: torch.Tensor, with_head: bool, meta: dict) -> None:
    import onnx

    outputs = ["embedding", "logits"] if with_head else ["embedding"]
    tmp = path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
        torch.onnx.export(
            _Embedding(model, with_head).eval(),
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]},
            opset_version=17,
        )
        proto = onnx.load(str(tmp))
        for key, value in {"fsd.input": "dataset", **meta}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(proto, str(tmp))


def _write_torchscript(model: nn.Module, path: Path, example: torch.Tensor, with_head: bool) -> None:
    wrapper = _Scripted(model, with_head).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(wrapper, {"forward": example, "forward_features": example})
    with torch_write_errors(path), open(path, "wb") as handle:  # a full disk: an OSError, not torch's RuntimeError
        torch.jit.save(traced, handle)


def _run_exported(path: Path, fmt: str, x: torch.Tensor, with_head: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the exported file on ``x``: the embedding through fsd's own model specs, the logits straight.

    The embedding is computed as the ``onnx:``/``torchscript:`` specs run it (what a store, an eval or a verify
    of the file computes).
    """
    from distill.models.teachers import load_teacher
    from featstore.teacher import check_embeddings

    z = check_embeddings(load_teacher(f"{fmt}:{path}"), x, "the parity sample")
    if not with_head:
        return z, None
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return z, session.run(["logits"], {"input": x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return z, module.head(module.forward_features(x)).numpy()


def export_model(
    model: nn.Module,
    path: str | Path,
    sample: torch.Tensor,
    *,
    fmt: str = "onnx",
    with_head: bool = False,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``model`` to ``path``, atomically, and measure its parity with torch on ``sample``.

    Parity is max |Δ| between torch's outputs and the exported file's (onnxruntime for ONNX).

    Args:
        model: An fsd network (``forward_features``/``forward_head``).
        path: The file to write.
        sample: A dataset batch, normalised as the model is fed.
        fmt: ``"onnx"`` or ``"torchscript"``.
        with_head: Whether to export the head as a second output ``logits``.
        metadata: ONNX metadata entries to record (JSON-encoded unless strings).
        overwrite: Whether an existing ``path`` may be replaced.

    Returns:
        The file written and its parity figures.

    Raises:
        OutputExists: ``path`` exists and ``overwrite`` is not set.
        InvalidInput: An unknown format, or ``with_head`` for a model without a head.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} already exists (use --overwrite to replace it)")
    with atomic_path(path) as tmp:
        result = _export_file(model, tmp, sample, fmt, with_head, metadata or {})
    result.path = path
    return result


def _export_file(
    model: nn.Module,
    path: Path,
    sample: torch.Tensor,
    fmt: str,
    with_head: bool,
    metadata: dict,
    show_progress: bool = False,
) -> ExportResult:
    """Write the exported file at ``path`` (a temporary name: the callers rename it) and measure its parity.

    With ``show_progress``, a two-step bar (writing, then the parity run).
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if with_head and not hasattr(model, "head"):
        raise InvalidInput("this model has no head to export")
    model = model.eval().cpu()
    sample = sample.float().cpu()
    bar = progress(total=2, desc=f"export {fmt}", unit="step", enabled=show_progress, leave=False)
    if fmt == "onnx":
        _write_onnx(model, path, sample[:2], with_head, metadata)
    else:
        _write_torchscript(model, path, sample[:2], with_head)
    bar.update(1)
    with torch.no_grad():
        z = model.forward_features(sample)
        logits = model.forward_head(z) if with_head else None
    z_exp, logits_exp = _run_exported(path, fmt, sample, with_head)
    diff = float(np.abs(z.numpy() - z_exp).max())
    diff_logits = None if logits is None else float(np.abs(logits.numpy() - logits_exp).max())
    bar.update(1)
    bar.close()
    return ExportResult(path, fmt, with_head, diff, diff_logits, int(sample.shape[0]))


def parity_path(out: str | Path) -> Path:
    """Where the parity record of the export ``out`` lives: ``OUT.parity.json``, beside it."""
    return Path(str(out) + ".parity.json")


def check_export_outputs(out: Path, overwrite: bool) -> None:
    """Refuse to replace an export without ``overwrite``: the model and its parity record are one output.

    A parity record that names a model sha256 while the model file is absent is what a run killed between its
    two renames leaves (the record is renamed first): it is replaced, so re-running the same command completes
    the export. Any other existing parity file is kept unless ``overwrite``.
    """
    record = parity_path(out)
    if out.exists() and not overwrite:
        raise OutputExists(f"{out} already exists (use --overwrite to replace it and {record.name})")
    if record.exists() and not overwrite and not _unfinished_record(record):
        raise OutputExists(f"{record} already exists (use --overwrite to replace it)")


def _unfinished_record(record: Path) -> bool:
    """Whether ``record`` is the leftover of an export interrupted between its two renames.

    That is an fsd parity record naming a model sha256 (its model file absent: checked by the caller).
    """
    try:
        content = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(content, dict) and isinstance(content.get("model_sha256"), str)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    with_head: bool = False,
    sample: int = 16,
    overwrite: bool = False,
    trust_code: bool = False,
    show_progress: bool = False,
) -> ExportResult:
    """Export an fsd checkpoint and record the parity check in ``OUT.parity.json``.

    The parity sample is ``sample`` seeded standard-normal inputs of the checkpoint's image shape: the
    dataset's normalised scale, without needing the dataset at hand.

    The two files are one output (docs/reliability.md): both are written under temporary names, then the
    record (which names the model's sha256) is renamed, then the model. A failure while writing leaves both
    as they were; a kill between the renames leaves a record without its model, which the same command
    replaces.

    Args:
        checkpoint: The fsd checkpoint (teacher or student).
        out: The exported file; its parity record is ``OUT.parity.json``.
        fmt: ``"onnx"`` or ``"torchscript"``.
        with_head: Whether to export the head as a second output ``logits``.
        sample: The number of parity samples.
        overwrite: Whether an existing export may be replaced.
        trust_code: Whether a ``module:function`` architecture may run its Python code.
        show_progress: Whether to show a two-step progress bar.

    Returns:
        The file written and its parity figures.

    Raises:
        OutputExists: The export or its parity record exists and ``overwrite`` is not set.
        InvalidInput: An unknown format, or ``with_head`` for a model without a head.
        CheckpointError: An unreadable checkpoint.
        WriteFailed: The export could not be written (a full disk, a read-only folder).
    """
    from distill.models.checkpoint import load_checkpoint

    out = Path(out)
    check_export_outputs(out, overwrite)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model(trust_code=trust_code)  # a module:function student rebuilds from its code
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sample, *ckpt.dataset["image_shape"], generator=generator)
    meta = {"fsd.arch": ckpt.arch, "fsd.kind": ckpt.kind, "fsd.dataset": ckpt.dataset.get("spec", "")}
    if ckpt.dataset.get("normalisation"):
        meta["fsd.normalisation"] = json.dumps(ckpt.dataset["normalisation"])
    try:
        with atomic_paths(parity_path(out), out) as (record_tmp, model_tmp):
            result = _export_file(model, model_tmp, x, fmt, with_head, meta, show_progress)
            record = {
                "checkpoint": str(checkpoint),
                "format": fmt,
                "with_head": with_head,
                "sample": sample,
                "max_abs_diff_embedding": result.max_abs_diff,
                "max_abs_diff_logits": result.max_abs_diff_logits,
                "model_sha256": file_sha256(model_tmp),
            }
            record_tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        raise WriteFailed(
            f"writing {out} failed ({exc.strerror or exc}); once fixed, run the same command again: it completes "
            "the export"
        ) from None
    result.path = out
    return result
