"""Does threshold calibration lose F1 on unseen slices? Calibrate on half the held-out slices, test on the other half.

For each dataset and class: a model is trained on the training slices (or read with ``--models``),
the held-out slices (validation + test of the usual split) are predicted once with the tiled
predictor, and per-slice histograms of the probabilities are kept. The held-out slices are split
into two halves (even/odd slices, and first/second half); each rule chooses a threshold on one
half and is scored on the other, both ways. Reported per class and rule: the change in test F1
versus the fixed 0.5 threshold, mean and worst. The target for the default ``robust`` rule: the
worst change >= -0.002 on every class.

    python benchmarks/threshold_holdout.py [--sets vnc:mito vnc:membrane isbi:membrane] [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "vnc": (ROOT.parent / "shared" / "data" / "vnc_sstem", slice(0, 12), slice(12, 20)),
    "isbi": (ROOT.parent / "shared" / "data" / "isbi2012", slice(0, 20), slice(20, 30)),
}


def heldout_histograms(model_dir: Path, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, bins) foreground and background histograms of the probabilities, one row per slice."""
    from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
    from fiji_emseg.engine.training.threshold_calibration import THRESHOLD_GRID

    bins_n = len(THRESHOLD_GRID) + 1
    fg, bg = np.zeros((image.shape[0], bins_n), np.int64), np.zeros((image.shape[0], bins_n), np.int64)
    with Predictor(model_dir, PredictConfig(device="cpu", backend="torch", outputs=("probabilities",))) as p:
        probs = p.predict_block(image, (0, image.shape[0]))[0]
    for z in range(image.shape[0]):
        b = np.searchsorted(THRESHOLD_GRID, probs[z], side="left")
        ref = mask[z] > 0
        fg[z] = np.bincount(b[ref].ravel(), minlength=bins_n)
        bg[z] = np.bincount(b[~ref].ravel(), minlength=bins_n)
    return fg, bg


def evaluate_rules(fg: np.ndarray, bg: np.ndarray) -> dict[str, dict[str, float]]:
    from fiji_emseg.engine.training.threshold_calibration import THRESHOLD_GRID, _f1_curves, choose_threshold

    s = fg.shape[0]
    half = int(np.argmin(np.abs(THRESHOLD_GRID - 0.5)))
    idx = np.arange(s)
    splits = [(idx % 2 == 0, idx % 2 == 1), (idx < s // 2, idx >= s // 2)]
    out: dict[str, dict[str, float]] = {}
    for rule in ("robust", "argmax"):
        changes, chosen = [], []
        for a, b in splits:
            for cal, test in ((a, b), (b, a)):
                t = choose_threshold(_f1_curves(fg[cal].sum(0), bg[cal].sum(0)), _f1_curves(fg[cal], bg[cal]), half, rule)
                f1_test = _f1_curves(fg[test].sum(0), bg[test].sum(0))
                changes.append(float(f1_test[t] - f1_test[half]))
                chosen.append(float(THRESHOLD_GRID[t]))
        out[rule] = {"mean_change": float(np.mean(changes)), "worst_change": float(np.min(changes)),
                     "thresholds": chosen}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["vnc:mito", "vnc:membrane", "isbi:membrane"])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model (planner preset)")
    parser.add_argument("--models", metavar="DIR", help="folder with trained models named <set>_<class> (else trained here)")
    parser.add_argument("--keep", metavar="DIR", help="keep the trained models in DIR")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from fiji_emseg.engine.data.sample import Sample, as_binary_mask
    from fiji_emseg.engine.data.volume_io import read_volume
    from fiji_emseg.engine.training.fingerprint import fingerprint
    from fiji_emseg.engine.training.planner import plan_training
    from fiji_emseg.engine.training.train_config import TrainConfig
    from fiji_emseg.engine.training.trainer import train_model

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        for spec in args.sets:
            name, _, cls = spec.partition(":")
            data, train_z, held_z = SETS[name]
            if not (data / "image.tif").exists():
                print(f"skipped {spec}: {data} is absent")
                continue
            image, cal = read_volume(data / "image.tif")
            mask = as_binary_mask(read_volume(data / f"{cls}.tif")[0], cls)
            model_dir = Path(args.models) / f"{name}_{cls}" if args.models else work / f"{name}_{cls}"
            if not args.models:
                train = Sample("train", image[train_z], mask[None, train_z], (cls,), cal)
                base = TrainConfig(seed=args.seed, calibrate_thresholds=False, val_steps=0)
                plan = plan_training(fingerprint([train]), classes=(cls,), time_limit_minutes=args.minutes, base=base)
                print(f"== {spec}: training {args.minutes:g} min\n{plan.describe()}", flush=True)
                train_model([train], model_dir, model_config=plan.model_config((cls,)), config=plan.train_config(base))
            fg, bg = heldout_histograms(model_dir, image[held_z], mask[held_z])
            row = {"set": spec, **evaluate_rules(fg, bg)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\nset            rule     mean change  worst change  (test F1 vs threshold 0.5)")
    for r in rows:
        for rule in ("robust", "argmax"):
            print(f"{r['set']:14s} {rule:8s} {r[rule]['mean_change']:+.4f}      {r[rule]['worst_change']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
