"""Mixed precision for training steps: autocast, loss scaling and gradient clipping in one place.

bf16 needs no loss scaling (its exponent range is float32's), so it is the CPU choice and the CUDA default
where the GPU has it; fp16 (CUDA only) needs a GradScaler so small gradients do not flush to zero.
Disabled, every method is the plain float32 step, so a run without ``--amp`` is bit-identical to a
float32 run.
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
    """The mixed precision of one run's steps; build it with :meth:`create`.

    Attributes:
        device: The device the steps run on.
        dtype_name: ``"bf16"``, ``"fp16"`` or None (disabled).
        scaler: fp16's GradScaler (None otherwise).
    """

    device: torch.device
    dtype_name: str | None  # None: disabled
    scaler: Any = None

    @classmethod
    def create(cls, name: str | None, device: torch.device) -> Amp:
        """The mixed precision ``--amp name`` asks for on ``device``.

        Args:
            name: None (off), ``bf16``, ``fp16``, or ``auto`` (bf16, or fp16 on a GPU without bf16).
            device: The device the steps run on.

        Returns:
            The mixed precision, with a GradScaler for fp16.

        Raises:
            InvalidInput: An unknown name, or fp16 without CUDA.
        """
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
        """Whether steps run in reduced precision."""
        return self.dtype_name is not None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """A context in which the forward pass runs in the reduced dtype (nothing when disabled)."""
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device.type, dtype=_TORCH_DTYPES[self.dtype_name]):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``, scaled under fp16."""
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
