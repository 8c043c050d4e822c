"""Per-class mask thresholds chosen on validation data, predicted the way prediction will run.

A sigmoid output thresholded at 0.5 is not always the best mask: with Dice losses and label focus
the network often over- or under-segments a little. After training, the validation volumes are
predicted with the real tiled predictor (whole slices, exact overlap, blending), so the threshold
is chosen in the regime users will see, and not on small training patches whose borders lack
context (a large part of a 256² patch lies within the 94 px receptive-field radius of the default
model). Voxels outside the annotated region are ignored, as in every metric here.

Validation sets are small (a few slices), so the best threshold on them is partly noise: a
threshold chosen at the arg-max of validation F1 lost 0.007 F1 on unseen slices of a FIB-SEM
stack. The default ``robust`` rule therefore moves away from 0.5 only when the gain is larger than
its own noise, measured as the spread of the per-slice gains: the pooled F1 gain at a candidate
threshold must exceed ``Z_NOISE`` standard errors of the per-slice gains (and ``min_gain``). Among
the candidates that pass, it picks the centre of the near-optimal plateau (thresholds whose F1 is
within one standard error of the best), not the single highest point of a flat, noisy curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.sample import Sample
from ..evaluation.metrics import scores
from ..inference.predictor import PredictConfig, Predictor

__all__ = ["ThresholdCalibration", "calibrate_thresholds", "choose_threshold", "RULES", "THRESHOLD_GRID"]

#: Candidate thresholds (0.05 steps: finer steps chase noise on small validation sets).
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
#: ``robust``: move only for gains above their noise, pick the plateau's centre; ``argmax``: best F1.
RULES = ("robust", "argmax")
#: Standard errors of the per-slice gain that a move away from 0.5 must exceed.
Z_NOISE = 2.0


def choose_threshold(f1_pooled: np.ndarray, f1_slices: np.ndarray, half: int, rule: str = "robust",
                     min_gain: float = 0.0) -> int:
    """Index into the grid for one class: *f1_pooled* (T,) over all voxels, *f1_slices* (S, T) per slice.

    ``argmax``: the best pooled F1, ties to the nearest of 0.5. ``robust``: see the module docstring.
    """
    order = np.argsort(np.abs(np.arange(len(f1_pooled)) - half), kind="stable")  # nearest 0.5 first
    best = int(order[np.argmax(f1_pooled[order])])
    gain = f1_pooled - f1_pooled[half]
    if rule == "argmax":
        return best if gain[best] >= min_gain else half
    if rule != "robust":
        raise ValueError(f"unknown threshold rule {rule!r}; use one of {RULES}")
    n = f1_slices.shape[0]
    if n < 2:  # one slice: its noise cannot be measured, so no move can be justified
        return half
    per_slice = f1_slices - f1_slices[:, half:half + 1]
    se = per_slice.std(axis=0, ddof=1) / np.sqrt(n)
    passing = (gain > np.maximum(min_gain, Z_NOISE * se)) & (gain > 0)
    if not passing.any():
        return half
    best = int(order[np.argmax(np.where(passing[order], f1_pooled[order], -np.inf))])
    near = passing & (f1_pooled >= f1_pooled[best] - se[best])
    lo = hi = best
    while lo - 1 >= 0 and near[lo - 1]:
        lo -= 1
    while hi + 1 < len(near) and near[hi + 1]:
        hi += 1
    plateau = np.arange(lo, hi + 1)
    centre = (lo + hi) / 2
    return int(plateau[np.argmin(np.abs(plateau - centre) + 1e-6 * np.abs(plateau - half))])


@dataclass(frozen=True)
class ThresholdCalibration:
    thresholds: dict[str, float]
    f1_at_half: dict[str, float]
    f1_calibrated: dict[str, float]
    voxels: int

    def as_info(self) -> dict[str, object]:
        """The entries stored in config.json's ``training`` section."""
        return {"thresholds": self.thresholds, "f1_at_0.5": self.f1_at_half, "f1_calibrated": self.f1_calibrated,
                "threshold_calibration_voxels": self.voxels}

    def summary(self) -> str:
        return "mask thresholds chosen on validation data: " + ", ".join(
            f"{c} {t:.2f} (F1 {self.f1_at_half[c]:.3f} -> {self.f1_calibrated[c]:.3f})" for c, t in self.thresholds.items())


