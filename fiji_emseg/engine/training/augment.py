"""Data augmentation for training patches (numpy, on the data-loading thread).

Geometric transforms (flips, 90° rotations in the XY plane) are applied identically to image,
targets and ignore mask; they are exact (no interpolation), so masks stay binary. Intensity
transforms (brightness, contrast, gamma, noise) act on the normalised image only and mimic
the section-to-section contrast drift of serial EM.

The spatial transform (off unless ``p_spatial`` > 0) gives a share of the patches a random
rotation by any angle, a zoom and a smooth elastic deformation in the XY plane (the same for
every slice of a 3D patch: sections are cut, not rotated, so Z stays as it is). It is the U-Net
paper's answer to few annotated slices: the network sees shapes that the annotation holds only
once. The image is resampled linearly; targets and ignore mask by nearest neighbour, so masks
and label maps keep their values. Coordinates outside the patch are mirrored, for image and
masks alike, so no voxel is invented without its label.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

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
    #: Share of patches given the spatial transform (0: none).
    p_spatial: float = 0.0
    #: Rotation, uniform in ± this many degrees.
    rotation: float = 180.0
    #: Zoom, log-uniform in [1 / (1 + scale), 1 + scale].
    scale: float = 0.2
    #: Elastic deformation: standard deviation (px) of the displacements of a 4 x 4 control grid,
    #: interpolated smoothly over the patch: 4 px on a 256 px patch strains it by ~5 %, about the
    #: U-Net paper's 10 px on a 3 x 3 grid over its 572 px tiles.
    elastic: float = 4.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "gamma", "noise", "scale"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"augmentation {name} must be in [0, 1), got {v}")
        for name in ("p_intensity", "p_spatial"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0.0 <= self.rotation <= 180.0:
            raise ConfigError(f"augmentation rotation must be 0 to 180 degrees, got {self.rotation}")
        if self.elastic < 0:
            raise ConfigError(f"augmentation elastic must be >= 0 px, got {self.elastic}")

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(False, False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | AugmentConfig | None) -> AugmentConfig:
        """From a config.json entry; an AugmentConfig passes through (``TrainConfig.replace(augment=...)``)."""
        if isinstance(d, AugmentConfig):
            return d
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

    if config.p_spatial and rng.random() < config.p_spatial:
        src = spatial_coordinates(image.shape[1:], config, rng)
        image = _resample(image, src, order=1)
        target = _resample(target, src, order=0)
        valid = None if valid is None else _resample(valid, src, order=0)

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


def spatial_coordinates(shape: tuple[int, ...], config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Source coordinates (2, Y, X) of each output pixel: rotation and zoom about the centre, plus
    a smooth elastic displacement (a 4 x 4 grid of random shifts, cubic-interpolated)."""
    ny, nx = int(shape[0]), int(shape[1])
    angle = np.deg2rad(rng.uniform(-config.rotation, config.rotation))
    zoom = float(np.exp(rng.uniform(-np.log1p(config.scale), np.log1p(config.scale))))
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float32) - cy, np.arange(nx, dtype=np.float32) - cx, indexing="ij")
    cos, sin = np.float32(np.cos(angle) / zoom), np.float32(np.sin(angle) / zoom)
    src = np.stack([cos * yy - sin * xx + cy, sin * yy + cos * xx + cx])
    if config.elastic > 0:
        grid = rng.normal(0.0, config.elastic, size=(2, 4, 4)).astype(np.float32)
        wy, wx = _spline_weights(ny), _spline_weights(nx)
        for axis in range(2):  # = ndi.zoom(grid, (ny / 4, nx / 4), order=3), separably: 10x faster
            src[axis] += wy @ grid[axis] @ wx.T
    return src


@functools.lru_cache(maxsize=16)
def _spline_weights(n: int) -> np.ndarray:
    """(n, 4) cubic-spline weights that interpolate 4 control points over n pixels."""
    w = ndi.zoom(np.eye(4, dtype=np.float32), (n / 4, 1), order=3, mode="nearest", grid_mode=True)[:n]
    w.setflags(write=False)
    return w


def _resample(array: np.ndarray, src: np.ndarray, order: int) -> np.ndarray:
    """Every (Y, X) plane of *array* (any leading axes) sampled at *src*, mirrored beyond the edges."""
    planes = array.reshape(-1, *array.shape[-2:])
    out = np.empty(planes.shape, dtype=array.dtype)
    for i, plane in enumerate(planes):
        ndi.map_coordinates(plane, src, output=out[i], order=order, mode="mirror", prefilter=False)
    return out.reshape(array.shape)
