"""Connected components of binary mask volumes: labelling, sizes and block-wise passes.

The one labelling every stage shares: mask clean-up after prediction (small objects, holes),
object-level evaluation and morphometrics. Label volumes are int32 and large passes go block
by block along Z, so peak memory stays a few bytes per voxel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ...errors import ConfigError, InputDataError

__all__ = [
    "COMPONENTS",
    "normalize_connectivity",
    "check_components",
    "connectivity_structure",
    "label_components",
    "label_sizes",
    "z_blocks",
]

#: Allowed values of the ``components`` option.
COMPONENTS = ("3d", "2d")

#: Voxels per block for block-wise passes (keeps temporaries at a few tens of MB).
_BLOCK_VOXELS = 1 << 22

#: Neighbour counts accepted as connectivity, with the rank they mean (3D counts, 2D counts).
_NEIGHBOURS_3D = {6: 1, 18: 2, 26: 3}
_NEIGHBOURS_2D = {4: 1, 8: 2}


def normalize_connectivity(connectivity: int, ndim: int) -> int:
    """Turn a connectivity into scipy's rank (1 .. ndim) for an ``ndim``-dimensional labelling.

    Accepted: the rank itself (1 = faces only, ``ndim`` = faces, edges and corners, as in
    scikit-image) or the neighbour count (6, 18, 26 in 3D; 4, 8 in 2D). In 2D, rank 3 and the
    3D counts are read as their restriction to a plane (6 -> 4, 18 and 26 -> 8), so one setting
    serves both 2D and 3D components.
    """
    try:
        c = int(connectivity)
    except (TypeError, ValueError):
        raise ConfigError(f"connectivity must be a whole number, got {connectivity!r}; use 1 (faces) to {ndim} (full), "
                          "or 6/18/26 in 3D, 4/8 in 2D") from None
    if isinstance(connectivity, float) and connectivity != c:
        raise ConfigError(f"connectivity must be a whole number, got {connectivity!r}; use e.g. 1 or 26")
    if ndim == 3:
        if 1 <= c <= 3:
            return c
        if c in _NEIGHBOURS_3D:
            return _NEIGHBOURS_3D[c]
        raise ConfigError(f"connectivity {c} is not valid for 3D components; use 1, 2, 3 or 6, 18, 26 neighbours")
    if ndim == 2:
        if 1 <= c <= 3:
            return min(c, 2)
        if c in _NEIGHBOURS_2D:
            return _NEIGHBOURS_2D[c]
        if c in _NEIGHBOURS_3D:
            return 1 if c == 6 else 2
        raise ConfigError(f"connectivity {c} is not valid for 2D components; use 1, 2 or 4, 8 neighbours")
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def connectivity_structure(connectivity: int, ndim: int) -> np.ndarray:
    """The structuring element scipy uses for a connectivity (see :func:`normalize_connectivity`)."""
    return ndi.generate_binary_structure(ndim, normalize_connectivity(connectivity, ndim))


def check_components(components: str) -> str:
    """Validate the ``components`` option ('3d' or '2d', case-insensitive)."""
    c = str(components).strip().lower()
    if c not in COMPONENTS:
        raise ConfigError(f"components must be '3d' (objects across slices) or '2d' (objects per slice), "
                          f"got {components!r}")
    return c


def _as_zyx(mask: Any) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputDataError(f"expected a 2D mask or a (Z, Y, X) mask stack, got shape {arr.shape}")
    return arr


def z_blocks(shape: tuple[int, ...], block_voxels: int | None = None) -> Iterator[slice]:
    """Slices along Z covering a (Z, Y, X) volume in blocks of about ``block_voxels`` voxels."""
    plane = max(1, int(np.prod(shape[1:])))
    step = max(1, (block_voxels or _BLOCK_VOXELS) // plane)
    for z0 in range(0, shape[0], step):
        yield slice(z0, min(shape[0], z0 + step))


def label_components(mask: Any, components: str = "3d", connectivity: int = 1) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary (Z, Y, X) mask.

    Returns an int32 label volume (0 = background, objects 1..n) and n. With
    ``components='2d'`` every slice is labelled on its own and labels continue across slices,
    so an organelle cut by 10 sections counts as 10 objects.
    """
    comp = check_components(components)
    m = _as_zyx(mask)
    out = np.zeros(m.shape, dtype=np.int32)
    if comp == "3d":
        n = ndi.label(m, structure=connectivity_structure(connectivity, 3), output=out)
        return out, int(n)
    structure = connectivity_structure(connectivity, 2)
    total = 0
    for z in range(m.shape[0]):
        plane = out[z]
        k = int(ndi.label(m[z], structure=structure, output=plane))
        if k and total:
            np.add(plane, total, out=plane, where=plane > 0)
        total += k
    return out, total


def label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of every label 0..n (int64), counted block by block to avoid an int64 copy."""
    sizes = np.zeros(n + 1, dtype=np.int64)
    lab = labels if labels.ndim == 3 else labels[None]
    total = 0
    for zs in z_blocks(lab.shape):
        block = lab[zs]
        fg = block[block > 0]  # objects are usually a small fraction: count only them
        total += block.size
        if fg.size:
            sizes += np.bincount(fg, minlength=n + 1)[: n + 1]
    sizes[0] = total - int(sizes[1:].sum())
    return sizes