def _slice_runs(zs: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs [z0, z1) of sorted slice indices."""
    runs: list[tuple[int, int]] = []
    for z in (int(v) for v in zs):
        if runs and runs[-1][1] == z:
            runs[-1] = (runs[-1][0], z + 1)
        else:
            runs.append((z, z + 1))
    return runs


def _evaluated_slices(sample: Sample, budget: int, dims: int) -> list[tuple[int, int]]:
    """Slice runs holding annotated voxels, thinned evenly (2D models) to about *budget* voxels."""
    plane = int(np.prod(sample.shape[1:]))
    if sample.annotated is None:
        zs = np.arange(sample.shape[0])
    else:
        zs = np.flatnonzero(np.asarray(sample.annotated).reshape(sample.shape[0], -1).any(axis=1))
    keep = max(1, budget // plane)
    if len(zs) > keep:
        if dims == 2:  # slices are independent: spread them over the stack
            zs = zs[np.unique(np.linspace(0, len(zs) - 1, keep).round().astype(int))]
        else:  # 3D: a contiguous central block keeps the z-context of each tile useful
            start = (len(zs) - keep) // 2
            zs = zs[start:start + keep]
    return _slice_runs(zs)


def _f1_curves(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """F1 at every grid threshold from (..., bins) histograms of foreground/background probabilities."""
    # predicted foreground at grid[j] = voxels in bins j+1 ...
    tp = np.cumsum(fg[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    fp = np.cumsum(bg[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    fn = fg.sum(axis=-1, keepdims=True) - tp
    return scores(tp, fp, fn, np.zeros_like(tp))["f1"]  # both empty counts as agreement


def calibrate_thresholds(model_dir: str | Path, samples: Sequence[Sample], device: str = "cpu", *,
                         max_voxels: int = 2**26, min_gain: float = 0.0, rule: str = "robust",
                         trust_custom_code: bool = False,
                         log: Callable[[str], None] | None = None) -> ThresholdCalibration | None:
    """Choose each class's threshold on *samples* (sigmoid models; None for softmax models).

    *rule* is ``robust`` (default; see the module docstring) or ``argmax`` (the best validation
    F1, ties to the nearest 0.5). With *min_gain* > 0 a threshold moves away from 0.5 only when
    it gains at least that much F1. At most about *max_voxels* voxels are predicted per sample.
    The model is run with PyTorch on *device* in the precision prediction would choose.
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; use one of {RULES}")
    config = PredictConfig(device=device, backend="torch", outputs=("probabilities",))
    with Predictor(model_dir, config, trust_custom_code=trust_custom_code) as predictor:
        mc = predictor.model_config
        if mc.output != "sigmoid":
            return None
        n_bins = len(THRESHOLD_GRID) + 1
        fg_slices: list[np.ndarray] = []  # per evaluated slice: (K, bins) histograms of fg/bg probabilities
        bg_slices: list[np.ndarray] = []
        voxels = 0
        for sample in samples:
            assert sample.masks is not None
            stats = predictor.intensity_stats(sample.image)  # of the whole volume, as at training
            for z0, z1 in _evaluated_slices(sample, max_voxels, mc.dims):
                probs = predictor.predict_block(sample.image, (z0, z1), stats=stats)
                valid = None if sample.annotated is None else np.asarray(sample.annotated[z0:z1], bool)
                for dz in range(z1 - z0):
                    fgz = np.zeros((mc.n_classes, n_bins), np.int64)
                    bgz = np.zeros((mc.n_classes, n_bins), np.int64)
                    vz = None if valid is None else valid[dz]
                    if vz is not None and not vz.any():
                        continue
                    for k in range(mc.n_classes):
                        ref = np.asarray(sample.masks[k, z0 + dz]) > 0
                        # bin j holds probabilities in (grid[j-1], grid[j]]: p > grid[j] <=> bin > j
                        bins = np.searchsorted(THRESHOLD_GRID, probs[k, dz], side="left")
                        if vz is not None:
                            bins, ref = bins[vz], ref[vz]
                        fgz[k] = np.bincount(bins[ref].ravel(), minlength=n_bins)
                        bgz[k] = np.bincount(bins[~ref].ravel(), minlength=n_bins)
                    fg_slices.append(fgz)
                    bg_slices.append(bgz)
                voxels += int(valid.sum()) if valid is not None else int(np.prod(probs.shape[1:]))
    fg_s, bg_s = np.stack(fg_slices, axis=1), np.stack(bg_slices, axis=1)  # (K, S, bins)
    f1_s = _f1_curves(fg_s, bg_s)  # (K, S, T)
    f1 = _f1_curves(fg_s.sum(axis=1), bg_s.sum(axis=1))  # (K, T), pooled over all voxels
    half = int(np.argmin(np.abs(THRESHOLD_GRID - 0.5)))
    thresholds, at_half, best_f1 = {}, {}, {}
    for k, cls in enumerate(mc.classes):
        best = choose_threshold(f1[k], f1_s[k], half, rule, min_gain)
        thresholds[cls] = float(THRESHOLD_GRID[best])
        at_half[cls] = round(float(f1[k, half]), 5)
        best_f1[cls] = round(float(f1[k, best]), 5)
    result = ThresholdCalibration(thresholds, at_half, best_f1, voxels)
    if log is not None:
        log(result.summary())
    return result
