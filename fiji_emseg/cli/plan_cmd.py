"""``emseg plan``: print the training plan for some data and a time budget, without training."""

from __future__ import annotations

import argparse
import json

HELP = "show the model and schedule 'emseg train' would plan, and why, without training"
DESCRIPTION = """\
Fingerprint the training data (voxel size and anisotropy, annotated slices, object sizes per
class, class frequencies, intensities), measure a few training steps of the candidate model on
this machine (cached), and print the plan 'emseg train' would follow with the same options:
2D or 3D, patch size, width and depth, batch, loss and label focus, learning rate and schedule,
and the steps that fit the time budget, each with its reason. Options given override the plan,
exactly as in 'emseg train'.

examples:
  emseg plan --image stack.tif --masks mito.tif --val-slices 12-15 --time-limit 30
  emseg plan --image stack.tif --masks mito.tif --time-limit 10 --filters 32 --json
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .train_cmd import add_training_arguments

    p = sub.add_parser("plan", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON (as saved in config.json)")
    p.set_defaults(func=run, model_dir="", plan="auto")


def run(args: argparse.Namespace) -> int:
    from ..api import TrainRequest, load_samples, plan_request
    from ..errors import InputDataError

    args.plan = "auto"
    request = TrainRequest.from_cli(args)
    samples = load_samples(request.images, request.masks, request.class_names, request.annotated,
                           request.annotated_slices, request.dataset)
    if not samples:
        raise InputDataError("no training data given; give --image with --masks, or --dataset")
    plan, _, _ = plan_request(request, samples)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
    return 0
