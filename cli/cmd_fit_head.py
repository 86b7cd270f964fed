"""``fsd store fit-head``: give a head-less store (an ONNX or timm teacher's) the classifier TH-KD needs."""

from __future__ import annotations

import click

from cli.options import config_option, device_option, overwrite_option, quiet_option, seed_option
from distill.models.heads import HEADS
from distill.models.inference import select_device
from distill.training.fit_head import FitHeadConfig, fit_head

F = FitHeadConfig


@click.command("fit-head")
@click.argument("store")
@config_option(F, "head", type=click.Choice(HEADS.names()), help="Classifier to fit; arcface/cosface are margin heads.")
@config_option(F, "epochs", help="Passes over the stored embeddings (every view of every labelled row).")
@config_option(F, "batch_size")
@config_option(F, "lr", help="Adam learning rate, annealed by a cosine to 0.")
@config_option(F, "head_scale", type=float, help="Margin heads: logit scale s (default 30).")
@config_option(F, "head_margin", type=float, help="Margin heads: margin m (arcface 0.5, cosface 0.35).")
@seed_option
@device_option
@overwrite_option
@quiet_option
def command(store: str, device: str, quiet: bool, **options) -> None:
    """Fit a teacher classifier on STORE's embeddings and install it as the store's head.

    The backbone never runs. The head is written as the store's head/, atomically, with its provenance and
    train accuracy; a store that has a head is refused unless --overwrite.

    Example: fsd store fit-head store.zarr --head arcface --epochs 20
    """
    result = fit_head(FitHeadConfig(store=store, device=str(select_device(device)), progress=not quiet, **options))
    click.echo(result.line())
