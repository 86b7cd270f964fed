"""Mixed precision for training steps: autocast, loss scaling and gradient clipping in one place.

bf16 needs no loss scaling (its exponent range is float32's), so it is the CPU choice and the CUDA default
where the GPU has it; fp16 (CUDA only) needs a GradScaler so small gradients do not flush to zero.
Disabled, every method is the plain float32 step, so a run without ``--amp`` is bit-identical to one
made before this option existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from featstore.errors import InvalidInput

AMP_DTYPES = ("bf16", "fp16")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Amp:
    device: torch.device
    dtype_name: str | None  # None: disabled
    scaler: Any = None

    @classmethod
    def create(cls, name: str | None, device: torch.device) -> Amp:
        """``name``: None (off), ``bf16``, ``fp16``, or ``auto`` (bf16, or fp16 on a GPU without bf16)."""
        if name is None:
            return cls(device, None)
        if name == "auto":
            name = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
        if name not in AMP_DTYPES:
            raise InvalidInput(f"unknown --amp dtype {name!r}; valid: auto, {', '.join(AMP_DTYPES)}")
        if name == "fp16" and device.type != "cuda":
            raise InvalidInput("--amp fp16 needs a CUDA device; on CPU use --amp bf16")
        scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None
        return cls(device, name, scaler)

    @property
    def enabled(self) -> bool:
        return self.dtype_name is not None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device.type, dtype=_TORCH_DTYPES[self.dtype_name]):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], clip: float | None) -> None:
        """Unscale (fp16), clip the global gradient norm if asked, then step."""
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
