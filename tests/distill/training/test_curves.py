"""Training curves PNG and the TensorBoard option's clear failure when the package is missing."""

from __future__ import annotations

import builtins

import pytest

from distill.training.curves import TensorBoardLog, plot_training_curves
from featstore.errors import InvalidInput

LOG = [
    {"epoch": e, "loss": {"total": 3.0 / e, "ce": 1.0 / e, "kd": 2.0 / e}, "test_accuracy": 0.5 + 0.1 * e}
    for e in range(1, 4)
]


def test_curves_png_is_written(tmp_path):
    path = tmp_path / "curves.png"
    plot_training_curves(LOG, path, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_missing_is_a_clear_error(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(InvalidInput, match="tensorboard"):
        TensorBoardLog(tmp_path / "tb")
