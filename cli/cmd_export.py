"""``fsd export``: a trained network as ONNX or TorchScript, with a parity check against torch."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import overwrite_option, quiet_option, trust_code_option
from distill.models.export import export_checkpoint
from featstore.errors import InvalidInput

PATH = click.Path(dir_okay=False, path_type=Path)


@click.command("export")
@click.argument("checkpoint", type=PATH)
@click.option("--onnx", "onnx_out", type=PATH, default=None, help="Write an ONNX file (onnxruntime checks it).")
@click.option("--torchscript", "ts_out", type=PATH, default=None, help="Write a TorchScript file.")
@click.option("--with-head", is_flag=True, help="Also export the classifier (a second output, logits).")
@click.option("--sample", type=int, default=16, show_default=True, help="Samples of the parity check.")
@trust_code_option
@overwrite_option
@quiet_option
def command(checkpoint, onnx_out, ts_out, with_head, sample, trust_code, overwrite, quiet) -> None:
    """Export CHECKPOINT's embedding network (optionally with its head) to ONNX or TorchScript.

    The embeddings of a sample are compared between torch and the exported file; max |Δ| is printed and
    recorded beside it (OUT.parity.json). `--model onnx:OUT` / `torchscript:OUT` then evaluates it.

    Example: fsd export student.pt --onnx student.onnx
    """
    if (onnx_out is None) == (ts_out is None):
        raise InvalidInput("give exactly one of --onnx OUT and --torchscript OUT")
    fmt, out = ("onnx", onnx_out) if onnx_out is not None else ("torchscript", ts_out)
    if sample <= 0:
        raise InvalidInput(f"--sample must be positive, got {sample}")
    result = export_checkpoint(
        checkpoint,
        out,
        fmt=fmt,
        with_head=with_head,
        sample=sample,
        overwrite=overwrite,
        trust_code=trust_code,
        show_progress=not quiet,
    )
    click.echo(result.line())
