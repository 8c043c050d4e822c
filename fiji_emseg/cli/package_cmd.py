"""``emseg package``: a model folder as a bioimage.io model package (deepImageJ, BioImage Model Zoo)."""

from __future__ import annotations

import argparse
import sys

HELP = "write a model as a bioimage.io package (.zip) for deepImageJ and the BioImage Model Zoo"
DESCRIPTION = """\
Write MODEL (a folder from 'emseg train') as a bioimage.io model package: rdf.yaml (spec 0.5,
checked with bioimageio.spec), ONNX weights at opset 17 (what deepImageJ's ONNX Runtime 1.13
runs), TorchScript, a PyTorch state dict with its architecture source, and test tensors that
fiji-emseg predicts on a centred crop of --sample (a stack like the training data).

examples:
  emseg package mito_model -o mito.zip --sample stack.tif
  emseg package mito_model -o mito.zip --sample stack.tif --author "A. Person" --license MIT
Validate the result with:  bioimageio test mito.zip
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("package", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model folder")
    p.add_argument("-o", "--output", required=True, metavar="NAME.zip", help="the package to write")
    p.add_argument("--sample", required=True, metavar="STACK", help="a stack like the training data; a crop becomes the test tensors")
    p.add_argument("--crop", nargs="+", type=int, metavar="N", help="test crop size Y X (2D) or Z Y X (3D), 0 keeping the default on that axis; default 256² / 16×96²")
    p.add_argument("--author", action="append", default=[], help="author name (repeatable)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX licence id (default CC-BY-4.0)")
    p.add_argument("--description", help="one-sentence description (default: generated)")
    p.add_argument("--weights", nargs="+", choices=("onnx", "torchscript", "pytorch_state_dict"),
                   default=["onnx", "torchscript", "pytorch_state_dict"], help="weight formats to include (default all)")
    p.add_argument("--masks", action="store_true",
                   help="sigmoid models: declare the mask thresholds as binarize postprocessing (output 0/1 masks, not probabilities)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.add_argument("--trust-custom-code", action="store_true", help="allow models with custom architectures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.bioimageio_package import package_model

    report = package_model(args.model, args.output, args.sample, crop=tuple(args.crop) if args.crop else None,
                           authors=tuple(args.author), license=args.license, description=args.description,
                           weight_formats=tuple(args.weights), masks=args.masks, overwrite=args.overwrite,
                           trust_custom_code=args.trust_custom_code, log=lambda m: print(m, file=sys.stderr))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(report.summary())
    return 0
