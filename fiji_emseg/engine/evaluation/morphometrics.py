"""Per-object measurements of a binary mask: counts and calibrated sizes and shapes.

After segmentation biologists want how many organelles there are and how big they are. Each
connected component of a class mask becomes one row. Columns:

common
    ``class``, ``label`` (1..n within the class), ``voxels`` (count), ``equivalent_diameter``,
    ``centroid_z``, ``centroid_y``, ``centroid_x`` (voxel coordinates, 0-based, as Fiji's slice-1,
    y, x), inclusive bounding box ``z_min`` … ``x_max`` (voxel indices), ``touches_border``
    (1 when the object reaches the edge of the volume: its size is then a lower bound), and
    ``unit`` (the length unit; areas are in unit², volumes in unit³).
3D objects (``components='3d'``)
    ``volume`` = voxels × voxel volume; ``surface_area`` of the marching-cubes mesh (level 0.5,
    with the voxel size as spacing) of the object's zero-padded bounding box after Taubin
    smoothing (see :func:`surface_area` for its accuracy), so cavities count and a face cut by
    the volume border is closed; ``equivalent_diameter`` = diameter of the sphere of the same
    volume; ``sphericity`` = π^(1/3) (6V)^(2/3) / A (1 for a sphere; about 0.98–1.0 for a
    voxelised sphere, lower for objects of a few voxels).
2D objects (``components='2d'``: per slice, the default for a single image)
    ``area`` = pixels × pixel area; ``perimeter`` = length of the smoothed marching-squares
    contours (level 0.5, calibrated), holes included; ``equivalent_diameter`` = diameter of the disk of
    the same area; ``circularity`` = 4πA / P² (1 for a disk).

Components are labelled once with scipy, centroids come from one vectorised pass, bounding
boxes from ``scipy.ndimage.find_objects``; only the mesh is per object, on its small crop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ...errors import ConfigError, InputDataError
from ..data.components import label_components, label_sizes
from ..data.volume_io import Calibration

__all__ = ["COLUMNS_3D", "COLUMNS_2D", "SMOOTHING_ITERATIONS", "measure_objects", "surface_area", "perimeter",
           "resolve_components"]

_COMMON_TAIL = ("centroid_z", "centroid_y", "centroid_x", "z_min", "z_max", "y_min", "y_max", "x_min", "x_max",
                "touches_border", "unit")
#: Columns of a 3D table, in order.
COLUMNS_3D: tuple[str, ...] = ("class", "label", "voxels", "volume", "surface_area", "equivalent_diameter",
                               "sphericity", *_COMMON_TAIL)
#: Columns of a 2D (per-slice) table, in order.
COLUMNS_2D: tuple[str, ...] = ("class", "label", "voxels", "area", "perimeter", "equivalent_diameter",
                               "circularity", *_COMMON_TAIL)


def resolve_components(components: str, n_slices: int) -> str:
    """'auto' means '2d' for a single slice and '3d' for a stack."""
    c = str(components).strip().lower()
    if c == "auto":
        return "2d" if n_slices == 1 else "3d"
    if c not in ("2d", "3d"):
        raise ConfigError(f"components must be 'auto', '3d' or '2d', got {components!r}")
    return c


#: Taubin smoothing passes applied to meshes and contours (see :func:`surface_area`).
SMOOTHING_ITERATIONS = 10
_TAUBIN = (0.5, -0.53)  # lambda (shrink) and mu (inflate) of Taubin (1995)


def _taubin_mesh(verts: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Taubin lambda|mu smoothing of a triangle mesh (umbrella operator, volume-preserving)."""
    from scipy import sparse

    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adj = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    adj.data[:] = 1.0  # duplicate edges count once
    deg = np.asarray(adj.sum(axis=1)).ravel()
    mean_op = sparse.diags(1.0 / np.maximum(deg, 1)) @ adj
    v = verts.astype(np.float64, copy=True)
    for _ in range(iterations):
        for f in _TAUBIN:
            v += f * (mean_op @ v - v)
    return v


def _taubin_closed(points: np.ndarray, iterations: int) -> np.ndarray:
    """Taubin smoothing of a closed polyline given without its repeated last point."""
    c = points.astype(np.float64, copy=True)
    for _ in range(iterations):
        for f in _TAUBIN:
            c += f * (0.5 * (np.roll(c, 1, axis=0) + np.roll(c, -1, axis=0)) - c)
    return c


