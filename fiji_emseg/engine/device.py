"""Choosing the compute device and the mixed-precision mode.

``auto`` picks a CUDA GPU when one is usable, then Apple's MPS, then the CPU. On CUDA, mixed
precision defaults to bf16 where the GPU supports it (no loss scaling needed) and fp16 with a
gradient scaler otherwise; on CPU it is off, because CPUs without bf16 units run it slower.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["DeviceChoice", "choose_device"]


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def uses_scaler(self) -> bool:
        return self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        amp = {None: "fp32", torch.bfloat16: "bf16 mixed precision", torch.float16: "fp16 mixed precision"}[self.amp_dtype]
        return f"{name}, {amp}" + (", channels_last" if self.channels_last else "")


def choose_device(device: str = "auto", amp: str = "auto", channels_last: bool | None = None) -> DeviceChoice:
    """Resolve user settings (``auto``/``cpu``/``cuda``/``cuda:1``/``mps``; ``auto``/``bf16``/``fp16``/``off``)."""
    if device == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "a CUDA GPU was requested but PyTorch sees none (CPU-only build or no driver); "
                "use --device cpu, or install a CUDA build of PyTorch")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"GPU {dev.index} requested but only {torch.cuda.device_count()} GPU(s) exist")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("Apple MPS was requested but is not available; use --device cpu")
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"unknown mixed-precision mode {amp!r}; use auto, bf16, fp16 or off")
    amp_dtype: torch.dtype | None
    if amp == "off":
        amp_dtype = None
    elif amp == "bf16":
        amp_dtype = torch.bfloat16
    elif amp == "fp16":
        amp_dtype = torch.float16
    elif dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:  # CPU, and MPS where fp16 training without a loss scaler is not safe
        amp_dtype = None
    if channels_last is None:
        channels_last = dev.type in ("cuda", "cpu")
    return DeviceChoice(dev, amp_dtype, channels_last)
