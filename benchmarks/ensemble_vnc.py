"""Would two plan models of half the budget, averaged, beat one model of the whole budget? (vnc_sstem.)

The question behind it: vnc membrane reaches its plateau early (the plan scores 0.878 in 20 min
and 0.878 in 40), so the second half of a budget might be better spent on a second model whose
errors average out with the first's. This trains ``--preset plan`` of ``accuracy_vnc.py`` once per
seed for the given minutes each, predicts the test slices as probabilities with each model, and
scores each model alone (at its calibrated threshold) and the mean of their probabilities (at 0.5
and at the mean of their thresholds) against the test masks.

Measured (stop 30, 2-core Intel Xeon, bf16): vnc membrane, seeds 0 and 1, 10 min each: alone
0.877 (precision 0.864, recall 0.891) and 0.876 (0.871, 0.880); averaged 0.879 (0.869, 0.889) at
0.45, 0.879 (0.878, 0.880) at 0.5; one plan model of 20 min scores 0.876-0.878. +0.002 over the
single models, within a seed's spread, for twice the prediction time: the planner trains one.

    python benchmarks/ensemble_vnc.py [--classes membrane] [--minutes 10] [--seeds 0 1]
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


def run(cls: str, minutes: float, seeds: list[int], workdir: Path, quiet: bool) -> dict[str, object]:
    from fiji_emseg.engine.data.sample import as_binary_mask
    from fiji_emseg.engine.data.volume_io import read_volume
    from fiji_emseg.engine.inference.predictor import PredictConfig, predict

    image, cal = read_volume(accuracy_vnc.DATA / "image.tif")
    test = accuracy_vnc.TEST
    reference = as_binary_mask(read_volume(accuracy_vnc.DATA / f"{cls}.tif")[0], f"{cls}.tif")[test] > 0
    probabilities, thresholds, members = [], [], []
    for seed in seeds:
        folder = workdir / f"seed{seed}"
        folder.mkdir(parents=True)
        row = accuracy_vnc.run_class(cls, "plan", minutes, "cpu", folder, seed, quiet, {}, False)
        threshold = float((row["threshold"] or {}).get(cls, 0.5))  # type: ignore[union-attr]
        predict(folder / f"model_{cls}_plan", image[test], folder / "probabilities",
                config=PredictConfig(outputs=("probabilities",)), name="test", calibration=cal, overwrite=True)
        prob = read_volume(next((folder / "probabilities").glob(f"test_{cls}_prob*.tif")))[0].astype(np.float32)
        if prob.max() > 1.5:  # 8-bit probabilities
            prob /= 255.0
        probabilities.append(prob)
        thresholds.append(threshold)
        members.append({"seed": seed, "threshold": threshold, **accuracy_vnc.voxel_scores(reference, prob >= threshold),
                        "epochs": row["epochs"], "best_epoch": row["best_epoch"], "median_step_s": row["median_step_s"]})
        print(json.dumps(members[-1]), flush=True)
    mean = np.mean(probabilities, axis=0)
    mean_threshold = round(float(np.mean(thresholds)), 3)
    return {"class": cls, "minutes_each": minutes, "members": members,
            "averaged_at_0.5": accuracy_vnc.voxel_scores(reference, mean >= 0.5),
            f"averaged_at_{mean_threshold}": accuracy_vnc.voxel_scores(reference, mean >= mean_threshold)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=["membrane"])
    parser.add_argument("--minutes", type=float, default=10, help="training budget of each model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args()
    return accuracy_vnc.each_class(
        args.classes, "ensemble", lambda cls, tmp: run(cls, args.minutes, args.seeds, tmp, args.quiet))


if __name__ == "__main__":
    raise SystemExit(main())
