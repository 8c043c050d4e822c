"""Intensity normalisation shared by training and prediction.

The method and its parameters are saved with the model so prediction normalises exactly as
training did. Statistics are computed on a deterministic subsample (a few evenly spaced slices,
strided pixels) so that a 100 GB stack costs a handful of slice reads, and the same function is
used on training samples and on prediction stacks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ...errors import ConfigError, InputDataError
from .volume_io import ArrayLike3D

__all__ = ["NormalizationConfig", "IntensityStats", "compute_stats", "apply_normalization"]

Method = Literal["percentile", "minmax", "fixed", "none"]


@dataclass(frozen=True)
class NormalizationConfig:
    """How raw intensities become network input.

    - ``percentile`` (default): map the ``low``/``high`` percentiles of each stack to 0/1. Robust
      to a few saturated or dead pixels, and to stacks of different bit depth.
    - ``minmax``: map each stack's minimum/maximum to 0/1 (DeepSCEM's behaviour).
    - ``fixed``: map the given ``low``/``high`` *intensity values* to 0/1, identical for every stack
      (useful in batch when stacks share an acquisition protocol).
    - ``none``: feed raw values as float32.
    """

    method: Method = "percentile"
    low: float = 1.0
    high: float = 99.8
    max_voxels: int = 4_000_000
    max_slices: int = 32

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "minmax", "fixed", "none"):
            raise ConfigError(f"unknown normalisation {self.method!r}; use percentile, minmax, fixed or none")
        if self.method == "percentile" and not (0.0 <= self.low < self.high <= 100.0):
            raise ConfigError(
                f"percentiles must satisfy 0 <= low < high <= 100, got low={self.low}, high={self.high}")
        if self.method == "fixed" and not self.low < self.high:
            raise ConfigError(f"fixed normalisation needs low < high, got low={self.low}, high={self.high}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> NormalizationConfig:
        return cls(**(d or {}))

    def describe(self) -> str:
        if self.method == "percentile":
            return f"percentile {self.low:g}–{self.high:g}"
        if self.method == "fixed":
            return f"fixed {self.low:g}–{self.high:g}"
        return self.method


@dataclass(frozen=True)
class IntensityStats:
    """The offset and scale applied to one stack: ``(x - offset) * scale``."""

    offset: float
    scale: float


def _subsample(volume: ArrayLike3D, max_slices: int, max_voxels: int) -> np.ndarray:
    z, y, x = volume.shape[-3:]
    n = min(z, max_slices)
    zs = np.unique(np.linspace(0, z - 1, n).round().astype(int))
    per_slice = max(1, max_voxels // len(zs))
    step = max(1, int(np.ceil(np.sqrt(y * x / per_slice))))
    parts = [np.asarray(volume[int(k), ::step, ::step]).ravel() for k in zs]
    return np.concatenate(parts)


def _exact_minmax(volume: ArrayLike3D, slab: int = 16) -> tuple[float, float]:
    if isinstance(volume, np.ndarray):
        return float(volume.min()), float(volume.max())
    lo, hi = np.inf, -np.inf
    for z0 in range(0, volume.shape[0], slab):
        block = np.asarray(volume[z0:z0 + slab])
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def compute_stats(volume: ArrayLike3D, config: NormalizationConfig, name: str = "image") -> IntensityStats:
    """Offset and scale for one stack under *config*; fails clearly on a constant stack."""
    if config.method == "none":
        return IntensityStats(0.0, 1.0)
    if config.method == "fixed":
        return IntensityStats(config.low, 1.0 / (config.high - config.low))
    if config.method == "minmax":
        lo, hi = _exact_minmax(volume)
    else:
        sample = _subsample(volume, config.max_slices, config.max_voxels)
        finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
        if finite.size == 0:
            raise InputDataError(f"{name}: no finite pixel values; check the image")
        lo, hi = (float(v) for v in np.percentile(finite, [config.low, config.high]))
        if hi <= lo:  # very sparse images: fall back to the full range of the subsample
            lo, hi = float(finite.min()), float(finite.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise InputDataError(f"{name}: contains NaN or infinite values; remove them (Fiji: Process > Math > Remove NaNs…)")
    if hi <= lo:
        raise InputDataError(f"{name}: the image is constant (every pixel is {lo:g}); there is nothing to segment")
    return IntensityStats(lo, 1.0 / (hi - lo))


def apply_normalization(data: np.ndarray, stats: IntensityStats, out: np.ndarray | None = None) -> np.ndarray:
    """``(data - offset) * scale`` as float32, in one pass, optionally into *out*."""
    if out is None:
        out = np.empty(data.shape, dtype=np.float32)
    np.subtract(data, stats.offset, out=out, casting="unsafe")
    out *= np.float32(stats.scale)
    return out
