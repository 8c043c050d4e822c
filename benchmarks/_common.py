"""Helpers shared by the benchmarks: a reproducible model folder, timing, and fresh child processes.

- :func:`make_model_folder` builds a model from a :class:`ModelConfig` with a fixed seed, gives its
  BatchNorm layers *calibrated* running statistics (fresh ones, mean 0 / var 1, make a random
  deep net saturate, so every mask would be empty or full and mask comparisons would be vacuous),
  saves it the way ``emseg train`` does (``save_weights`` + ``write_model_info``) and exports
  ``model.onnx`` beside it, so the :class:`Predictor` finds a verified export and does not export again.
- Memory is measured with ``_memory.py`` (``peak_rss_mib``: the kernel's exact high-water mark of
  *this* process, ``VmHWM``; ``MemoryPeak``: a sampler of anonymous or resident memory).
  ``ru_maxrss`` is not used because after ``fork``/``vfork`` + ``exec`` Linux carries the parent's
  high-water mark into the child, so a child started by a big parent (pytest with torch loaded)
  reports at least the parent's size. :func:`run_child` runs code in a fresh interpreter so that
  peaks of different runs never mix.
- Convention: every benchmark accepts ``--quick`` (a smoke run under about two minutes, whose
  figures are indicative only).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

__all__ = [
    "ROOT",
    "add_quick_flag",
    "calibrate_batchnorm",
    "fmt_rate",
    "make_model_folder",
    "median",
    "run_child",
    "timed",
]


def calibrate_batchnorm(module: Any, shape: Sequence[int], seed: int = 0, passes: int = 2) -> None:
    """Set BatchNorm running statistics to those of random normalised input (cumulative average)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all calibration passes
    module.train()
    with torch.no_grad():
        for _ in range(passes):
            module(torch.rand(tuple(shape), generator=gen))
    for m in norms:
        m.momentum = 0.1
    module.eval()


def make_model_folder(folder: str | Path, config: Any = None, *, seed: int = 0, export: bool = True) -> Path:
    """A model folder (config.json, weights.safetensors, model.onnx) with seeded random weights."""
    import torch

    from fiji_emseg.engine.models.architectures import build_model
    from fiji_emseg.engine.models.model_config import ModelConfig
    from fiji_emseg.engine.models.model_store import (
        WEIGHTS_NAME,
        ModelInfo,
        save_weights,
        write_model_info,
    )
    from fiji_emseg.engine.models.receptive_field import measure_config_receptive_field

    config = config or ModelConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = build_model(config)
    m = config.spatial_multiple[1]
    side = max(4 * m, 128)
    shape = (2, config.in_channels, side, side) if config.dims == 2 else (2, config.in_channels, 2 * config.spatial_multiple[0], side, side)
    calibrate_batchnorm(net, shape, seed)
    save_weights(net, folder / WEIGHTS_NAME)
    info = ModelInfo(model=config, receptive_field=measure_config_receptive_field(config),
                     training={"note": f"random weights (seed {seed}) with calibrated BatchNorm, for benchmarks"})
    write_model_info(folder, info)
    if export:
        from fiji_emseg.export.onnx_export import export_onnx

        export_onnx(folder, overwrite=True)
    return folder


def run_child(code: str, args: Sequence[str] = (), timeout: float = 900, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run *code* in a fresh Python (repository on the path); it must print one JSON object last."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env=child_env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"child process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"child process printed nothing:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, on the monotonic high-resolution clock."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def add_quick_flag(parser: Any) -> None:
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes); figures are indicative only")


def fmt_rate(voxels_per_s: float) -> str:
    """Voxels per second in k or M, as the field notes quote them."""
    if voxels_per_s >= 1e6:
        return f"{voxels_per_s / 1e6:.2f} M voxels/s"
    return f"{voxels_per_s / 1e3:.0f} k voxels/s"
