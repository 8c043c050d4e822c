"""Seconds per training step on *this* machine, measured, not guessed, and cached.

The planner fits a schedule into a time budget and ``emseg train`` warns before a wait of hours;
both need the real cost of one optimiser step of a given model, batch and patch on the device the
run will use (a 2-core laptop and an H100 differ by 1000x). A probe runs the trainer's own step —
the same model, loss, optimiser, mixed precision and memory layout — on random tensors for a few
steps after a warm-up, and takes the median. Results are cached by everything that changes them
(torch version, device and CPU, threads, model and step settings) in a small JSON file, so a
second plan on the same machine costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.files import atomic_write_json
from ..models.architectures import build_model
from ..models.device import DeviceChoice, choose_device
from ..models.model_config import ModelConfig
from ..models.unet import set_centre_only
from .losses import SegmentationLoss
from .train_config import TrainConfig

__all__ = ["StepProbe", "cache_dir", "probe_step_seconds"]

#: Where measured step times are kept (``EMSEG_CACHE_DIR`` overrides; tests use a temporary folder).
CACHE_NAME = "step_times.json"


def cache_dir() -> Path:
    env = os.environ.get("EMSEG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fiji-emseg"


@dataclass(frozen=True)
class StepProbe:
    seconds_per_step: float
    device: str
    cached: bool


def _key(model: ModelConfig, cfg: TrainConfig, choice: DeviceChoice) -> str:
    dev = choice.device
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    parts = {
        "torch": torch.__version__, "device": str(dev), "hardware": hw, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "amp": str(choice.amp_dtype), "channels_last": choice.channels_last,
        "model": model.to_dict(), "batch": cfg.batch_size, "patch": list(cfg.patch_size), "loss": cfg.loss,
        "optimizer": cfg.optimizer,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _measure(model_config: ModelConfig, cfg: TrainConfig, choice: DeviceChoice, warmup: int, steps: int) -> float:
    dims = model_config.dims
    torch.manual_seed(0)
    net = build_model(model_config).to(choice.device)
    set_centre_only(net, True)  # as the trainer runs a 2.5D network
    if choice.channels_last:
        net = net.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    loss_fn = SegmentationLoss(cfg.loss, model_config.output, model_config.n_classes, cfg.class_weights).to(choice.device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    scaler = torch.amp.GradScaler("cuda") if choice.uses_scaler else None
    patch = tuple(cfg.patch_size)
    context = model_config.slice_context
    if context:  # 2s+1 slices in, the centre slice out
        patch = (2 * context + 1, *patch[-2:])
    shape = (cfg.batch_size, model_config.in_channels, *patch)
    out_patch = (1, *patch[1:]) if context else patch
    x = torch.randn(shape, device=choice.device)
    if choice.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    n_out = model_config.n_classes
    if model_config.output == "softmax":
        y = torch.randint(0, n_out + 1, (cfg.batch_size, *out_patch), device=choice.device)
    else:
        y = (torch.rand((cfg.batch_size, n_out, *out_patch), device=choice.device) > 0.8).float()
    times: list[float] = []
    for i in range(warmup + steps):
        if choice.device.type == "cuda":
            torch.cuda.synchronize(choice.device)
        t0 = time.perf_counter()
        with choice.autocast():
            logits = net(x)
        loss = loss_fn(logits, y, None)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if choice.device.type == "cuda":
            torch.cuda.synchronize(choice.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def probe_step_seconds(model_config: ModelConfig, cfg: TrainConfig, *, warmup: int = 1, steps: int = 3,
                       use_cache: bool = True) -> StepProbe:
    """Median seconds of one training step of *model_config* with *cfg*'s batch, patch and device."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    choice = choose_device(cfg.device, cfg.amp, cfg.channels_last, model_config.dims)
    key = _key(model_config, cfg, choice)
    path = cache_dir() / CACHE_NAME
    if use_cache:
        hit = _read_cache(path).get(key)
        if isinstance(hit, (int, float)) and hit > 0:
            return StepProbe(float(hit), str(choice.device), True)
    seconds = _measure(model_config, cfg, choice, warmup, steps)
    if use_cache:
        try:
            data = _read_cache(path)
            data[key] = seconds
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, data, overwrite=True)
        except OSError:  # a read-only home must not stop training
            pass
    return StepProbe(seconds, str(choice.device), False)
