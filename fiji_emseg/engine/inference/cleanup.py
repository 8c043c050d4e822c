"""Clean-up of a predicted binary mask: opening/closing, small objects, small holes.

Thresholded predictions carry speckles and pinholes that inflate object counts and distort
morphometrics. The clean-up here runs per class on a (Z, Y, X) uint8 0/1 mask, either in 3D or
slice by slice (``per_slice``, the right choice for strongly anisotropic ssTEM stacks and the one
a streaming predictor can apply with :func:`clean_mask_slice`).

Steps, in this order, each skipped when its setting is 0:

1. opening with a ball (3D) or disk (2D) of ``opening_radius`` voxels — removes thin spurs;
2. closing with a ball/disk of ``closing_radius`` voxels — bridges thin gaps;
3. removal of objects of fewer than ``min_object_size`` voxels (size < N is removed);
4. filling of holes of at most ``max_hole_size`` voxels (size <= N is filled). A hole is a
   background component that does not touch the border of the volume (3D) or of the slice
   (2D); it is labelled with the same ``connectivity`` as objects (as scikit-image does).

Radii are in voxels along every axis. The outside of the volume never changes the result:
opening does not erode objects from the border side, and closing neither grows objects from
the border nor erodes them there (it runs on a zero margin of the radius's width).

Memory: the mask is processed as bool views of its own buffer; the largest temporaries are
one int32 label volume (object and hole steps) or two bool volumes (closing, with its margin)
— no float copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ...errors import ConfigError, InputDataError
from ..data.components import connectivity_structure, label_sizes, normalize_connectivity, z_blocks

__all__ = ["CleanupConfig", "clean_mask", "clean_mask_slice"]


@dataclass(frozen=True)
class CleanupConfig:
    """Clean-up settings of one class (all sizes in voxels; 0 switches a step off)."""

    min_object_size: int = 0
    max_hole_size: int = 0
    opening_radius: int = 0
    closing_radius: int = 0
    per_slice: bool = False
    connectivity: int = 1

    def __post_init__(self) -> None:
        for name in ("min_object_size", "max_hole_size", "opening_radius", "closing_radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"clean-up {name} must be a whole number >= 0 (0 = off), got {v!r}")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.per_slice, (bool, np.bool_)):
            raise ConfigError(f"clean-up per_slice must be true or false, got {self.per_slice!r}")
        object.__setattr__(self, "per_slice", bool(self.per_slice))
        if isinstance(self.connectivity, bool) or not isinstance(self.connectivity, (int, np.integer)):
            raise ConfigError(f"clean-up connectivity must be 1, 2, 3 or 4, 6, 8, 18, 26, got {self.connectivity!r}")
        normalize_connectivity(int(self.connectivity), 2 if self.per_slice else 3)
        object.__setattr__(self, "connectivity", int(self.connectivity))

    @property
    def enabled(self) -> bool:
        """True when at least one step is switched on."""
        return any((self.min_object_size, self.max_hole_size, self.opening_radius, self.closing_radius))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CleanupConfig:
        """Build from a dict; missing keys take their defaults, unknown keys are an error."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"clean-up settings must be a mapping of names to values, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown clean-up setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def _check_mask(mask: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != ndim:
        what = "(Z, Y, X) stack" if ndim == 3 else "(Y, X) slice"
        raise InputDataError(f"clean-up expects a {what}, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype != np.uint8:
        raise InputDataError(f"clean-up expects a uint8 0/1 mask, got {arr.dtype}; binarise it first")
    if arr.max(initial=0) > 1:
        raise InputDataError("clean-up expects a uint8 0/1 mask, found values above 1; "
                             "divide a 0/255 mask by 255 first")
    return arr


def _footprint(radius: int, ndim: int) -> np.ndarray:
    """Ball (3D) or disk (2D) of a radius in voxels, as bool."""
    from skimage.morphology import ball, disk

    return (ball(radius) if ndim == 3 else disk(radius)).astype(bool)


def _open_close(m: np.ndarray, config: CleanupConfig) -> None:
    """Opening then closing of a bool array, written back into ``m``."""
    ndim = m.ndim
    if config.opening_radius:
        fp = _footprint(config.opening_radius, ndim)
        tmp = ndi.binary_erosion(m, structure=fp, border_value=1)
        ndi.binary_dilation(tmp, structure=fp, output=m)
        del tmp
    if config.closing_radius:
        # Dilate into a zero margin so that nothing grows from outside the volume, then erode
        # with the outside counted as object so the border does not eat into the result.
        r = config.closing_radius
        fp = _footprint(r, ndim)
        tmp = ndi.binary_dilation(np.pad(m, r), structure=fp)
        closed = ndi.binary_erosion(tmp, structure=fp, border_value=1)
        del tmp
        m[...] = closed[(slice(r, -r),) * ndim]
        del closed


def _apply_table(labels: np.ndarray, table: np.ndarray, m: np.ndarray, value: bool) -> None:
    """Set ``m`` to ``value`` wherever ``table[labels]`` is true, block by block."""
    lab = labels if labels.ndim == 3 else labels[None]
    mm = m if m.ndim == 3 else m[None]
    for zs in z_blocks(lab.shape):
        hit = table[lab[zs]]
        mm[zs][hit] = value


def _remove_small_objects(m: np.ndarray, min_size: int, structure: np.ndarray, labels: np.ndarray) -> None:
    n = int(ndi.label(m, structure=structure, output=labels))
    if n == 0:
        return
    sizes = label_sizes(labels, n)
    small = sizes < min_size
    small[0] = False
    if small.any():
        _apply_table(labels, small, m, False)


def _border_labels(labels: np.ndarray) -> np.ndarray:
    faces = []
    for axis in range(labels.ndim):
        faces.append(np.take(labels, 0, axis=axis).ravel())
        faces.append(np.take(labels, labels.shape[axis] - 1, axis=axis).ravel())
    return np.unique(np.concatenate(faces))


def _fill_small_holes(m: np.ndarray, max_size: int, structure: np.ndarray, labels: np.ndarray) -> None:
    background = ~m
    n = int(ndi.label(background, structure=structure, output=labels))
    del background
    if n == 0:
        return
    sizes = label_sizes(labels, n)
    fill = sizes <= max_size
    fill[0] = False
    fill[_border_labels(labels)] = False
    if fill.any():
        _apply_table(labels, fill, m, True)


def _clean_bool(m: np.ndarray, config: CleanupConfig) -> None:
    """All steps on a bool array (2D or 3D), in place."""
    _open_close(m, config)
    if config.min_object_size or config.max_hole_size:
        structure = connectivity_structure(config.connectivity, m.ndim)
        labels = np.empty(m.shape, dtype=np.int32)  # shared by both labellings
        if config.min_object_size:
            _remove_small_objects(m, config.min_object_size, structure, labels)
        if config.max_hole_size:
            _fill_small_holes(m, config.max_hole_size, structure, labels)


def _bool_view(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype == np.bool_ else arr.view(np.bool_)


def clean_mask_slice(mask_yx: Any, config: CleanupConfig, *, inplace: bool = False) -> np.ndarray:
    """Clean one (Y, X) slice with 2D operations; returns a uint8 0/1 slice.

    For streaming prediction, where slices arrive one at a time. Requires
    ``config.per_slice`` (3D clean-up needs the whole volume). With ``inplace=True`` a uint8
    input is modified and returned.
    """
    if not config.per_slice:
        raise ConfigError("3D clean-up needs the whole volume and cannot run slice by slice; "
                          "set per_slice=True or call clean_mask on the stack")
    arr = _check_mask(mask_yx, 2)
    out = arr if (inplace and arr.dtype == np.uint8) else arr.astype(np.uint8, copy=True)
    if config.enabled:
        _clean_bool(_bool_view(out), config)
    return out


def clean_mask(mask: Any, config: CleanupConfig, *, inplace: bool = False) -> np.ndarray:
    """Clean a (Z, Y, X) uint8 0/1 mask (a (Y, X) slice is accepted too); returns uint8 0/1.

    3D operations unless ``config.per_slice``. With ``inplace=True`` a uint8 input is modified
    and returned, so the extra memory is one int32 label volume (3D) or one slice's worth (2D).
    """
    arr = np.asarray(mask)
    if arr.ndim == 2:
        out2 = _check_mask(arr, 2)
        out2 = out2 if (inplace and out2.dtype == np.uint8) else out2.astype(np.uint8, copy=True)
        if config.enabled:
            _clean_bool(_bool_view(out2), config)
        return out2
    arr = _check_mask(arr, 3)
    out = arr if (inplace and arr.dtype == np.uint8) else arr.astype(np.uint8, copy=True)
    if not config.enabled:
        return out
    if config.per_slice:
        for z in range(out.shape[0]):
            _clean_bool(_bool_view(out[z]), config)
    else:
        _clean_bool(_bool_view(out), config)
    return out
