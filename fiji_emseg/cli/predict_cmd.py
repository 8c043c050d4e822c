"""``emseg predict``: tiled, streaming prediction of whole stacks (one or thousands)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import TqdmProgress, add_progress_flags, collect_inputs, int_range, parse_class_values

HELP = "predict whole stacks with a trained model"
DESCRIPTION = """\
Predict every input stack with MODEL (a model folder from 'emseg train', or an exported .onnx
file) and write, per input, ImageJ TIFF stacks with the voxel size into OUTPUT_DIR:
<name>_<class>_mask.tif (0/255), and on request <name>_<class>_prob.tif and <name>_labels.tif.
Stacks are read and written slice by slice, so memory does not grow with the number of slices.
Tiles overlap by twice the model's measured receptive-field radius by default, which makes the
tiled result equal to predicting each slice in one piece.

examples:
  emseg predict mito_model stack.tif -o predictions/
  emseg predict model folder_of_stacks/ -o out/ --outputs masks probabilities --threshold mito=0.4 er=0.6
  emseg predict model big.tif -o out/ --device cuda --backend torch --tta --min-size 200 --fill-holes 50

whole volumes (OME-Zarr, zarr, N5 or TIFF input; any size):
  an output ending in .zarr (e.g. -o out.ome.zarr) is written block-wise as OME-Zarr (NGFF 0.4:
  one multiscale image per output kind, with pyramid and voxel size). Blocks are aligned to the
  output chunks, read with the model's halo and predicted on the global tile grid, so the result
  equals a single-process run. A stopped run resumes when the same command is run again;
  a run with other settings into the same store is refused.
  emseg predict model cell.ome.zarr -o cell_pred.ome.zarr --outputs masks probabilities
  emseg predict model cell.ome.zarr -o cell_pred.ome.zarr --workers 4           # local Dask cluster
  emseg predict model cell.n5 -o cell_pred.ome.zarr --scheduler tcp://head:8786  # existing cluster
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("predict", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="model folder, .onnx file or bioimage.io package (.zip or rdf.yaml)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="stacks (TIFF, .npy, .zarr) or folders of TIFF stacks")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the results (created if needed)")
    o = p.add_argument_group("outputs")
    o.add_argument("--outputs", nargs="+", choices=("masks", "probabilities", "labels"), default=["masks"],
                   help="what to write (default masks); labels = argmax label map")
    o.add_argument("--threshold", nargs="+", metavar="T",
                   help="mask threshold: one value, one per class, or CLASS=T pairs (default 0.5; softmax models use argmax)")
    o.add_argument("--prob-dtype", choices=("float32", "uint8", "float16"), default="float32",
                   help="probability maps as float32 (default), uint8 (0-255, 4x smaller) or float16 (OME-Zarr only)")
    o.add_argument("--format", choices=("tiff", "zarr"), default="tiff", help="output format (default tiff)")
    o.add_argument("--compression", choices=("zlib", "lzw", "zstd"), help="TIFF compression (default none)")
    o.add_argument("--overwrite", action="store_true", help="replace existing result files")
    c = p.add_argument_group("clean-up of masks (per class)")
    c.add_argument("--min-size", type=int_range(0), default=0, metavar="VOXELS", help="remove objects smaller than this")
    c.add_argument("--fill-holes", type=int_range(0), default=0, metavar="VOXELS", help="fill holes up to this size")
    c.add_argument("--opening", type=int_range(0, 64), default=0, metavar="RADIUS", help="binary opening radius (voxels)")
    c.add_argument("--closing", type=int_range(0, 64), default=0, metavar="RADIUS", help="binary closing radius (voxels)")
    c.add_argument("--cleanup-2d", action="store_true", help="clean slice by slice instead of in 3D")
    t = p.add_argument_group("engine")
    t.add_argument("--backend", choices=("auto", "onnxruntime", "torch"), default="auto",
                   help="auto: ONNX Runtime CUDA, else PyTorch CUDA, else ONNX Runtime CPU (default auto)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    t.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16", "int8"), default="auto",
                   help="auto: reduced precision on GPUs; on CPUs the verified int8 model when there is one, else bf16 "
                        "where the CPU has bf16 units, else fp32")
    t.add_argument("--tile", nargs="+", type=int_range(1), metavar="N", help="tile size Y X (2D) or Z Y X (3D); default: 1024 (CPU) / 2048 (GPU)")
    t.add_argument("--overlap", nargs="+", type=int_range(0), metavar="N",
                   help="tile overlap in voxels; default 2 x receptive-field radius (exact)")
    t.add_argument("--blend", choices=("cosine", "gaussian", "constant"), default="cosine", help="overlap blending (default cosine)")
    t.add_argument("--batch-size", type=int_range(1, 4096), help="tiles per network call (default: automatic)")
    t.add_argument("--tta", action="store_true", help="test-time augmentation: average over flips and rotations")
    t.add_argument("--compile", action="store_true", help="torch backend: torch.compile the model")
    t.add_argument("--threads", type=int_range(1, 1024), help="CPU threads (default: all)")
    t.add_argument("--trust-custom-code", action="store_true", help="allow models with custom architectures")
    b = p.add_argument_group("whole volumes (output .ome.zarr) and Dask")
    b.add_argument("--workers", type=int, default=0, metavar="N",
                   help="predict on a local Dask cluster of N worker processes (default: in this process); with an "
                        ".ome.zarr output block by block, with a folder output one task per stack")
    b.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask cluster, e.g. tcp://host:8786")
    b.add_argument("--level", type=int, metavar="L", help="input scale level of an OME-Zarr/N5 pyramid (default 0, full resolution)")
    b.add_argument("--chunks", nargs=3, type=int, metavar=("Z", "Y", "X"), help="output chunk shape (default 32 256 256)")
    b.add_argument("--block", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="block (unit of work) shape, a multiple of the chunks (default: automatic)")
    b.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.4",
                   help="OME-Zarr version: 0.4 (zarr v2, opens in Fiji today; default) or 0.5 (zarr v3)")
    b.add_argument("--no-pyramid", action="store_true", help="write full resolution only")
    b.add_argument("--resume", action="store_true",
                   help="only continue an existing output (refuse to start a new one); resuming is automatic anyway")
    add_progress_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.inference.cleanup import CleanupConfig
    from ..engine.inference.predictor import PredictConfig, Predictor

    inputs = collect_inputs(args.inputs)
    cleanup = None
    if args.min_size or args.fill_holes or args.opening or args.closing:
        cleanup = CleanupConfig(min_object_size=args.min_size, max_hole_size=args.fill_holes,
                                opening_radius=args.opening, closing_radius=args.closing, per_slice=args.cleanup_2d)
    overlap = None
    if args.overlap:
        overlap = args.overlap[0] if len(args.overlap) == 1 else tuple(args.overlap)
    config = PredictConfig(
        backend=args.backend, device=args.device, precision=args.precision,
        tile=tuple(args.tile) if args.tile else None, overlap=overlap, blend=args.blend, batch_size=args.batch_size,
        tta=args.tta, compile=args.compile, threads=args.threads, outputs=tuple(args.outputs),
        probability_dtype=args.prob_dtype, thresholds=parse_class_values(args.threshold, what="threshold"),
        cleanup=cleanup, storage=args.format, compression=args.compression)
    out_dir = Path(args.output_dir)
    _preflight(inputs, out_dir)
    if out_dir.suffix.lower() == ".zarr":
        return _run_blockwise(args, inputs, config)
    if (args.workers or args.scheduler) and not args.resume:
        return _run_stacks(args, inputs, config)
    given = [f for f, v in (("--resume", args.resume),
                            ("--level", args.level is not None), ("--chunks", args.chunks), ("--block", args.block),
                            ("--no-pyramid", args.no_pyramid)) if v]
    if given:
        from ..errors import ConfigError

        raise ConfigError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} an OME-Zarr output: "
                          "give -o NAME.ome.zarr")
    if args.prob_dtype == "float16":
        from ..errors import ConfigError

        raise ConfigError("float16 probabilities are written to OME-Zarr only; use -o NAME.ome.zarr, or uint8/float32")
    with Predictor(args.model, config, trust_custom_code=args.trust_custom_code) as predictor:
        header = [f"model {predictor.model_config.name} ({', '.join(predictor.model_config.classes)}); "
                  f"backend: {predictor.backend.description}"] + [f"note: {note}" for note in predictor.notes]
        total_voxels, total_s = 0, 0.0
        for i, path in enumerate(inputs, start=1):
            bar = TqdmProgress(f"[{i}/{len(inputs)}] {path.name}", disable=args.quiet)
            try:
                result = predictor.predict(path, out_dir, overwrite=args.overwrite, progress=bar)  # type: ignore[arg-type]
            finally:
                bar.close()
            for line in header:  # after the first stack, so that an input error stays the only line
                print(line, file=sys.stderr)
            header = []
            total_voxels += int(result.shape[0]) * result.shape[1] * result.shape[2]
            total_s += result.seconds
            print(result.summary())
            for (kind, cls), f in result.files.items():
                print(f"  {kind}{' ' + cls if cls else ''}: {f}")
        if len(inputs) > 1:
            print(f"{len(inputs)} stacks, {total_voxels / max(total_s, 1e-9) / 1e6:.2f} M voxels/s overall")
    return 0


