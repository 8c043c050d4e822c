"""Accuracy on isbi2012 membranes: train on slices 0-19, validate on 20-24, test on 25-29.

The same engine path as ``accuracy_vnc.py`` (its ``run_class``): training within a wall-clock
budget, keep-best on the validation slices, thresholds calibrated there, then exact tiled
prediction of the test slices and F1/IoU over the test volume. Presets as there: ``cpu`` (the
hand-tuned CPU recipe, tuned on vnc_sstem, not on this set) and ``plan`` (the planner with only
the time budget); give both to compare them in one run.

    python benchmarks/accuracy_isbi.py [--preset cpu plan] [--minutes 20] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_vnc import ROOT, add_override_args, overrides_from, pace_line, run_class  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "isbi2012"
SPLIT = (slice(0, 20), slice(20, 25), slice(25, 30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", choices=("cpu", "default", "plan"), default=["cpu", "plan"])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per preset (default 20)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    add_override_args(parser)
    parser.add_argument("--keep", metavar="DIR", help="keep models and predictions in DIR")
    parser.add_argument("--data", type=Path, default=DATA, help="the isbi2012 folder (default ../shared/data/isbi2012)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args()
    if not (args.data / "image.tif").exists():
        print(f"skipped: {args.data} is absent (the benchmark needs ../shared/data/isbi2012, or --data)")
        return 0
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for preset in args.preset:
            print(f"== membrane: preset {preset}, budget {args.minutes:g} min", flush=True)
            rows.append(run_class("membrane", preset, args.minutes, args.device, work, args.seed, args.quiet,
                                  overrides_from(args), False,
                                  data=args.data, split=SPLIT))
            print(json.dumps(rows[-1]), flush=True)
    print("\nclass     preset  hard  spat  F1     IoU    precision recall  train")
    for r in rows:
        print(f"{r['class']:9s} {r['preset']:7s} {r['hard_fraction']:.2f}  {r['p_spatial']:.2f}  {r['f1']:.3f}  {r['iou']:.3f}  {r['precision']:.3f}     "
              f"{r['recall']:.3f}   {r['train_minutes']:.1f} min")
        print(pace_line(r))
        print(f"          wrong voxels within 1 px of the other mask: {r['edge_error_share']:.0%}; "
              f"F1 forgiving them {r['f1_edge_tolerant']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
