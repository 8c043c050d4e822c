"""Built-in synthetic EM-like volumes, so the whole workflow runs on a fresh machine with no data.

The generator imitates what makes real EM segmentation hard rather than easy: cells are a warped,
anisotropic 3D Voronoi partition whose boundaries are thin dark membranes; mitochondria are
elongated ellipsoids with a dark outer membrane and a striated (cristae-like) darker interior;
unlabelled dark vesicles and granules sit in a textured cytoplasm; the stack is blurred, noisy,
and its brightness and contrast drift from slice to slice. Dark pixels are therefore *not*
all membrane, so a global threshold scores a poor F1 and a model has to learn shape and context.

Two mutually exclusive classes, ``mitochondria`` and ``membrane``, so the same sample serves
sigmoid (multi-label) and softmax (exclusive) models. Everything is drawn from one
``numpy.random.Generator`` seeded by ``seed``: the same arguments give the same volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ...errors import ConfigError
from .files import check_writable
from .sample import Sample
from .volume_io import Calibration, write_volume

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_sample", "write_synthetic_dataset"]

#: Class names of a synthetic sample, in mask order.
SYNTHETIC_CLASSES: tuple[str, str] = ("mitochondria", "membrane")

# Grey levels of the rendered structures (before blur, drift and noise).
_CYTOPLASM = (150.0, 185.0)  # range of per-cell base brightness
_MEMBRANE = 55.0
_MITO_MATRIX = 118.0
_MITO_OUTER = 62.0
_CRISTAE = 78.0
_VESICLE_RIM = 72.0
_VESICLE_LUMEN = 178.0
_GRANULE = 70.0

_PLANE = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)  # 2D cross, one slice thick


def make_synthetic_sample(shape: tuple[int, int, int] = (16, 256, 256), seed: int = 0, name: str = "synthetic", *,
                          voxel_size: tuple[float, float, float] = (40.0, 5.0, 5.0),
                          cell_diameter: float = 70.0,
                          mito_fraction: float = 0.09,
                          vesicles: bool = True,
                          noise: float = 12.0) -> Sample:
    """An EM-like volume with mitochondria and cell-membrane masks (see module docstring).

    ``voxel_size`` is (z, y, x) in nm; the z/x ratio sets how many slices a structure spans.
    ``cell_diameter`` is in pixels, ``mito_fraction`` the target mitochondria foreground
    (reached to within one mitochondrion where the volume has room) and ``noise`` the standard
    deviation of the added Gaussian noise in grey levels.
    """
    zyx = _check_args(shape, voxel_size, cell_diameter, mito_fraction, noise)
    rng = np.random.default_rng(seed)
    aniso = float(voxel_size[0]) / float(voxel_size[2])  # slice thickness in in-plane pixels

    cells = _voronoi_cells(zyx, aniso, cell_diameter, rng)
    membrane = _boundaries(cells)
    inner = ~ndimage.binary_dilation(membrane, _PLANE, iterations=4)  # room for organelles
    mito, phase = _mitochondria(cells, inner, aniso, mito_fraction, rng)
    membrane &= ~mito

    image = _render(cells, membrane, mito, phase, inner, vesicles, aniso, noise, rng)
    return Sample(
        name=name,
        image=image,
        masks=np.stack([mito, membrane]).astype(np.uint8),
        class_names=SYNTHETIC_CLASSES,
        calibration=Calibration(tuple(float(v) for v in voxel_size), "nm"),  # type: ignore[arg-type]
    )


def write_synthetic_dataset(folder: str | os.PathLike[str], shape: tuple[int, int, int] = (16, 256, 256),
                            seed: int = 0, overwrite: bool = False) -> list[Path]:
    """Write a synthetic sample as ``image.tif`` plus one 0/255 mask TIFF per class into *folder*.

    Every target is checked before anything is written, so an existing file never leaves a
    half-written set behind. Returns the written paths, image first.
    """
    folder = Path(folder)
    targets = [folder / "image.tif"] + [folder / f"{c}.tif" for c in SYNTHETIC_CLASSES]
    for path in targets:
        check_writable(path, overwrite)
    sample = make_synthetic_sample(shape, seed=seed, name=folder.name or "synthetic")
    assert sample.masks is not None
    write_volume(targets[0], sample.image, sample.calibration, overwrite=overwrite)
    for path, mask in zip(targets[1:], sample.masks, strict=True):
        write_volume(path, mask * np.uint8(255), sample.calibration, overwrite=overwrite)
    return targets


# --------------------------------------------------------------------------- geometry


def _check_args(shape: tuple[int, int, int], voxel_size: tuple[float, float, float], cell_diameter: float,
                mito_fraction: float, noise: float) -> tuple[int, int, int]:
    try:
        zyx = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        zyx = ()
    if len(zyx) != 3 or zyx[0] < 1 or zyx[1] < 32 or zyx[2] < 32:
        raise ConfigError(f"synthetic volume shape must be (Z, Y, X) with Z >= 1 and Y, X >= 32, got {shape}")
    if len(voxel_size) != 3 or not all(np.isfinite(v) and v > 0 for v in voxel_size):
        raise ConfigError(f"voxel size must be three positive numbers (z, y, x) in nm, got {voxel_size}")
    if not 16 <= cell_diameter <= 1000:
        raise ConfigError(f"cell diameter must be between 16 and 1000 pixels, got {cell_diameter}")
    if not 0 <= mito_fraction <= 0.3:
        raise ConfigError(f"mitochondria fraction must be between 0 and 0.3, got {mito_fraction}")
    if not 0 <= noise <= 100:
        raise ConfigError(f"noise must be between 0 and 100 grey levels, got {noise}")
    return zyx  # type: ignore[return-value]


def _smooth_field(shape: tuple[int, int, int], aniso: float, scale: float, rng: np.random.Generator,
                  dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Smooth random values of unit amplitude varying over about *scale* physical pixels.

    Random values on a coarse grid are interpolated with separable Gaussian weights: three small
    matrix products, much faster than ``ndimage.zoom`` and smooth everywhere. Geometry uses
    float64, so that BLAS rounding differences between machines cannot move a cell boundary.
    """
    weights = []
    for axis, n in enumerate(shape):
        pos = np.arange(n, dtype=dtype) * dtype(aniso if axis == 0 else 1.0)
        grid = (np.arange(int(np.ceil(float(pos[-1]) / scale)) + 4, dtype=dtype) - 1.5) * dtype(scale)
        w = np.exp(-0.5 * ((pos[:, None] - grid[None, :]) / dtype(0.6 * scale)) ** 2)
        weights.append(w / w.sum(axis=1, keepdims=True))
    wz, wy, wx = weights
    coarse = rng.standard_normal((wz.shape[1], wy.shape[1], wx.shape[1])).astype(dtype)
    field = np.tensordot(wz, (wy @ (coarse @ wx.T)), axes=(1, 0))
    field /= max(float(field.std()), 1e-6)
    return np.ascontiguousarray(field, dtype=dtype)


