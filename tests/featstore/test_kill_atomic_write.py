"""A real SIGKILL while a checkpoint or an export is being written never leaves a half file: the target is
either the old complete file or the new complete one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WRITER = """
import sys, torch
from featstore.atomic import atomic_path
target = sys.argv[1]
i = 0
while True:  # keep replacing the checkpoint with a new, large, self-describing one
    i += 1
    with atomic_path(target) as tmp:
        torch.save({"generation": i, "weights": torch.full((2_000_000,), float(i))}, tmp)
"""


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_sigkill_while_saving_leaves_old_or_new_never_half(tmp_path, delay):
    target = tmp_path / "student.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 60
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)  # land somewhere inside a later write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(target, weights_only=True)  # a half file would fail to load
    assert state["generation"] >= 1
    assert torch.equal(state["weights"], torch.full((2_000_000,), float(state["generation"])))
