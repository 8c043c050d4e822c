"""Seconds per training step on *this* machine, measured, not guessed, and cached.

The planner fits a schedule into a time budget and ``emseg train`` warns before a wait of hours;
both need the real cost of one optimiser step of a given model, batch and patch on the device the
run will use (a 2-core laptop and an H100 differ by 1000x). A probe runs the trainer's own step —
the same model, loss, optimiser, mixed precision and memory layout — on random tensors for a few
steps after a warm-up, and takes the median. Results are cached by everything that changes them
(torch version, device and CPU, threads, model and step settings) in a small JSON file, so a
second plan on the same machine costs nothing.

A probe of three steps is a guess: one slow step, another program busy or a machine slower today
than the day it was cached moves it (a vnc membrane plan probed 0.70 s/step and ran at 0.55). So a
training run writes back the median of its own steps (:func:`record_step_seconds`), hundreds of
them under the real data pipeline, and the next plan of the same model on the same machine starts
from that pace.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.files import atomic_write_json
from ..models.architectures import build_model
from ..models.device import DeviceChoice, choose_device
from ..models.model_config import ModelConfig
from ..models.unet import set_centre_only
from .deep_supervision import DeepSupervision, training_loss
from .losses import SegmentationLoss
from .train_config import TrainConfig

__all__ = ["StepProbe", "cache_dir", "probe_step_seconds", "record_step_seconds"]

#: Where measured step times are kept (``EMSEG_CACHE_DIR`` overrides; tests use a temporary folder).
CACHE_NAME = "step_times.json"


def cache_dir() -> Path:
    env = os.environ.get("EMSEG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fiji-emseg"


#: A run's pace is written back only from this many timed steps (a handful would be no better than a probe).
MIN_RUN_STEPS = 20


@dataclass(frozen=True)
class StepProbe:
    seconds_per_step: float
    device: str
    cached: bool
    #: "probe" (a few steps on random tensors) or "run" (the median step of an earlier training run)
    source: str = "probe"

    def describe(self) -> str:
        how = "the median step of an earlier run" if self.source == "run" else "a probe"
        return f"measured on {self.device}: {how}"


def _key(model: ModelConfig, cfg: TrainConfig, choice: DeviceChoice) -> str:
    dev = choice.device
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    parts = {
        "torch": torch.__version__, "device": str(dev), "hardware": hw, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "amp": str(choice.amp_dtype), "channels_last": choice.channels_last,
        # the classes' names do not change a step's cost, their number does (a mito plan and a
        # membrane plan of the same network share one entry)
        "model": {**model.to_dict(), "classes": model.n_classes}, "batch": cfg.batch_size, "patch": list(cfg.patch_size),
        "loss": cfg.loss, "optimizer": cfg.optimizer,
    }
    # what else a step costs, keyed only when on, so that the entries of plain steps keep their keys:
    # deep supervision's heads and losses (measured by the probe), the weight average's update
    if cfg.deep_supervision:
        parts["deep_supervision"] = cfg.deep_supervision
    if cfg.ema_decay:
        parts["ema"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cached_entry(value: Any) -> tuple[float, str] | None:
    """(seconds, source) of one cache entry; older versions stored the probe's seconds alone."""
    entry = value if isinstance(value, dict) else {"seconds": value, "source": "probe"}
    seconds, source = entry.get("seconds"), entry.get("source")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0 and source in ("probe", "run"):
        return float(seconds), str(source)
    return None


def _write_entry(key: str, entry: dict[str, Any]) -> None:
    path = cache_dir() / CACHE_NAME
    try:
        data = _read_cache(path)
        data[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data, overwrite=True)
    except OSError:  # a read-only home must not stop training
        pass


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
    deep = DeepSupervision(net, cfg.deep_supervision, model_config.out_channels).to(choice.device) \
        if cfg.deep_supervision else None
    opt = torch.optim.Adam([*net.parameters(), *(deep.parameters() if deep is not None else ())], lr=cfg.learning_rate)
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
        loss = training_loss(net, x, y, None, loss_fn, choice.autocast, deep)  # the trainer's step
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
    if use_cache:
        hit = _cached_entry(_read_cache(cache_dir() / CACHE_NAME).get(key))
        if hit is not None:
            return StepProbe(hit[0], str(choice.device), True, hit[1])
    seconds = _measure(model_config, cfg, choice, warmup, steps)
    if use_cache:
        _write_entry(key, {"seconds": seconds, "source": "probe"})
    return StepProbe(seconds, str(choice.device), False)


def record_step_seconds(model_config: ModelConfig, cfg: TrainConfig, choice: DeviceChoice,
                        step_seconds: Sequence[float]) -> float | None:
    """Cache the median of a run's *step_seconds* for the next plan of this model on this machine.

    *step_seconds* are wall-clock times of whole training steps, waiting for the batch included
    (validation and mining are not steps: the planner allows 10 % for them). Fewer than
    :data:`MIN_RUN_STEPS` steps are not recorded. Returns the recorded median, or None.
    """
    if len(step_seconds) < MIN_RUN_STEPS:
        return None
    seconds = float(statistics.median(step_seconds))
    if not seconds > 0:
        return None
    _write_entry(_key(model_config, cfg, choice), {"seconds": seconds, "source": "run", "steps": len(step_seconds)})
    return seconds
