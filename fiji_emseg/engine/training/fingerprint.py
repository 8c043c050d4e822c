"""A fingerprint of the training data: what the planner needs to know, measured on a bounded sample.

nnU-Net plans from a dataset fingerprint (spacing, sizes, intensities); for EM the facts that
decide a good training are: the voxel size and its anisotropy (ssTEM/SBF-SEM sections are 5-10x
thicker than the pixel size, FIB-SEM is near isotropic), how much of each stack is annotated and
how (a few whole slices, or a region), how large the objects of each class are (patches must hold
a typical object plus context), how rare each class is, and the intensity distribution.

Everything is measured on at most ``max_slices`` annotated slices per sample, so fingerprinting a
stack of a thousand slices costs as much as one of twenty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..data.components import label_components, label_sizes
from ..data.sample import Sample

__all__ = ["ClassFingerprint", "DataFingerprint", "fingerprint"]


@dataclass(frozen=True)
class ClassFingerprint:
    """Sizes and frequency of one class's objects, in pixels of the stack's own grid."""

    name: str
    #: Fraction of annotated voxels that belong to the class.
    foreground_fraction: float
    #: 2D objects (connected components per slice) counted on the sampled slices.
    objects_2d: int
    #: Equivalent diameter 2*sqrt(area/pi) of the 2D objects, median and 90th percentile (pixels).
    diameter_median_px: float
    diameter_p90_px: float
    #: Median number of consecutive slices a 3D object spans (only where slices are consecutive).
    z_extent_median: float


@dataclass(frozen=True)
class DataFingerprint:
    voxel_size: tuple[float, float, float]
    unit: str
    #: Z spacing over XY pixel size; ~1 for FIB-SEM, 5-12 for ssTEM/SBF-SEM.
    anisotropy: float
    image_shapes: tuple[tuple[int, int, int], ...]
    annotated_slices: int
    annotated_voxels: int
    #: Longest run of consecutive annotated slices in any sample (bounds a 3D patch's depth).
    longest_annotated_run: int
    #: Smallest (y, x) extent of the annotated region over samples (bounds a patch's size).
    annotated_yx: tuple[int, int]
    classes: tuple[ClassFingerprint, ...]
    intensity_percentiles: dict[str, float] = field(default_factory=dict)
    #: False when the files carry no voxel size (ImageJ's "pixel" unit): anisotropy is then unknown.
    calibrated: bool = True

    @property
    def voxels(self) -> int:
        return int(sum(math.prod(s) for s in self.image_shapes))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["voxel_size"] = list(self.voxel_size)
        d["image_shapes"] = [list(s) for s in self.image_shapes]
        d["annotated_yx"] = list(self.annotated_yx)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataFingerprint:
        return cls(voxel_size=tuple(d["voxel_size"]), unit=d["unit"], anisotropy=float(d["anisotropy"]),  # type: ignore[arg-type]
                   image_shapes=tuple(tuple(s) for s in d["image_shapes"]),  # type: ignore[misc]
                   annotated_slices=int(d["annotated_slices"]), annotated_voxels=int(d["annotated_voxels"]),
                   longest_annotated_run=int(d["longest_annotated_run"]),
                   annotated_yx=tuple(d["annotated_yx"]),  # type: ignore[arg-type]
                   classes=tuple(ClassFingerprint(**c) for c in d["classes"]),
                   intensity_percentiles={k: float(v) for k, v in d.get("intensity_percentiles", {}).items()},
                   calibrated=bool(d.get("calibrated", True)))

    def describe(self) -> str:
        vz, vy, vx = self.voxel_size
        cls = "; ".join(f"{c.name}: {c.foreground_fraction:.1%} of annotated voxels, {c.objects_2d} objects, "
                        f"diameter {c.diameter_median_px:.0f} px (p90 {c.diameter_p90_px:.0f})" for c in self.classes)
        return (f"{len(self.image_shapes)} stack(s), {self.annotated_slices} annotated slices "
                f"({self.annotated_voxels / 1e6:.1f} M voxels); voxel {vz:g} x {vy:g} x {vx:g} {self.unit} "
                f"(anisotropy {self.anisotropy:.1f}{'' if self.calibrated else ', not calibrated'}); {cls}")


def _annotated_slices(sample: Sample) -> np.ndarray:
    if sample.annotated is None:
        return np.arange(sample.shape[0])
    region = np.asarray(sample.annotated)
    return np.flatnonzero(region.reshape(region.shape[0], -1).any(axis=1))


def _longest_run(zs: np.ndarray) -> int:
    best = run = 0
    prev = None
    for z in (int(v) for v in zs):
        run = run + 1 if prev is not None and z == prev + 1 else 1
        best, prev = max(best, run), z
    return best


def _annotated_yx(sample: Sample, zs: np.ndarray) -> tuple[int, int]:
    if sample.annotated is None:
        return int(sample.shape[1]), int(sample.shape[2])
    region = np.asarray(sample.annotated)[zs].any(axis=0)
    ys, xs = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return (int(ys[-1] - ys[0] + 1), int(xs[-1] - xs[0] + 1)) if ys.size else (0, 0)


def _z_extents(mask: np.ndarray) -> list[int]:
    """Slices spanned by each 3D object of a (Z, Y, X) boolean block."""
    labels, n = label_components(mask, "3d")
    if n == 0:
        return []
    from scipy import ndimage as ndi

    return [sl[0].stop - sl[0].start for sl in ndi.find_objects(labels) if sl is not None]


def fingerprint(samples: Sequence[Sample], max_slices: int = 16, seed: int = 0) -> DataFingerprint:
    """Measure *samples* (see the module docstring); at most *max_slices* slices per sample are read."""
    rng = np.random.default_rng(seed)
    cal = samples[0].calibration
    vz, vy, vx = (float(v) for v in cal.voxel_size)
    anisotropy = vz / max(min(vy, vx), 1e-12)
    names = samples[0].class_names
    diam: dict[str, list[float]] = {c: [] for c in names}
    zext: dict[str, list[int]] = {c: [] for c in names}
    fg = dict.fromkeys(names, 0)
    counted = 0
    annotated_slices = annotated_voxels = longest = 0
    yx_min = (1 << 30, 1 << 30)
    values: list[np.ndarray] = []
    for s in samples:
        zs = _annotated_slices(s)
        annotated_slices += int(zs.size)
        run = _longest_run(zs)
        longest = max(longest, run)
        ay, ax = _annotated_yx(s, zs)
        yx_min = (min(yx_min[0], ay), min(yx_min[1], ax))
        pick = np.sort(rng.choice(zs, size=min(max_slices, zs.size), replace=False)) if zs.size else zs
        for z in (int(v) for v in pick):
            img = np.asarray(s.image[z])
            region = None if s.annotated is None else np.asarray(s.annotated[z]).astype(bool)
            n_region = img.size if region is None else int(region.sum())
            counted += n_region
            vals = img if region is None else img[region]
            if vals.size:
                values.append(rng.choice(vals.ravel(), size=min(4096, vals.size), replace=False).astype(np.float64))
            for c, m in zip(names, s.masks, strict=True):
                mz = np.asarray(m[z]) > 0
                if region is not None:
                    mz &= region
                fg[c] += int(mz.sum())
                labels, n = label_components(mz, "2d")
                if n:
                    sizes = label_sizes(labels, n)[1:]
                    diam[c].extend((2.0 * np.sqrt(sizes / math.pi)).tolist())
        # 3D extents on the longest consecutive run, bounded to max_slices slices
        if run >= 2:
            starts = [int(z) for z in zs if z - 1 not in set(zs.tolist())]
            for z0 in starts:
                length = _longest_run(zs[zs >= z0])
                if length == run:
                    z1 = z0 + min(run, max_slices)
                    for c, m in zip(names, s.masks, strict=True):
                        block = np.asarray(m[z0:z1]) > 0
                        if s.annotated is not None:
                            block &= np.asarray(s.annotated[z0:z1]).astype(bool)
                        zext[c].extend(_z_extents(block))
                    break
        plane = int(s.shape[1]) * int(s.shape[2])
        annotated_voxels += plane * int(zs.size) if s.annotated is None else int(np.count_nonzero(np.asarray(s.annotated)))
    vals = np.concatenate(values) if values else np.zeros(1)
    classes = tuple(ClassFingerprint(
        name=c, foreground_fraction=fg[c] / max(counted, 1), objects_2d=len(diam[c]),
        diameter_median_px=float(np.median(diam[c])) if diam[c] else 0.0,
        diameter_p90_px=float(np.percentile(diam[c], 90)) if diam[c] else 0.0,
        z_extent_median=float(np.median(zext[c])) if zext[c] else 0.0) for c in names)
    return DataFingerprint(
        voxel_size=(vz, vy, vx), unit=cal.unit, anisotropy=float(anisotropy),
        image_shapes=tuple(tuple(int(v) for v in s.shape) for s in samples),  # type: ignore[misc]
        annotated_slices=annotated_slices, annotated_voxels=annotated_voxels, longest_annotated_run=longest,
        annotated_yx=yx_min, classes=classes, calibrated=cal.is_calibrated,
        intensity_percentiles={f"p{q:g}": float(np.percentile(vals, q)) for q in (1, 50, 99.8)})
