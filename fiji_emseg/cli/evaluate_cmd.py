"""``emseg evaluate``: score a segmentation against a reference (or two experts against each other)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import int_range

DESCRIPTION = """\
Compare a predicted segmentation with a reference annotation, class by class, and print a short
table. Scores: F1 (Dice), IoU, precision, recall and accuracy over the whole annotated volume
and per slice (mean, standard deviation, minimum); object categories (reference objects
detected with voxel recall > 0.8, under-detected, missed with recall < 0.1; predicted objects
touching no reference object are false positives); panoptic quality (PQ) and the aggregated
Jaccard index (AJI). Give two experts' annotations to measure inter-expert agreement.

REF and PRED are either two mask files (one class; TIFF, .npy or zarr) or two folders holding
one mask per class, matched by file name without extension (mito.tif <-> mito.tif); a file
against a folder uses the folder's mask of the same name. Masks are 0/255 or 0/1; a
probability map needs --threshold.

Empty cases never give NaN: when reference and prediction are both empty a score is 1.0
(perfect agreement); any other zero denominator gives 0.0 (e.g. precision is 0 when nothing is
predicted but the reference has foreground)."""

EPILOG = """\
outputs (only with --output-dir): evaluation_summary.csv (one row per class),
evaluation_per_slice.csv (one row per class and annotated slice), evaluation_objects.csv (one
row per object, with its category and bounding box) and evaluation.json (everything, with the
settings). Existing files are kept unless --overwrite.

examples:
  emseg evaluate --reference gt/mito.tif --prediction pred/mito.tif
  emseg evaluate --reference gt/ --prediction pred/ --threshold 0.5 --annotated-slices 16-19 --output-dir eval/
  emseg evaluate --reference expert1/ --prediction expert2/ --classes mito synapse --output-dir agreement/"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a segmentation against a reference (pixel, per-slice and object metrics)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", "-r", required=True, metavar="REF",
                   help="reference mask file (one class) or folder of one mask per class")
    p.add_argument("--prediction", "-p", required=True, metavar="PRED",
                   help="predicted (or second expert's) mask file or folder, in the same form as REF")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="with folders: the classes to evaluate (default: every mask in REF); "
                        "with files: the class name")
    p.add_argument("--threshold", "-t", type=float, metavar="T",
                   help="binarise non-binary inputs (probability maps) as value > T, e.g. 0.5; "
                        "binary masks are used as they are")
    p.add_argument("--annotated-slices", metavar="RANGES",
                   help="only these slices count, 0-based inclusive ranges, e.g. '0-11' or '16-19,25'")
    p.add_argument("--annotated", metavar="MASK",
                   help="mask file of the annotated region (nonzero = annotated); voxels outside are ignored")
    p.add_argument("--components", choices=("3d", "2d"), default="3d",
                   help="objects are 3D connected components, or 2D components in each slice (default: 3d)")
    p.add_argument("--connectivity", type=int_range(1, 26), default=1, metavar="N",
                   help="object connectivity: 1 = faces (6 neighbours in 3D, 4 in 2D) … 3 = full (26); "
                        "neighbour counts 6/18/26 or 4/8 are accepted too (default: 1)")
    p.add_argument("--detected-above", type=float, default=0.8, metavar="R",
                   help="a reference object is detected when more than this fraction of its voxels "
                        "is predicted (default: 0.8)")
    p.add_argument("--missed-below", type=float, default=0.1, metavar="R",
                   help="a reference object is missed when less than this fraction is predicted (default: 0.1)")
    p.add_argument("--skip-empty-slices", action="store_true",
                   help="leave slices where both masks are empty out of the per-slice mean/std/min "
                        "(by default they count as perfect, 1.0)")
    p.add_argument("--no-objects", action="store_true", help="pixel metrics only (skip object evaluation)")
    p.add_argument("--output-dir", "-o", metavar="DIR",
                   help="write the CSV tables and the JSON report into DIR (created if needed); "
                        "without it nothing is written")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engine.data.files import check_writable
    from ..engine.evaluation.evaluation import evaluate
    from ..errors import InputDataError

    ref, pred = Path(args.reference), Path(args.prediction)
    for role, path in (("reference", ref), ("prediction", pred)):
        if not path.exists():
            raise InputDataError(f"{role} {path} does not exist; check the path")
    if args.output_dir is not None:  # fail before any work if the report cannot be written
        out = Path(args.output_dir)
        for name in ("evaluation_summary.csv", "evaluation_per_slice.csv", "evaluation_objects.csv", "evaluation.json"):
            check_writable(out / name, args.overwrite)
    report = evaluate(
        ref, pred,
        class_names=args.classes,
        annotated=args.annotated,
        annotated_slices=args.annotated_slices,
        threshold=args.threshold,
        components=args.components,
        connectivity=args.connectivity,
        detected_above=args.detected_above,
        missed_below=args.missed_below,
        skip_empty_slices=args.skip_empty_slices,
        objects=not args.no_objects,
    )
    print(report.format_table())
    if args.output_dir is not None:
        written = report.save(args.output_dir, overwrite=args.overwrite)
        print(f"wrote {', '.join(p.name for p in written)} to {Path(args.output_dir)}")
    return 0
