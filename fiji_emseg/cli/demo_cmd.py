"""``emseg demo``: the whole workflow on built-in synthetic EM data."""

from __future__ import annotations

import argparse

from .common import int_range

HELP = "train, predict and evaluate on built-in example data (a few minutes on a CPU)"
DESCRIPTION = """\
Runs the main job end to end with no data of your own: generates a synthetic EM volume
(cells, membranes, mitochondria, distractor vesicles, noise, contrast drift), trains a compact
U-Net on it, predicts an independent synthetic test stack with the ONNX engine, prints per-class
F1 and IoU against its ground truth, and writes an overlay PNG. Everything goes into OUTPUT_DIR:
data/ (TIFF stacks you can open in Fiji), model/, predictions/, evaluation/, overlay.png.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", nargs="?", default="emseg_demo", help="folder for all results (default ./emseg_demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (under a minute) that checks the installation")
    p.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="random seed for data and training (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..demo import run_demo
    from ..engine.callbacks import TqdmTrainingCallback

    result = run_demo(args.output_dir, preset="quick" if args.quick else "standard", overwrite=args.overwrite,
                      seed=args.seed, callbacks=[TqdmTrainingCallback(disable=args.quiet)],
                      log=lambda text: print(text, file=sys.stderr))
    print(result.table)
    print("per-class F1: " + ", ".join(f"{c} {v:.3f}" for c, v in result.f1.items()))
    print(f"training {result.train_seconds:.0f} s, prediction {result.predict_seconds:.1f} s")
    print(f"results in {result.output_dir}: overlay {result.files['overlay']}, model {result.files['model']}")
    return 0
