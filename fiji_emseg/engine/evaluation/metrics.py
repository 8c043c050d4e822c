"""Pixel metrics of a predicted binary mask against a reference: whole volume and per slice.

Published EM segmentation results are per-class F1 over the volume *and* averaged over slices
with its standard deviation; both come from the same confusion counts, computed here slice by
slice (only voxels of the annotated region count) and summed for the volume.

Definitions (TP, FP, FN, TN counted inside the annotated region)::

    f1 (Dice) = 2TP / (2TP + FP + FN)      iou = TP / (TP + FP + FN)
    precision = TP / (TP + FP)            recall = TP / (TP + FN)
    accuracy  = (TP + TN) / (TP + FP + FN + TN)

Empty cases — one convention, never NaN: a ratio whose denominator is zero is **1.0 when
reference and prediction are both empty** (perfect agreement on "nothing here") and **0.0
otherwise**. Hence: both empty -> f1 = iou = precision = recall = 1; nothing predicted but
reference non-empty -> precision = 0 (and recall = 0); reference empty but something predicted
-> recall = 0 (and precision = 0). Accuracy always has a non-zero denominator on annotated
voxels.

Per-slice statistics are over the slices that contain annotated voxels; ``std`` is the
population standard deviation (ddof = 0, so one slice gives 0.0). With ``skip_empty_slices``
the slices where both masks are empty are left out of the slice statistics (they would each
count as a perfect 1.0); if no slice is left, mean and min are 1.0 and std 0.0, with ``n_slices = 0``.

Inputs must be binary (0/1, 0/255 or bool). A probability map or any other grey-level image is
refused with an explanation unless a threshold is given (foreground = value > threshold).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError, EmsegWarning, InputDataError
from ..data.components import z_blocks

__all__ = [
    "METRICS",
    "SLICE_STATS",
    "Confusion",
    "PixelMetrics",
    "binarize",
    "confusion_per_slice",
    "scores",
    "pixel_metrics",
]

#: Metric names, in table order.
METRICS: tuple[str, ...] = ("f1", "iou", "precision", "recall", "accuracy")
#: Per-slice statistics reported for each metric (column ``<metric>_slice_<stat>``).
SLICE_STATS: tuple[str, ...] = ("mean", "std", "min")


def _fmt(v: float) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:.4g}"


def _value_range(arr: np.ndarray) -> tuple[float, float, bool]:
    """(min, max, has_nan), block by block so that no full-size temporary is made."""
    lo, hi = np.inf, -np.inf
    for zs in z_blocks(arr.shape):
        c = arr[zs]
        cmin, cmax = c.min(), c.max()
        if arr.dtype.kind == "f" and (np.isnan(cmin) or np.isnan(cmax)):
            return lo, hi, True
        lo, hi = min(lo, float(cmin)), max(hi, float(cmax))
    return lo, hi, False


def _all_in(arr: np.ndarray, a: float, b: float) -> bool:
    """Every value is a or b (block by block)."""
    for zs in z_blocks(arr.shape):
        c = arr[zs]
        if np.count_nonzero(c != a) != np.count_nonzero(c == b):
            return False
    return True


def binarize(data: Any, name: str = "mask", threshold: float | None = None) -> np.ndarray:
    """Return a (Z, Y, X) uint8 0/1 mask from a binary mask or, with a threshold, any image.

    Binary inputs (bool, 0/1, 0/255 of any numeric type) are taken as they are and the
    threshold is not applied to them; a uint8 0/1 input is returned without copying. Other
    inputs need ``threshold``: foreground is ``value > threshold``. Refused with a one-line
    explanation: NaN values, a probability map or grey-level image without threshold, and an
    integer image with a threshold between 0 and 1 (a probability threshold on 0–255 data).
    """
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputDataError(f"{name}: expected a 2D mask or a (Z, Y, X) stack, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.dtype.kind not in "uif":
        raise InputDataError(f"{name}: pixel type {arr.dtype} cannot be a mask; use an 8-bit 0/255 or 0/1 image")
    if arr.size == 0:
        raise InputDataError(f"{name}: the mask is empty (shape {arr.shape})")
    lo, hi, has_nan = _value_range(arr)
    if has_nan:
        raise InputDataError(f"{name} contains NaN values; replace them (Fiji: Process > Math > Remove NaNs…) "
                             "or save the prediction again")
    if lo >= 0 and hi <= 1 and (arr.dtype.kind in "ui" or _all_in(arr, 0, 1)):
        return arr if arr.dtype == np.uint8 else arr.astype(np.uint8)
    if lo >= 0 and hi == 255 and _all_in(arr, 0, 255):
        return (arr > 0).view(np.uint8)
    if threshold is None:
        if arr.dtype.kind == "f":
            raise InputDataError(
                f"{name} is a probability map (values {_fmt(lo)}–{_fmt(hi)}); give a threshold to binarise it "
                "(--threshold 0.5, or threshold=0.5 in Python)")
        raise InputDataError(
            f"{name} is not a binary mask (values {_fmt(lo)}–{_fmt(hi)}); give a threshold to binarise it "
            "(foreground = value > threshold, e.g. --threshold 127), or save it as a 0/255 mask")
    t = _check_threshold(threshold)
    if arr.dtype.kind in "ui" and 0 < t < 1:
        raise ConfigError(
            f"{name} holds whole numbers {_fmt(lo)}–{_fmt(hi)} but the threshold is {_fmt(t)}, a probability; "
            f"give a threshold on the data's scale (e.g. {_fmt(round(t * hi))})")
    if t >= hi or t < lo:
        side = "above" if t >= hi else "below"
        warnings.warn(f"{name}: threshold {_fmt(t)} is {side} every value ({_fmt(lo)}–{_fmt(hi)}); "
                      f"the binarised mask is {'empty' if t >= hi else 'full'}", EmsegWarning, stacklevel=2)
    return (arr > t).view(np.uint8)


def _check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold must be a number, got {threshold!r}; e.g. 0.5 for a probability map") from None
    if not np.isfinite(t):
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}; e.g. 0.5 for a probability map")
    return t


@dataclass(frozen=True)
class Confusion:
    """Confusion counts of the slices that hold annotated voxels (``slices`` are their z indices)."""

    slices: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def total(self) -> tuple[int, int, int, int]:
        return int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum()), int(self.tn.sum())


def _as_bool_zyx(data: Any, name: str) -> np.ndarray:
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputDataError(f"{name}: expected a 2D mask or a (Z, Y, X) stack, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype == np.uint8:
        return arr.view(np.bool_) if arr.max(initial=0) <= 1 else arr > 0
    return arr != 0


def confusion_per_slice(reference: Any, prediction: Any, annotated: Any = None) -> Confusion:
    """TP/FP/FN/TN per slice of two binary masks, counting only voxels of the annotated region.

    Inputs are binary (nonzero = foreground; use :func:`binarize` first to validate them).
    Slices without annotated voxels are left out.
    """
    ref = _as_bool_zyx(reference, "reference")
    pred = _as_bool_zyx(prediction, "prediction")
    if ref.shape != pred.shape:
        raise InputDataError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}; "
                             "compare masks of the same image")
    region = None
    if annotated is not None:
        region = _as_bool_zyx(annotated, "annotated region")
        if region.shape != ref.shape:
            raise InputDataError(f"annotated-region shape {region.shape} does not match mask shape {ref.shape}")
    nz = ref.shape[0]
    plane = int(np.prod(ref.shape[1:]))
    n = np.full(nz, plane, dtype=np.int64)
    tp = np.zeros(nz, np.int64)
    rpos = np.zeros(nz, np.int64)
    ppos = np.zeros(nz, np.int64)
    for z in range(nz):
        r, p = ref[z], pred[z]
        if region is not None:
            a = region[z]
            n[z] = np.count_nonzero(a)
            if n[z] == 0:
                continue
            if n[z] != plane:
                r = r & a
                p = p & a
        rpos[z] = np.count_nonzero(r)
        ppos[z] = np.count_nonzero(p)
        tp[z] = np.count_nonzero(r & p) if rpos[z] and ppos[z] else 0
    keep = np.flatnonzero(n > 0)
    tp, rpos, ppos, n = tp[keep], rpos[keep], ppos[keep], n[keep]
    fp = ppos - tp
    fn = rpos - tp
    return Confusion(keep, tp, fp, fn, n - tp - fp - fn)


def _ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.where(den > 0, out, np.where(both_empty, 1.0, 0.0))


def scores(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, np.ndarray]:
    """F1, IoU, precision, recall, accuracy from counts (arrays or scalars), with the module's
    empty-case convention: zero denominator -> 1.0 if both masks are empty, else 0.0."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.int64) for v in (tp, fp, fn, tn))
    both_empty = (tp + fp + fn) == 0
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, both_empty),
    }