def _voronoi_cells(shape: tuple[int, int, int], aniso: float, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Cell labels: nearest jittered-grid seed in warped physical space (cells run longer in z)."""
    z, y, x = shape
    spacing = np.array([1.6 * diameter, diameter, diameter])  # physical units (in-plane pixels)
    extent = np.array([z * aniso, y, x], dtype=float)
    lo, hi = -spacing, extent + spacing
    grid = [np.arange(lo[i] + spacing[i] / 2, hi[i], spacing[i]) for i in range(3)]
    seeds = np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 3)
    seeds += rng.uniform(-0.4, 0.4, seeds.shape) * spacing
    tree = cKDTree(seeds * np.array([1.0 / 1.6, 1.0, 1.0]))

    amp = 0.18 * diameter
    warp = [amp * _smooth_field(shape, aniso, diameter, rng, np.float64) for _ in range(3)]
    yy, xx = np.meshgrid(np.arange(y, dtype=float), np.arange(x, dtype=float), indexing="ij")
    zz = np.arange(z, dtype=float)[:, None, None] * aniso
    cells = np.empty(shape, dtype=np.int32)
    step = max(1, (1 << 20) // (y * x))  # about a million points per query keeps memory bounded
    for k in range(0, z, step):
        sl = slice(k, k + step)
        pts = np.stack(np.broadcast_arrays((zz[sl] + warp[0][sl]) / 1.6, yy + warp[1][sl], xx + warp[2][sl]), -1)
        cells[sl] = tree.query(pts.reshape(-1, 3), workers=-1)[1].reshape(pts.shape[:3])
    return cells


def _boundaries(cells: np.ndarray) -> np.ndarray:
    """In-plane cell boundaries, about three pixels wide, like a membrane seen at 5 nm pixels."""
    b = np.zeros(cells.shape, dtype=bool)
    b[:, 1:, :] |= cells[:, 1:, :] != cells[:, :-1, :]
    b[:, :, 1:] |= cells[:, :, 1:] != cells[:, :, :-1]
    return ndimage.binary_dilation(b, _PLANE)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Rows: long axis (mostly in-plane, tilted in z), then two short axes; (z, y, x) components."""
    theta = rng.uniform(0, np.pi)
    tilt = rng.uniform(-0.7, 0.7)
    u = np.array([np.sin(tilt), np.cos(tilt) * np.sin(theta), np.cos(tilt) * np.cos(theta)])
    v = np.cross(u, [1.0, 0.0, 0.0])
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    roll = rng.uniform(0, np.pi)
    v, w = np.cos(roll) * v + np.sin(roll) * w, -np.sin(roll) * v + np.cos(roll) * w
    return np.stack([u, v, w])


def _mitochondria(cells: np.ndarray, inner: np.ndarray, aniso: float, target: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Non-touching ellipsoids, each clipped to the cell it starts in, until *target* is reached.

    Also returns each voxel's position along its mitochondrion's long axis (for the cristae).
    """
    shape = cells.shape
    mito = np.zeros(shape, dtype=bool)
    phase = np.zeros(shape, dtype=np.float32)
    need = target * mito.size
    have = 0
    candidates = np.argwhere(inner[:, ::4, ::4]) * np.array([1, 4, 4])
    if not len(candidates) or target <= 0:
        return mito, phase
    for _ in range(60 + int(need // 300)):
        if have >= need:
            break
        c = candidates[rng.integers(len(candidates))]
        semi = np.array([rng.uniform(22, 42), rng.uniform(9, 14), rng.uniform(9, 14)])  # physical px
        rot = _rotation(rng)
        half = np.sqrt(((rot * semi[:, None]) ** 2).sum(axis=0))  # bounding half-extent per axis
        half_vox = np.ceil(half / np.array([aniso, 1.0, 1.0])).astype(int)
        lo = np.maximum(c - half_vox, 0)
        hi = np.minimum(c + half_vox + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        dz, dy, dx = np.ogrid[lo[0] - c[0]:hi[0] - c[0], lo[1] - c[1]:hi[1] - c[1], lo[2] - c[2]:hi[2] - c[2]]
        dz = dz * aniso
        q = [rot[i, 0] * dz + rot[i, 1] * dy + rot[i, 2] * dx for i in range(3)]
        body = (q[0] / semi[0]) ** 2 + (q[1] / semi[1]) ** 2 + (q[2] / semi[2]) ** 2 <= 1.0
        body &= (cells[box] == cells[tuple(c)]) & inner[box]
        size = int(body.sum())
        if size < 150 or have + size > 1.5 * need:
            continue  # too small to look like one, or would overshoot the target on small volumes
        if ndimage.binary_dilation(body, _PLANE, iterations=3)[mito[box]].any():
            continue  # keep mitochondria apart: touching ones would merge into one object
        mito[box] |= body
        phase[box] = np.where(body, q[0] + rng.uniform(0, 10), phase[box])
        have += size
    return mito, phase


# --------------------------------------------------------------------------- appearance


def _render(cells: np.ndarray, membrane: np.ndarray, mito: np.ndarray, phase: np.ndarray, inner: np.ndarray,
            vesicles: bool, aniso: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    shape = cells.shape
    base = rng.uniform(*_CYTOPLASM, size=int(cells.max()) + 1).astype(np.float32)
    img = base[cells]
    grain = rng.standard_normal(shape, dtype=np.float32)
    img += 9.0 * ndimage.gaussian_filter(grain, (0.0, 1.2, 1.2)) / 0.24  # fine cytoplasm texture
    img += 7.0 * _smooth_field(shape, aniso, 12.0, rng)  # blotches

    # mitochondria: dark outer membrane, grey matrix crossed by dark cristae lamellae
    interior = ndimage.binary_erosion(mito, _PLANE, iterations=2)
    period = 9.0
    cristae = interior & (np.cos(2 * np.pi * phase / period) > 0.55)
    img[mito] = _MITO_MATRIX + 0.5 * (img[mito] - base[cells[mito]])
    img[cristae] = _CRISTAE
    img[mito & ~interior] = _MITO_OUTER

    if vesicles:
        free = inner & ~ndimage.binary_dilation(mito, _PLANE, iterations=3)
        _draw_vesicles(img, free, rng)

    img[membrane] = _MEMBRANE + 0.3 * (img[membrane] - _MEMBRANE)
    img = ndimage.gaussian_filter(img, (0.0, 1.0, 1.0))

    # slice-to-slice drift of brightness and contrast, and uneven illumination within a slice
    z, y, x = shape
    gain = np.clip(1.0 + np.cumsum(rng.normal(0, 0.04, z)), 0.75, 1.25).astype(np.float32)
    offset = np.clip(np.cumsum(rng.normal(0, 5.0, z)), -25, 25).astype(np.float32)
    gy = np.linspace(-1, 1, y, dtype=np.float32)[None, :, None] * rng.uniform(-8, 8, (z, 1, 1)).astype(np.float32)
    gx = np.linspace(-1, 1, x, dtype=np.float32)[None, None, :] * rng.uniform(-8, 8, (z, 1, 1)).astype(np.float32)
    mean = float(img.mean())
    img = (img - mean) * gain[:, None, None] + mean + offset[:, None, None] + gy + gx
    img += noise * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw_vesicles(img: np.ndarray, free: np.ndarray, rng: np.random.Generator) -> None:
    """Unlabelled distractors: round vesicles with a dark rim, and small dark granules."""
    z, y, x = img.shape
    spots = np.argwhere(free[:, ::3, ::3]) * np.array([1, 3, 3])
    if not len(spots):
        return
    n = int(z * y * x / 3000)
    for k, (cz, cy, cx) in enumerate(spots[rng.integers(len(spots), size=n)]):
        granule = k % 3 == 0
        r = rng.uniform(1.5, 2.5) if granule else rng.uniform(3.5, 7.0)
        depth = 0 if granule or rng.random() < 0.5 else 1  # vesicles may span two slices
        ri = int(np.ceil(r)) + 1
        z0, z1 = max(cz - depth, 0), min(cz + depth + 1, z)
        y0, y1, x0, x1 = max(cy - ri, 0), min(cy + ri + 1, y), max(cx - ri, 0), min(cx + ri + 1, x)
        yy, xx = np.ogrid[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
        d = np.sqrt(yy * yy + xx * xx)
        ok = free[z0:z1, y0:y1, x0:x1]
        view = img[z0:z1, y0:y1, x0:x1]
        if granule:
            view[ok & (d <= r)] = _GRANULE
        else:
            view[ok & (d <= r - 1.3)] = _VESICLE_LUMEN
            view[ok & (d > r - 1.3) & (d <= r)] = _VESICLE_RIM