def surface_area(obj: np.ndarray, spacing: tuple[float, float, float],
                 smoothing: int = SMOOTHING_ITERATIONS) -> float:
    """Calibrated area of a binary (Z, Y, X) object's surface.

    Marching cubes (level 0.5, voxel size as spacing) on the zero-padded object, then
    ``smoothing`` passes of Taubin mesh smoothing. The raw mesh of a voxelised object follows
    its staircase and overestimates smooth surfaces by 8–20 %; after 10 passes a voxelised
    sphere of radius >= 5 voxels is within about 2 % (7 % at radius 3 or for 5:1
    anisotropy) and a box within 3 %. Objects of a few voxels come out rounder and smaller
    (a 3×3×3 cube: -25 %). ``smoothing=0`` gives the raw marching-cubes area.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(obj.astype(np.float32, copy=False), 1)
    if not padded.any():
        return 0.0
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(float(s) for s in spacing))
    if smoothing:
        verts = _taubin_mesh(verts, faces, int(smoothing))
    return float(mesh_surface_area(verts, faces))


def perimeter(obj: np.ndarray, spacing: tuple[float, float], smoothing: int = SMOOTHING_ITERATIONS) -> float:
    """Calibrated length of the contours of a binary (Y, X) object, holes included.

    Marching squares (level 0.5) on the zero-padded object, then ``smoothing`` Taubin passes on
    each closed contour: a digitised disk of radius >= 10 pixels is within about 1–2 %
    (raw contours: +7 to +17 %).
    """
    from skimage.measure import find_contours

    padded = np.pad(obj.astype(np.float32, copy=False), 1)
    scale = np.asarray([float(s) for s in spacing])
    total = 0.0
    for contour in find_contours(padded, 0.5):
        c = contour * scale
        if smoothing and len(c) > 3 and np.allclose(contour[0], contour[-1]):
            c = _taubin_closed(c[:-1], int(smoothing))
            c = np.vstack([c, c[:1]])
        d = np.diff(c, axis=0)
        total += float(np.hypot(d[:, 0], d[:, 1]).sum())
    return total


def _centroids(labels: np.ndarray, n: int, sizes: np.ndarray) -> np.ndarray:
    """(n, 3) mean voxel coordinates of labels 1..n, from per-axis weighted bincounts."""
    out = np.zeros((n, 3), dtype=np.float64)
    if n == 0:
        return out
    z, y, x = labels.shape
    zz = np.zeros(n + 1)
    yy = np.zeros(n + 1)
    xx = np.zeros(n + 1)
    yi = np.arange(y, dtype=np.float64)[:, None]
    xi = np.arange(x, dtype=np.float64)[None, :]
    for k in range(z):
        plane = labels[k]
        if not plane.any():
            continue
        flat = plane.ravel()
        zz += np.bincount(flat, minlength=n + 1)[: n + 1] * k
        yy += np.bincount(flat, weights=np.broadcast_to(yi, plane.shape).ravel(), minlength=n + 1)[: n + 1]
        xx += np.bincount(flat, weights=np.broadcast_to(xi, plane.shape).ravel(), minlength=n + 1)[: n + 1]
    s = np.maximum(sizes, 1)
    out[:, 0] = (zz / s)[1:]
    out[:, 1] = (yy / s)[1:]
    out[:, 2] = (xx / s)[1:]
    return out


def measure_objects(mask: Any, calibration: Calibration | None = None, *, class_name: str = "class",
                    components: str = "auto", connectivity: int = 1, min_voxels: int = 0,
                    smoothing: int = SMOOTHING_ITERATIONS) -> Any:
    """Measure every connected component of one binary (Z, Y, X) mask; returns a DataFrame.

    ``components`` is '3d', '2d' (each slice on its own) or 'auto' (2d for a single slice).
    Objects with fewer than ``min_voxels`` voxels are left out of the table (the mask itself is
    not changed). ``smoothing`` is the number of Taubin passes on meshes and contours (0 = raw
    marching cubes / squares). See the module docstring for the columns.
    """
    import pandas as pd

    cal = calibration or Calibration()
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise InputDataError(f"{class_name}: expected a 2D mask or a (Z, Y, X) stack, got shape {m.shape}")
    if isinstance(min_voxels, bool) or int(min_voxels) < 0:
        raise ConfigError(f"min_voxels must be a whole number >= 0, got {min_voxels!r}")
    comp = resolve_components(components, m.shape[0])
    columns = COLUMNS_3D if comp == "3d" else COLUMNS_2D
    labels, n = label_components(m, comp, connectivity)
    sizes = label_sizes(labels, n)
    sizes[0] = 0
    keep = np.flatnonzero(sizes[1:] >= max(1, int(min_voxels))) + 1
    if keep.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("class", "unit") else float) for c in columns})
    boxes = ndi.find_objects(labels, max_label=n)
    cents = _centroids(labels, n, sizes)
    dz, dy, dx = cal.voxel_size
    shape = labels.shape
    rows: dict[str, list[Any]] = {c: [] for c in columns}
    for lab in keep:
        sl = boxes[lab - 1]
        assert sl is not None
        crop = labels[sl] == lab
        count = int(sizes[lab])
        box = (sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1, sl[2].start, sl[2].stop - 1)
        if comp == "3d":
            vol = count * cal.voxel_volume
            area = surface_area(crop, (dz, dy, dx), smoothing)
            rows["volume"].append(vol)
            rows["surface_area"].append(area)
            rows["equivalent_diameter"].append((6.0 * vol / math.pi) ** (1.0 / 3.0))
            rows["sphericity"].append(math.pi ** (1.0 / 3.0) * (6.0 * vol) ** (2.0 / 3.0) / area if area > 0 else 0.0)
            border = (box[0] == 0 or box[1] == shape[0] - 1 or box[2] == 0 or box[3] == shape[1] - 1
                      or box[4] == 0 or box[5] == shape[2] - 1)
        else:
            a = count * dy * dx
            p = perimeter(crop[0], (dy, dx), smoothing)
            rows["area"].append(a)
            rows["perimeter"].append(p)
            rows["equivalent_diameter"].append(2.0 * math.sqrt(a / math.pi))
            rows["circularity"].append(4.0 * math.pi * a / (p * p) if p > 0 else 0.0)
            border = box[2] == 0 or box[3] == shape[1] - 1 or box[4] == 0 or box[5] == shape[2] - 1
        rows["voxels"].append(count)
        cz, cy, cx = cents[lab - 1]
        rows["centroid_z"].append(cz)
        rows["centroid_y"].append(cy)
        rows["centroid_x"].append(cx)
        for name, v in zip(("z_min", "z_max", "y_min", "y_max", "x_min", "x_max"), box, strict=True):
            rows[name].append(int(v))
        rows["touches_border"].append(int(border))
    k = len(keep)
    rows["class"] = [class_name] * k
    rows["label"] = list(range(1, k + 1))
    rows["unit"] = [cal.unit] * k
    return pd.DataFrame(rows, columns=list(columns))
