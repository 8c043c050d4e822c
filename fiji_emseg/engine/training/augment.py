"""Data augmentation for training patches (numpy, on the data-loading thread).

Geometric transforms (flips, 90° rotations in the XY plane) are applied identically to image,
targets and ignore mask; they are exact (no interpolation), so masks stay binary. Intensity
transforms (brightness, contrast, gamma, noise) act on the normalised image only and mimic
the section-to-section contrast drift of serial EM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError

__all__ = ["AugmentConfig", "augment_patch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply; intensity ranges are relative to the normalised range."""

    flips: bool = True
    rot90: bool = True
    flip_z: bool = True
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: float = 0.2
    noise: float = 0.03
    p_intensity: float = 0.5

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "gamma", "noise"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"augmentation {name} must be in [0, 1), got {v}")
        if not 0.0 <= self.p_intensity <= 1.0:
            raise ConfigError(f"p_intensity must be a probability, got {self.p_intensity}")

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(False, False, False, 0.0, 0.0, 0.0, 0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AugmentConfig:
        return cls(**(d or {}))


def augment_patch(image: np.ndarray, target: np.ndarray, valid: np.ndarray | None,
                  config: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Augment one patch. ``image``/``valid`` are (Z, Y, X); ``target`` is (C, Z, Y, X) or (Z, Y, X).

    Returns contiguous arrays (the geometric ops produce views).
    """
    lead = target.ndim - image.ndim  # 1 when target has a class axis
    z_axis, y_axis, x_axis = 0, 1, 2

    def geo(fn: Any) -> None:
        nonlocal image, target, valid
        image = fn(image, 0)
        target = fn(target, lead)
        if valid is not None:
            valid = fn(valid, 0)

    if config.flips:
        if rng.random() < 0.5:
            geo(lambda a, o: np.flip(a, o + y_axis))
        if rng.random() < 0.5:
            geo(lambda a, o: np.flip(a, o + x_axis))
    if config.flip_z and image.shape[0] > 1 and rng.random() < 0.5:
        geo(lambda a, o: np.flip(a, o + z_axis))
    if config.rot90:
        square = image.shape[1] == image.shape[2]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        if k:
            geo(lambda a, o: np.rot90(a, k, axes=(o + y_axis, o + x_axis)))

    image = np.array(image, dtype=np.float32, copy=True)
    target = np.ascontiguousarray(target)
    valid = None if valid is None else np.ascontiguousarray(valid)

    p = config.p_intensity
    if config.contrast and rng.random() < p:
        mean = float(image.mean())
        image -= mean
        image *= np.float32(1.0 + rng.uniform(-config.contrast, config.contrast))
        image += mean
    if config.brightness and rng.random() < p:
        image += np.float32(rng.uniform(-config.brightness, config.brightness))
    if config.gamma and rng.random() < p:
        lo, hi = float(image.min()), float(image.max())
        if hi > lo:
            g = float(np.exp(rng.uniform(-config.gamma, config.gamma)))
            scaled = (image - lo) / (hi - lo)
            np.power(scaled, g, out=scaled)
            image = (scaled * (hi - lo) + lo).astype(np.float32, copy=False)
    if config.noise and rng.random() < p:
        sigma = rng.uniform(0.0, config.noise)
        image += rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return image, target, valid
