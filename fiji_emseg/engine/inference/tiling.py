"""The sliding-window plan: where tiles go and how their outputs are blended.

Definitions (per axis, as in MONAI's ``sliding_window_inference`` but exact):

- The *reference* output is the network applied to the whole image, reflect-padded at its end
  to a multiple of the model's spatial multiple ``m``, then cropped.
- Tiles have one fixed size ``t`` (a multiple of ``m``; shrunk to the padded image when that is
  smaller, so small images are one tile) and start at multiples of ``m``, so every tile sees the
  same pooling grid as the whole image. The last tile ends at the padded image end; no tile is
  ever all padding.
- Where two tiles overlap by ``L`` voxels, each discards ``h = min(halo, L // 2)`` voxels at the
  shared edge (weight 0: those outputs are influenced by the tile border) and the remaining
  ``L - 2h`` voxels are blended. With ``L >= 2 × halo`` (the default overlap), every voxel with a
  non-zero weight is exactly the reference value, so the blended result equals the reference
  whatever the blending mode; smaller overlaps trade exactness for speed.
- Blending modes: ``cosine`` (cos²/sin² ramps that sum to one: the default), ``gaussian``
  (MONAI-style importance map, σ = ``sigma_scale`` × tile, restricted to the valid part) and
  ``constant`` (plain average of the valid parts). Weights are always normalised by their sum.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...errors import ConfigError

__all__ = ["BLEND_MODES", "AxisPlan", "TilingPlan", "plan_axis", "plan_tiling"]

BLEND_MODES = ("cosine", "gaussian", "constant")


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class AxisPlan:
    """Tile starts and blending weights along one axis."""

    size: int  # image extent
    padded: int  # extent of the reference (multiple of m)
    tile: int
    starts: tuple[int, ...]
    halo: int
    blend: str
    sigma_scale: float = 0.125

    @cached_property
    def weights(self) -> tuple[np.ndarray, ...]:
        out = []
        n = len(self.starts)
        for i, s in enumerate(self.starts):
            lo = self.starts[i - 1] + self.tile - s if i > 0 else 0
            hi = s + self.tile - self.starts[i + 1] if i < n - 1 else 0
            out.append(self._weight(lo, hi))
        return tuple(out)

    def _weight(self, lo: int, hi: int) -> np.ndarray:
        t = self.tile
        valid = np.ones(t, dtype=np.float64)
        h_lo, h_hi = min(self.halo, lo // 2), min(self.halo, hi // 2)
        valid[:h_lo] = 0
        if h_hi:
            valid[t - h_hi:] = 0
        if self.blend == "constant":
            w = valid
        elif self.blend == "gaussian":
            x = np.arange(t) + 0.5 - t / 2
            w = np.exp(-0.5 * (x / (self.sigma_scale * t)) ** 2)
            w = np.maximum(w / w.max(), 1e-4) * valid
        else:  # cosine ramps over the blended part of each overlap
            w = valid.copy()
            r_lo = lo - 2 * h_lo
            if r_lo > 0:
                q = (np.arange(r_lo) + 0.5) / r_lo
                w[h_lo:h_lo + r_lo] = np.sin(0.5 * np.pi * q) ** 2
            r_hi = hi - 2 * h_hi
            if r_hi > 0:
                q = (np.arange(r_hi) + 0.5) / r_hi
                w[t - h_hi - r_hi:t - h_hi] *= np.cos(0.5 * np.pi * q) ** 2
        return w.astype(np.float32)

    @cached_property
    def profile_id(self) -> tuple[int, ...]:
        """Per tile, the index of its weight profile among the distinct ones (for caching)."""
        seen: dict[bytes, int] = {}
        return tuple(seen.setdefault(w.tobytes(), len(seen)) for w in self.weights)

    @property
    def computed(self) -> int:
        return len(self.starts) * self.tile


def plan_axis(size: int, tile: int, overlap: int, multiple: int, halo: int, blend: str = "cosine",
              sigma_scale: float = 0.125) -> AxisPlan:
    """Plan one axis (see module docstring)."""
    if size < 1:
        raise ConfigError(f"cannot tile an empty axis (size {size})")
    if blend not in BLEND_MODES:
        raise ConfigError(f"unknown blending mode {blend!r}; use {', '.join(BLEND_MODES)}")
    if tile < multiple or tile % multiple:
        raise ConfigError(f"tile size {tile} must be a positive multiple of {multiple} (the model's spatial multiple)")
    if overlap < 0:
        raise ConfigError(f"overlap must be 0 or more, got {overlap}")
    padded = _ceil_to(size, multiple)
    if tile >= padded:
        return AxisPlan(size, padded, padded, (0,), halo, blend, sigma_scale)
    stride = ((tile - overlap) // multiple) * multiple
    if stride < multiple:
        raise ConfigError(
            f"overlap {overlap} leaves no room to advance with tile {tile}; use a larger tile or a smaller overlap "
            f"(tile − overlap must be at least {multiple})")
    starts = list(range(0, padded - tile, stride))
    starts.append(padded - tile)
    starts = sorted(set(starts))
    return AxisPlan(size, padded, tile, tuple(starts), halo, blend, sigma_scale)


@dataclass(frozen=True)
class TilingPlan:
    """Tiles over a (Z, Y, X) volume; for 2D models the Z axis has tile 1 and stride 1."""

    z: AxisPlan
    y: AxisPlan
    x: AxisPlan

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        return (self.z.tile, self.y.tile, self.x.tile)

    @property
    def n_tiles(self) -> int:
        return len(self.z.starts) * len(self.y.starts) * len(self.x.starts)

    @property
    def overhead(self) -> float:
        """Computed voxels per output voxel (1.0 = no redundant work)."""
        return (self.z.computed * self.y.computed * self.x.computed) / (self.z.size * self.y.size * self.x.size)

    def rows(self) -> Iterator[tuple[int, int, list[tuple[int, int, int, int]]]]:
        """Per z-row: (row index, z start, [(y index, x index, y start, x start), …])."""
        yx = [(iy, ix, ys, xs) for iy, ys in enumerate(self.y.starts) for ix, xs in enumerate(self.x.starts)]
        for iz, zs in enumerate(self.z.starts):
            yield iz, zs, yx

    def weight(self, iz: int, iy: int, ix: int) -> np.ndarray:
        """(tz, ty, tx) blending weight of one tile (separable), cached: tiles share a few profiles."""
        key = (self.z.profile_id[iz], self.y.profile_id[iy], self.x.profile_id[ix])
        cache = self._weight_cache
        if key not in cache:
            wz, wy, wx = self.z.weights[iz], self.y.weights[iy], self.x.weights[ix]
            cache[key] = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
        return cache[key]

    @cached_property
    def _weight_cache(self) -> dict[tuple[int, int, int], np.ndarray]:
        return {}


def plan_tiling(shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int], multiple: Sequence[int],
                halo: Sequence[int], dims: int, blend: str = "cosine", sigma_scale: float = 0.125) -> TilingPlan:
    """Plan a (Z, Y, X) volume; for ``dims == 2`` the Z axis is walked slice by slice."""
    z, y, x = (int(s) for s in shape)
    tz, ty, tx = (int(t) for t in tile)
    oz, oy, ox = (int(o) for o in overlap)
    mz, my, mx = (int(m) for m in multiple)
    hz, hy, hx = (int(h) for h in halo)
    if dims == 2:
        zplan = AxisPlan(z, z, 1, tuple(range(z)), 0, "constant")
    else:
        zplan = plan_axis(z, tz, oz, mz, hz, blend, sigma_scale)
    return TilingPlan(zplan, plan_axis(y, ty, oy, my, hy, blend, sigma_scale), plan_axis(x, tx, ox, mx, hx, blend, sigma_scale))
