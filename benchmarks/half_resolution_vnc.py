"""Would training at half XY resolution beat the plan at full resolution? (vnc_sstem, same split.)

The question behind it: on a CPU the plan is compute-bound (more steps keep helping), and vnc
mitochondria are large, so a 2 x 2-downsampled copy gives each step four times the field of view
for the same cost. This writes such a copy (image: 2 x 2 block mean; mask: block mean >= 0.5;
voxel size doubled in x and y), prints the ceiling (the reference mask itself down and bilinearly
up again, scored against the full-resolution mask), trains ``--preset plan`` of
``accuracy_vnc.py`` on the copy's training slices for the budget, predicts the copy's test slices
as probabilities, upsamples them bilinearly to full resolution, thresholds them at the model's
calibrated threshold (and at 0.5) and scores them against the full-resolution test masks.

Measured (stop 30, 2-core Intel Xeon, bf16): vnc mito, 30 min: ceiling F1 0.995; trained at half
resolution F1 0.898 (precision 0.848, recall 0.956) at the calibrated 0.65, 0.893 at 0.5, against
0.894-0.906 for the plan at full resolution: no gain, so the planner does not downsample. The
test F1 still hangs on the one dark object every model calls a mitochondrion (see
``accuracy_vnc.largest_false_object``); four times the context did not change that.
Membrane's ceiling is 0.972: too thin to try.

    python benchmarks/half_resolution_vnc.py [--classes mito] [--minutes 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy_vnc  # noqa: E402


def downsample(volume: np.ndarray) -> np.ndarray:
    """2 x 2 block mean in y and x (float32); odd edges are cut."""
    z, y, x = volume.shape
    y2, x2 = y // 2 * 2, x // 2 * 2
    return volume[:, :y2, :x2].reshape(z, y2 // 2, 2, x2 // 2, 2).astype(np.float32).mean(axis=(2, 4))


def upsample(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear 2x in y and x, cut or edge-padded to ``shape``."""
    from scipy import ndimage

    up = ndimage.zoom(volume.astype(np.float32), (1, 2, 2), order=1, mode="nearest")
    pad = [(0, max(0, s - u)) for s, u in zip(shape, up.shape, strict=True)]
    return np.pad(up, pad, mode="edge")[: shape[0], : shape[1], : shape[2]]


def run(cls: str, minutes: float, seed: int, workdir: Path, quiet: bool) -> dict[str, object]:
    from fiji_emseg.engine.data.sample import as_binary_mask
    from fiji_emseg.engine.data.volume_io import Calibration, read_volume, write_volume
    from fiji_emseg.engine.inference.predictor import PredictConfig, predict

    image, cal = read_volume(accuracy_vnc.DATA / "image.tif")
    mask = as_binary_mask(read_volume(accuracy_vnc.DATA / f"{cls}.tif")[0], f"{cls}.tif")
    half = workdir / "vnc_half"
    half.mkdir(parents=True, exist_ok=True)
    z, y, x = cal.voxel_size
    half_cal = Calibration((z, y * 2, x * 2), cal.unit)
    half_image = np.round(downsample(image)).astype(image.dtype)
    half_mask = downsample(mask)
    write_volume(half / "image.tif", half_image, half_cal)
    write_volume(half / f"{cls}.tif", ((half_mask >= 0.5) * 255).astype(np.uint8), half_cal)
    test = accuracy_vnc.TEST
    reference = mask[test] > 0
    out: dict[str, object] = {"class": cls, "minutes": minutes, "seed": seed,
                              "ceiling": accuracy_vnc.voxel_scores(reference, upsample(half_mask[test], reference.shape) >= 0.5)}
    print(f"{cls}: ceiling (the reference down and up again) {json.dumps(out['ceiling'])}", flush=True)
    if minutes <= 0:
        return out
    row = accuracy_vnc.run_class(cls, "plan", minutes, "cpu", workdir, seed, quiet, {}, False, data=half)
    print(row["plan"], flush=True)
    predict(workdir / f"model_{cls}_plan", half_image[test], workdir / "probabilities",
            config=PredictConfig(outputs=("probabilities",)), name="test", calibration=half_cal, overwrite=True)
    prob = read_volume(next((workdir / "probabilities").glob(f"test_{cls}_prob*.tif")))[0].astype(np.float32)
    if prob.max() > 1.5:  # 8-bit probabilities
        prob /= 255.0
    full = upsample(prob, reference.shape)
    threshold = float((row["threshold"] or {}).get(cls, 0.5))  # type: ignore[union-attr]
    out.update({"threshold": threshold, "at_threshold": accuracy_vnc.voxel_scores(reference, full >= threshold),
                "at_0.5": accuracy_vnc.voxel_scores(reference, full >= 0.5), "half_resolution_f1": round(float(row["f1"]), 4),
                "epochs": row["epochs"], "best_epoch": row["best_epoch"], "median_step_s": row["median_step_s"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=["mito"])
    parser.add_argument("--minutes", type=float, default=30, help="training budget; 0 prints only the ceiling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args()
    return accuracy_vnc.each_class(
        args.classes, "halfres", lambda cls, tmp: run(cls, args.minutes, args.seed, tmp, args.quiet))


if __name__ == "__main__":
    raise SystemExit(main())
