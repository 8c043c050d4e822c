"""The data model: a *sample* is one image volume plus one binary mask volume per class.

Everything is (Z, Y, X); a 2D image is a one-slice volume. Masks are stored as one uint8
(C, Z, Y, X) array of 0/1. An optional *annotated region* (Z, Y, X bool) marks where the masks
are meaningful: voxels outside it are ignored by the loss and by metrics, which is how sparse
annotation (a few labelled slices of a long stack) is expressed.

All checks raise :class:`~fiji_emseg.errors.InputDataError` with one line that names the
problem and the fix; suspicious-but-usable data produces an :class:`EmsegWarning`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmsegWarning, InputDataError
from .volume_io import ArrayLike3D, Calibration, read_volume

__all__ = [
    "Sample",
    "as_binary_mask",
    "as_image_volume",
    "check_finite",
    "check_image_dtype",
    "load_sample",
    "parse_slice_ranges",
    "slices_to_region",
    "validate_dataset",
    "check_min_size",
    "class_name_from_path",
]


@dataclass
class Sample:
    """One image volume with its per-class masks (see module docstring)."""

    name: str
    image: np.ndarray
    masks: np.ndarray | None
    class_names: tuple[str, ...]
    calibration: Calibration = field(default_factory=Calibration)
    annotated: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = as_image_volume(self.image, self.name)
        self.class_names = tuple(str(c) for c in self.class_names)
        if self.masks is not None:
            m = np.asarray(self.masks)
            if m.ndim == 3:
                m = m[None]
            if m.ndim != 4:
                raise InputDataError(f"{self.name}: masks must be (classes, Z, Y, X), got shape {m.shape}")
            if m.shape[1:] != self.image.shape:
                raise InputDataError(
                    f"{self.name}: mask shape {_zyx(m.shape[1:])} does not match image shape {_zyx(self.image.shape)}; "
                    "masks must have the same number of slices and the same width and height as the image")
            if len(self.class_names) != m.shape[0]:
                raise InputDataError(
                    f"{self.name}: {m.shape[0]} mask volumes but {len(self.class_names)} class names "
                    f"{list(self.class_names)}; give one name per mask")
            if m.dtype != np.uint8 or (m.size and int(m.max()) > 1):  # keep the 0/1 invariant
                m = np.stack([as_binary_mask(c, f"{self.name}: mask {n!r}")
                              for n, c in zip(self.class_names, m, strict=True)])
            self.masks = m
        if self.annotated is not None:
            a = np.asarray(self.annotated)
            if a.ndim == 2:
                a = a[None]
            if a.shape != self.image.shape:
                raise InputDataError(
                    f"{self.name}: annotated-region shape {_zyx(a.shape)} does not match image shape "
                    f"{_zyx(self.image.shape)}; give a region mask with the image's slices, width and height")
            self.annotated = a.astype(bool, copy=False)
            if not self.annotated.any():
                raise InputDataError(f"{self.name}: the annotated region is empty; mark at least one annotated slice or region")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def annotated_slices(self) -> np.ndarray:
        """Indices of slices that contain annotated voxels."""
        if self.annotated is None:
            return np.arange(self.shape[0])
        return np.flatnonzero(self.annotated.reshape(self.shape[0], -1).any(axis=1))

    def subset(self, z_indices: Sequence[int], name: str | None = None) -> Sample:
        """A sample made of some slices (copies), e.g. a held-out validation range."""
        idx = np.asarray(z_indices, dtype=int)
        return Sample(
            name=name or f"{self.name}[{_describe_indices(idx)}]",
            image=self.image[idx],
            masks=None if self.masks is None else self.masks[:, idx],
            class_names=self.class_names,
            calibration=self.calibration,
            annotated=None if self.annotated is None else self.annotated[idx],
        )


def _zyx(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape) + " (Z×Y×X)"


def _describe_indices(idx: np.ndarray) -> str:
    if len(idx) and np.all(np.diff(idx) == 1):
        return f"{idx[0]}-{idx[-1]}"
    return ",".join(str(i) for i in idx[:6]) + ("…" if len(idx) > 6 else "")


def check_image_dtype(dtype: Any, name: str = "image") -> None:
    """The one rule for what an EM image may be: 8/16/32-bit integer or float grayscale.

    A boolean stack is a mask, not an EM image (percentiles of true/false are undefined), so it
    is refused for training and prediction alike with a line that says so.
    """
    dt = np.dtype(dtype)
    if dt == np.bool_:
        raise InputDataError(
            f"{name}: the image is binary (true/false), which looks like a mask, not an EM image; "
            "give the grayscale EM stack (8-, 16- or 32-bit)")
    if dt.kind not in "uif":
        raise InputDataError(f"{name}: pixel type {dt} is not a grayscale number type; use 8-, 16- or 32-bit images")


def as_image_volume(data: Any, name: str = "image") -> np.ndarray:
    """Return *data* as a (Z, Y, X) numeric array, or explain what is wrong with it."""
    arr = np.asarray(data)
    check_image_dtype(arr.dtype, name)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4 and arr.dtype == np.uint8 and arr.shape[1] > 4:
        raise InputDataError(
            f"{name}: looks like an RGB image (shape {arr.shape}, last axis {arr.shape[-1]}); "
            "convert it to grayscale first (Fiji: Image > Type > 8-bit)")
    if arr.ndim != 3:
        raise InputDataError(f"{name}: expected a 2D image or a (Z, Y, X) stack, got {arr.ndim} dimensions {arr.shape}")
    if min(arr.shape) == 0:
        raise InputDataError(f"{name}: the image is empty (shape {arr.shape})")
    return arr


def check_finite(image: np.ndarray, name: str = "image", first_slice: int = 0) -> None:
    """Float images must not contain NaN or infinity (they poison training and prediction silently).

    Training and prediction share this one rule; prediction applies it to each slab it reads
    (*first_slice* is the slab's position in the stack), so a large stack is not read twice.
    """
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image)
        if bad.any():
            z = first_slice + int(np.flatnonzero(bad.reshape(image.shape[0], -1).any(axis=1))[0])
            many = "" if first_slice == 0 else " or more"
            raise InputDataError(
                f"{name}: {int(bad.sum())}{many} pixels are NaN or infinite (first in slice {z}); "
                "replace them (Fiji: Process > Math > Remove NaNs…) before training or prediction")


def as_binary_mask(data: Any, name: str = "mask", allow_empty: bool = True) -> np.ndarray:
    """Return a uint8 0/1 (Z, Y, X) mask; accepts 0/1, 0/255 and booleans, rejects anything else."""
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputDataError(f"{name}: expected a 2D mask or a (Z, Y, X) mask stack, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise InputDataError(f"{name}: pixel type {arr.dtype} cannot be a mask; use an 8-bit 0/255 or 0/1 image")
    values = _distinct_values(arr)
    vset = {float(v) for v in values}
    if vset <= {0.0, 1.0}:
        out = arr.astype(np.uint8, copy=arr.dtype != np.uint8)
    elif vset <= {0.0, 255.0}:
        out = (arr > 0).astype(np.uint8)
    else:
        shown = ", ".join(_fmt_value(v) for v in values[:8]) + (", …" if len(values) > 8 else "")
        hint = ("it looks like a probability map; give a threshold" if arr.dtype.kind == "f"
                else "it looks like a label image; convert it to one binary mask per class")
        raise InputDataError(
            f"{name}: mask is not binary (values found: {shown}); masks must be 0/1 or 0/255 — {hint} "
            "(Fiji: Image > Adjust > Threshold, then Process > Binary > Convert to Mask)")
    if not allow_empty and not out.any():
        raise InputDataError(f"{name}: the mask is empty (no foreground voxel)")
    return out


def _distinct_values(arr: np.ndarray, slab_voxels: int = 1 << 22) -> np.ndarray:
    """Sorted distinct values, computed slab by slab so temporaries stay small.

    (``np.bincount`` or ``np.unique`` on the whole volume would make an int64 or sorted copy of
    it: 800 MB for a 100-million-voxel mask.) Stops early once more than a few values are seen.
    """
    flat = arr.reshape(-1)
    seen: set[Any] = set()
    for start in range(0, flat.size, slab_voxels):
        chunk = flat[start:start + slab_voxels]
        if arr.dtype == np.uint8:
            counts = np.bincount(chunk, minlength=256)
            seen.update(int(v) for v in np.flatnonzero(counts))
        else:
            seen.update(np.unique(chunk).tolist())
        if len(seen) > 16:
            break
    return np.array(sorted(seen))


def _fmt_value(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:.4g}"


def class_name_from_path(path: str | Path) -> str:
    """'cell_mito.tif' -> 'cell_mito': the default class name for a mask file or store.

    Double suffixes come first, so 'mito.ome.zarr' names the class 'mito', not 'mito.ome'.
    """
    p = Path(path)
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".npy", ".zarr", ".n5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


_RANGE = re.compile(r"^\s*(\d+)\s*(?:[-:]\s*(\d+)\s*)?$")


def parse_slice_ranges(spec: str | Iterable[int] | None, n_slices: int | None = None, one_based: bool = False) -> list[int]:
    """Parse '0-11,14,20:23' (inclusive ranges) into sorted unique slice indices (0-based)."""
    if spec is None:
        return []
    if not isinstance(spec, str):
        out = sorted({int(i) for i in spec})
    else:
        out_set: set[int] = set()
        for part in spec.split(","):
            if not part.strip():
                continue
            m = _RANGE.match(part)
            if not m:
                raise InputDataError(f"cannot read slice range {part.strip()!r} in {spec!r}; write e.g. '0-11,14'")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise InputDataError(f"slice range {part.strip()!r} goes backwards; write the smaller index first")
            out_set.update(range(a, b + 1))
        out = sorted(out_set)
    if one_based:
        if out and out[0] < 1:
            raise InputDataError(f"slice numbers start at 1 (as in Fiji), got {out[0]} in {spec!r}")
        out = [i - 1 for i in out]
    if out and (out[0] < 0 or (n_slices is not None and out[-1] >= n_slices)):
        first = 1 if one_based else 0
        bad = out[0] if out[0] < 0 else out[-1]
        size = f"which has {n_slices} slices (numbered {first} to {n_slices - 1 + first})" if n_slices is not None \
            else f"whose slices are numbered from {first}"
        raise InputDataError(f"slice {bad + first} is outside the stack, {size}; give slices inside it")
    return out


def slices_to_region(slices: Sequence[int], shape: tuple[int, int, int]) -> np.ndarray:
    """An annotated-region mask that is True on whole slices."""
    region = np.zeros(shape, dtype=bool)
    region[np.asarray(list(slices), dtype=int)] = True
    return region


def load_sample(image: str | Path | ArrayLike3D,
                masks: Sequence[str | Path | ArrayLike3D] | None = None,
                class_names: Sequence[str] | None = None,
                *,
                name: str | None = None,
                annotated: str | Path | ArrayLike3D | None = None,
                annotated_slices: str | Sequence[int] | None = None,
                calibration: Calibration | None = None) -> Sample:
    """Read and check one sample from files or arrays.

    Class names default to the mask file names. ``annotated`` is a mask of the annotated region;
    ``annotated_slices`` ('0-11,20') is a shortcut for whole annotated slices.
    """
    img, cal = read_volume(image, calibration)
    img_name = name or (class_name_from_path(image) if isinstance(image, (str, Path)) else "sample")
    check_image_dtype(img.dtype, img_name)
    check_finite(img, img_name)
    mask_arrays: list[np.ndarray] = []
    names: list[str] = []
    for i, m in enumerate(masks or []):
        label = class_name_from_path(m) if isinstance(m, (str, Path)) else f"class_{i + 1}"
        arr, _ = read_volume(m)
        if arr.shape != img.shape:
            what = Path(m).name if isinstance(m, (str, Path)) else f"mask {i + 1}"
            raise InputDataError(
                f"{what}: mask shape {_zyx(arr.shape)} does not match image shape {_zyx(img.shape)}; "
                "each mask must have the same slices, width and height as the image")
        mask_arrays.append(as_binary_mask(arr, Path(m).name if isinstance(m, (str, Path)) else label))
        names.append(label)
    if class_names is not None:
        if masks is not None and len(class_names) != len(mask_arrays):
            raise InputDataError(f"{len(mask_arrays)} masks but {len(class_names)} class names; give one name per mask")
        names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise InputDataError(f"class names must be unique, got {names}; rename the mask files or pass class names")
    region = None
    if annotated is not None:
        reg, _ = read_volume(annotated)
        region = as_binary_mask(reg, "annotated region").astype(bool)
    if annotated_slices is not None:
        sl = parse_slice_ranges(annotated_slices, img.shape[0])
        by_slice = slices_to_region(sl, img.shape)
        region = by_slice if region is None else (region & by_slice)
    return Sample(
        name=img_name,
        image=img,
        masks=np.stack(mask_arrays) if mask_arrays else None,
        class_names=tuple(names),
        calibration=cal,
        annotated=region,
    )


def check_min_size(sample: Sample, patch_size: Sequence[int], multiple: Sequence[int] | int = 1) -> None:
    """Every sample must hold at least one training patch; say the largest patch that would fit."""
    z, y, x = sample.shape
    pz, py, px = (1, *patch_size) if len(patch_size) == 2 else tuple(patch_size)
    mult = (multiple,) * 3 if isinstance(multiple, int) else tuple(multiple)
    if len(mult) == 2:
        mult = (1, *mult)
    too_small = []
    for axis, have, need, m in (("Z", z, pz, mult[0]), ("Y", y, py, mult[1]), ("X", x, px, mult[2])):
        if have < need:
            fit = (have // m) * m
            too_small.append(f"{axis}: {have} < {need} (largest patch that fits: {fit}, a multiple of {m})" if fit
                             else f"{axis}: {have} < {need} (no patch fits: the network needs at least {m})")
    if too_small:
        raise InputDataError(
            f"{sample.name}: image {_zyx(sample.shape)} is smaller than the training patch "
            f"{'×'.join(map(str, (pz, py, px)))} — " + "; ".join(too_small)
            + "; choose a smaller patch size (--patch-size) or use larger images")


def validate_dataset(samples: Sequence[Sample], role: str = "training") -> tuple[str, ...]:
    """Check that samples agree on classes and carry labels; warn on classes that are empty everywhere."""
    if not samples:
        raise InputDataError(f"no {role} samples given; give at least one image with its masks")
    first = samples[0]
    for s in samples:
        if s.masks is None:
            raise InputDataError(f"{role} sample {s.name!r} has no masks; give one mask per class")
        if s.n_classes != first.n_classes:
            raise InputDataError(
                f"{role} samples have different class counts: {first.name!r} has {first.n_classes} "
                f"{list(first.class_names)}, {s.name!r} has {s.n_classes} {list(s.class_names)}; "
                "give every sample the same classes in the same order")
        if s.class_names != first.class_names:
            raise InputDataError(
                f"{role} samples name their classes differently: {list(first.class_names)} vs "
                f"{list(s.class_names)} in {s.name!r}; pass the same class names for every sample")
    for c, cname in enumerate(first.class_names):
        total = 0
        for s in samples:
            assert s.masks is not None
            m = s.masks[c]
            total += int(m[s.annotated].sum()) if s.annotated is not None else int(m.sum())
        if total == 0:
            warnings.warn(
                f"class {cname!r} is empty in every {role} sample (no foreground voxel); "
                "the model cannot learn it — check the mask files",
                EmsegWarning, stacklevel=2)
    return first.class_names