def _run_blockwise(args: argparse.Namespace, inputs: list[Path], config: object) -> int:
    from ..engine.inference.blockwise import BlockwiseConfig
    from ..engine.inference.dask_runner import predict_blockwise, tqdm_progress
    from ..errors import ConfigError

    out = Path(args.output_dir)
    if len(inputs) != 1:
        raise ConfigError(f"an OME-Zarr output takes one input volume, got {len(inputs)}; give one, or -o FOLDER for TIFFs")
    if args.resume and not out.exists():
        raise ConfigError(f"--resume: {out} does not exist; drop --resume to start a new run")
    bw = BlockwiseConfig(chunks=tuple(args.chunks) if args.chunks else None, block=tuple(args.block) if args.block else None,
                         level=args.level, ngff_version=args.ngff_version, pyramid=not args.no_pyramid)
    update, close = tqdm_progress(disable=args.quiet)
    try:
        result = predict_blockwise(args.model, inputs[0], out, config, bw, workers=args.workers, scheduler=args.scheduler,
                                   overwrite=args.overwrite, trust_custom_code=args.trust_custom_code, progress=update,
                                   log=lambda s: print(s, file=sys.stderr))
    finally:
        close()
    print(result.summary())
    return 0


def _run_stacks(args: argparse.Namespace, inputs: list[Path], config: object) -> int:
    """Many stacks in parallel on Dask (one task per stack), TIFF outputs into the folder."""
    from ..engine.inference.dask_runner import predict_stacks, tqdm_progress

    update, close = tqdm_progress(disable=args.quiet, unit="stack")
    try:
        results = predict_stacks(args.model, inputs, args.output_dir, config, workers=args.workers,
                                 scheduler=args.scheduler, overwrite=args.overwrite,
                                 trust_custom_code=args.trust_custom_code, progress=update,
                                 log=lambda s: print(s, file=sys.stderr))
    finally:
        close()
    for r in results:
        print(r["summary"])
        for what, f in r["files"].items():
            print(f"  {what}: {f}")
    return 0


def _preflight(inputs: list[Path], out_dir: Path) -> None:
    """Open every input's header and check the output folder before the model is loaded.

    A bad tenth file of a batch then fails at once, not after nine stacks, and nothing is
    printed before its error line.
    """
    from ..engine.data.sample import check_image_dtype
    from ..engine.data.volume_io import open_volume
    from ..errors import OutputError

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output folder {out_dir} is a file, not a folder; give a folder name (it will be created)")
    for path in inputs:
        with open_volume(path) as vol:
            check_image_dtype(vol.dtype, path.name)
