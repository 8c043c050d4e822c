"""``emseg export``: export a model to ONNX with metadata, verified against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import int_range

HELP = "export a model to ONNX (verified against PyTorch)"
DESCRIPTION = """\
Export MODEL_DIR to ONNX (default MODEL_DIR/model.onnx) with dynamic batch and spatial axes and
metadata (classes, output mode, normalisation, spatial multiple, measured receptive field,
recommended tile). ONNX Runtime output is compared with PyTorch output on random input; the
export fails, leaving no file, beyond the tolerance.

--int8 also writes model.int8.onnx for fast CPU prediction: static int8 quantisation calibrated
on random tiles of --calibration, then verified on other tiles. It is used automatically on CPUs
only when its masks agree with fp32 to a Dice of at least 0.99 for every class.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder from 'emseg train'")
    p.add_argument("-o", "--output", help="ONNX file to write (default MODEL_DIR/model.onnx)")
    p.add_argument("--fp16", action="store_true", help="also write a half-precision copy for GPUs (.fp16.onnx)")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx for fast CPU prediction, calibrated on --calibration")
    p.add_argument("--calibration", metavar="STACK",
                   help="an EM stack like the ones you will predict (random tiles calibrate and verify int8)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    p.add_argument("--opset", type=int_range(7, 30), default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch exporter (default auto: dynamo, falling back to torchscript)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file")
    p.add_argument("--trust-custom-code", action="store_true", help="allow models with custom architectures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.models.model_store import ONNX_NAME
    from ..engine.models.onnx_metadata import is_current_export
    from ..export.onnx_export import export_onnx

    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration STACK: an EM stack like those you will predict")
    if args.int8 and args.output:
        raise ConfigError("--int8 writes beside the model (model.int8.onnx); leave out --output")
    current = Path(args.model_dir) / ONNX_NAME
    if args.int8 and not args.fp16 and not args.overwrite and current.is_file() and is_current_export(current, args.model_dir):
        print(f"{current} is up to date")
    else:
        report = export_onnx(args.model_dir, args.output, fp16=args.fp16, opset=args.opset, tolerance=args.tolerance,
                             overwrite=args.overwrite, exporter=args.exporter, trust_custom_code=args.trust_custom_code)
        print(report.summary())
    if args.int8:
        from ..engine.models.model_store import read_model_info
        from ..engine.models.receptive_field import recommended_tile
        from ..export.quantize import quantize_int8, tiles_from_volume

        info = read_model_info(args.model_dir)
        tile = recommended_tile(info.model, info.ensure_receptive_field(), xy=256, z=32)
        calib = tiles_from_volume(args.calibration, info, tile, 32, seed=11)
        check = tiles_from_volume(args.calibration, info, tile, 16, seed=12)
        print(quantize_int8(args.model_dir, calib, check, overwrite=args.overwrite).summary())
    return 0
