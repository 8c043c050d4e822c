"""Per-class mask thresholds chosen on validation data, predicted the way prediction will run.

A sigmoid output thresholded at 0.5 is not always the best mask: with Dice losses and label focus
the network often over- or under-segments a little. After training, the validation volumes are
predicted with the real tiled predictor (whole slices, exact overlap, blending), so the threshold
is chosen in the regime users will see, and not on small training patches whose borders lack
context (a large part of a 256² patch lies within the 94 px receptive-field radius of the default
model). Voxels outside the annotated region are ignored, as in every metric here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.sample import Sample
from ..evaluation.metrics import scores
from ..inference.predictor import PredictConfig, Predictor

__all__ = ["ThresholdCalibration", "calibrate_thresholds", "THRESHOLD_GRID"]

#: Candidate thresholds (0.05 steps: finer steps chase noise on small validation sets).
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


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


def calibrate_thresholds(model_dir: str | Path, samples: Sequence[Sample], device: str = "cpu", *,
                         max_voxels: int = 2**26, min_gain: float = 0.0, trust_custom_code: bool = False,
                         log: Callable[[str], None] | None = None) -> ThresholdCalibration | None:
    """Choose each class's threshold on *samples* (sigmoid models; None for softmax models).

    The threshold with the best validation F1 wins; among equal scores the one nearest 0.5. With
    *min_gain* > 0 a threshold moves away from 0.5 only when it gains at least that much F1 (for
    very small validation sets). At most about *max_voxels* voxels are predicted per sample. The model is run with PyTorch on *device* in the precision prediction would choose.
    """
    config = PredictConfig(device=device, backend="torch", outputs=("probabilities",))
    with Predictor(model_dir, config, trust_custom_code=trust_custom_code) as predictor:
        mc = predictor.model_config
        if mc.output != "sigmoid":
            return None
        n_bins = len(THRESHOLD_GRID) + 1
        fg = np.zeros((mc.n_classes, n_bins), np.int64)  # histogram of foreground probabilities
        bg = np.zeros((mc.n_classes, n_bins), np.int64)
        voxels = 0
        for sample in samples:
            assert sample.masks is not None
            stats = predictor.intensity_stats(sample.image)  # of the whole volume, as at training
            for z0, z1 in _evaluated_slices(sample, max_voxels, mc.dims):
                probs = predictor.predict_block(sample.image, (z0, z1), stats=stats)
                valid = None if sample.annotated is None else np.asarray(sample.annotated[z0:z1], bool)
                for k in range(mc.n_classes):
                    ref = np.asarray(sample.masks[k, z0:z1]) > 0
                    # bin j holds probabilities in (grid[j-1], grid[j]]: p > grid[j] <=> bin > j
                    bins = np.searchsorted(THRESHOLD_GRID, probs[k], side="left")
                    if valid is not None:
                        bins, ref = bins[valid], ref[valid]
                    fg[k] += np.bincount(bins[ref].ravel(), minlength=n_bins)
                    bg[k] += np.bincount(bins[~ref].ravel(), minlength=n_bins)
                voxels += int(valid.sum()) if valid is not None else int(np.prod(probs.shape[1:]))
    # predicted foreground at grid[j] = voxels in bins j+1 ...
    tp = np.cumsum(fg[:, ::-1], axis=1)[:, ::-1][:, 1:]
    fp = np.cumsum(bg[:, ::-1], axis=1)[:, ::-1][:, 1:]
    fn = fg.sum(axis=1, keepdims=True) - tp
    f1 = scores(tp, fp, fn, np.zeros_like(tp))["f1"]  # (K, T); both empty counts as agreement
    nearest_half_first = np.argsort(np.abs(THRESHOLD_GRID - 0.5), kind="stable")
    half = int(nearest_half_first[0])
    thresholds, at_half, best_f1 = {}, {}, {}
    for k, cls in enumerate(mc.classes):
        best = int(nearest_half_first[np.argmax(f1[k, nearest_half_first])])
        if f1[k, best] - f1[k, half] < min_gain:
            best = half
        thresholds[cls] = float(THRESHOLD_GRID[best])
        at_half[cls] = round(float(f1[k, half]), 5)
        best_f1[cls] = round(float(f1[k, best]), 5)
    result = ThresholdCalibration(thresholds, at_half, best_f1, voxels)
    if log is not None:
        log(result.summary())
    return result
