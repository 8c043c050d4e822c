"""``emseg export``: export a model to ONNX with metadata, verified against PyTorch."""

from __future__ import annotations

import argparse

HELP = "export a model to ONNX (verified against PyTorch)"
DESCRIPTION = """\
Export MODEL_DIR to ONNX (default MODEL_DIR/model.onnx) with dynamic batch and spatial axes and
metadata (classes, output mode, normalisation, spatial multiple, measured receptive field,
recommended tile). ONNX Runtime output is compared with PyTorch output on random input; the
export fails, leaving no file, beyond the tolerance.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder from 'emseg train'")
    p.add_argument("-o", "--output", help="ONNX file to write (default MODEL_DIR/model.onnx)")
    p.add_argument("--fp16", action="store_true", help="also write a half-precision copy for GPUs (.fp16.onnx)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch exporter (default auto: dynamo, falling back to torchscript)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file")
    p.add_argument("--trust-custom-code", action="store_true", help="allow models with custom architectures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.onnx_export import export_onnx

    report = export_onnx(args.model_dir, args.output, fp16=args.fp16, opset=args.opset, tolerance=args.tolerance,
                         overwrite=args.overwrite, exporter=args.exporter, trust_custom_code=args.trust_custom_code)
    print(report.summary())
    return 0