@dataclass
class PixelMetrics:
    """Pixel metrics of one class: whole-volume scores, per-slice table and slice statistics."""

    volume: dict[str, float]
    counts: dict[str, int]
    slice_stats: dict[str, float]
    n_slices: int
    per_slice: Any  # pandas.DataFrame: slice, f1 ... accuracy, tp, fp, fn, tn, ref_voxels, pred_voxels, both_empty

    def summary_row(self) -> dict[str, float | int]:
        """One flat row: f1 … accuracy, <metric>_slice_<stat>, n_slices, voxel counts."""
        row: dict[str, float | int] = dict(self.volume)
        row.update(self.slice_stats)
        row["n_slices"] = self.n_slices
        row.update(self.counts)
        return row


def pixel_metrics(reference: Any, prediction: Any, annotated: Any = None, *,
                  skip_empty_slices: bool = False) -> PixelMetrics:
    """Whole-volume and per-slice pixel metrics of two binary masks (see module docstring)."""
    import pandas as pd

    conf = confusion_per_slice(reference, prediction, annotated)
    if conf.slices.size == 0:
        raise InputDataError("the annotated region is empty; mark at least one annotated slice or region")
    tp, fp, fn, tn = conf.total()
    vol = {k: float(v) for k, v in scores(tp, fp, fn, tn).items()}
    per = scores(conf.tp, conf.fp, conf.fn, conf.tn)
    both_empty = (conf.tp + conf.fp + conf.fn) == 0
    table = pd.DataFrame({"slice": conf.slices.astype(np.int64), **per,
                          "tp": conf.tp, "fp": conf.fp, "fn": conf.fn, "tn": conf.tn,
                          "ref_voxels": conf.tp + conf.fn, "pred_voxels": conf.tp + conf.fp,
                          "both_empty": both_empty.astype(np.int64)})
    use = ~both_empty if skip_empty_slices else np.ones(len(both_empty), dtype=bool)
    stats: dict[str, float] = {}
    for metric in METRICS:
        values = per[metric][use]
        stats[f"{metric}_slice_mean"] = float(values.mean()) if values.size else 1.0
        stats[f"{metric}_slice_std"] = float(values.std()) if values.size else 0.0
        stats[f"{metric}_slice_min"] = float(values.min()) if values.size else 1.0
    counts = {"ref_voxels": tp + fn, "pred_voxels": tp + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    return PixelMetrics(vol, counts, stats, int(use.sum()), table)
