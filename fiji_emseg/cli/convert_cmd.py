"""``emseg convert``: move datasets between TIFF stacks and DeepSCEM's HDF5 format, both ways."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Convert between image/mask TIFF stacks and DeepSCEM dataset files (.hdf5), so that DeepSCEM
users can bring their data and take results back to DeepSCEM; and (--volume) one volume of any
size between TIFF, OME-Zarr, zarr and N5, streamed chunk by chunk.

TIFF -> DeepSCEM: give each sample as --sample IMAGE [MASK ...], one binary mask (0/255 or 0/1)
per class, the classes in the same order for every sample. Class names default to the mask
file names of the first sample (mito.tif -> mito) and are stored in the file's labels_aliases.
Images are stored as float32, min-max normalised per sample exactly as DeepSCEM does; masks as
uint8 0/1. Images also accept .npy and zarr volumes.

DeepSCEM -> TIFF: give --deepscem FILE; every sample becomes a folder OUTPUT/<sample>/ with
image.tif (32-bit, the normalised image as stored) and one <class>.tif (8-bit 0/255) per class,
named after labels_aliases (label_0000, ... when the file has none). The voxel size is kept
where the file records it (files written by emseg do; DeepSCEM's own do not).

Input files are only read. Outputs are written atomically and existing files are never
replaced without --overwrite; every target is checked before anything is written."""

EPILOG = """\
examples:
  emseg convert --sample stack.tif mito.tif er.tif --output dataset.hdf5
  emseg convert --sample a/image.tif a/mito.tif --sample b/image.tif b/mito.tif --sample-names a b \\
                --name MITO --output mito.hdf5
  emseg convert --sample image.tif membrane.tif --slices 0-11 --output train.hdf5
  emseg convert --deepscem dataset.hdf5 --output exported/
  emseg convert --deepscem predicted.hdf5 --predictions --threshold 0.5 --output predicted/
  emseg convert --volume stack.tif --output stack.ome.zarr --chunks 64 256 256
  emseg convert --volume prediction.ome.zarr/masks --output masks.tif
  emseg convert --volume cell.n5 --level 1 --output cell_s1.ome.zarr"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert", help="convert image/mask TIFFs to a DeepSCEM dataset (.hdf5) and back",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample", "-s", nargs="+", action="append", metavar="FILE", dest="samples",
                     help="one sample: IMAGE then its masks, one per class (repeat for more samples)")
    src.add_argument("--deepscem", "-d", metavar="HDF5", help="DeepSCEM dataset file to export as TIFF folders")
    src.add_argument("--volume", metavar="VOLUME",
                     help="one volume (TIFF, OME-Zarr, zarr, N5) to convert, streamed, into OME-Zarr (--output x.ome.zarr) "
                          "or an ImageJ TIFF (--output x.tif)")
    p.add_argument("--output", "-o", required=True, metavar="PATH",
                   help="with --sample: the .hdf5 file to write; with --deepscem: the folder to write into "
                        "(created if needed)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    v = p.add_argument_group("volumes (--volume): TIFF <-> OME-Zarr, streamed (memory flat in the volume size)")
    v.add_argument("--level", type=int, metavar="L", help="scale level of an OME-Zarr/N5 input (default 0)")
    v.add_argument("--chunks", nargs=3, type=int, metavar=("Z", "Y", "X"), help="OME-Zarr chunk shape (default 32 256 256)")
    v.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.4",
                   help="OME-Zarr version: 0.4 (zarr v2, opens in Fiji today; default) or 0.5 (zarr v3)")
    v.add_argument("--no-pyramid", action="store_true", help="OME-Zarr: full resolution only")

    a = p.add_argument_group("TIFF -> DeepSCEM (--sample)")
    a.add_argument("--classes", "-c", nargs="+", metavar="NAME",
                   help="class names, one per mask, in mask order (default: the first sample's mask file names)")
    a.add_argument("--sample-names", nargs="+", metavar="NAME",
                   help="sample names, one per --sample (default: the image file names)")
    a.add_argument("--name", metavar="NAME", help="dataset name stored in the file (default: the output file name)")
    a.add_argument("--slices", metavar="RANGES",
                   help="keep only these slices of every sample, 0-based inclusive ranges such as '0-11,20'; "
                        "DeepSCEM treats every voxel of a sample as annotated, so leave out unannotated slices")
    a.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size to record (overrides the TIFF calibration)")
    a.add_argument("--unit", default=None, metavar="UNIT", help="unit of --voxel-size, e.g. nm (default: nm)")
    a.add_argument("--compress", action="store_true",
                   help="gzip-compress the datasets (smaller file, slower to write; DeepSCEM reads it)")

    b = p.add_argument_group("DeepSCEM -> TIFF (--deepscem)")
    b.add_argument("--predictions", action="store_true",
                   help="export the predictions (prediction_0000, ...) instead of the labels")
    b.add_argument("--threshold", "-t", type=float, metavar="T",
                   help="binarise probability-map predictions as value > T, e.g. 0.5")
    b.add_argument("--only", nargs="+", metavar="SAMPLE", help="export only these samples (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    tiff_only = [o for o, v in (("--classes", args.classes), ("--sample-names", args.sample_names),
                                ("--name", args.name), ("--slices", args.slices), ("--voxel-size", args.voxel_size),
                                ("--unit", args.unit), ("--compress", args.compress)) if v]
    hdf5_only = [o for o, v in (("--predictions", args.predictions), ("--threshold", args.threshold is not None),
                                ("--only", args.only)) if v]
    for given, wrong, right in ((tiff_only, args.deepscem is not None, "--sample"),
                                (hdf5_only, args.samples is not None, "--deepscem")):
        if wrong and given:
            verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
            other = "--deepscem" if right == "--sample" else "--sample"
            raise ConfigError(f"{', '.join(given)} only {verb} to {right} input; leave {them} out with {other}")
    if args.volume is not None:
        return _convert_volume(args)
    if args.deepscem is not None:
        return _to_tiff(args)
    return _to_deepscem(args)


# --------------------------------------------------------------------------- volumes: TIFF <-> OME-Zarr


def _convert_volume(args: argparse.Namespace) -> int:
    """Stream one volume into OME-Zarr or TIFF, a chunk-deep slab (or one slice) at a time."""
    import numpy as np

    from ..engine.data.files import check_writable
    from ..engine.data.ome_zarr import write_ome_zarr
    from ..engine.data.volume_io import (
        IMAGEJ_DTYPES,
        TIFF_SUFFIXES,
        StackWriter,
        open_volume,
    )
    from ..errors import ConfigError

    out = Path(args.output)
    is_zarr = out.suffix.lower() == ".zarr"
    if not is_zarr and out.suffix.lower() not in TIFF_SUFFIXES:
        raise ConfigError(f"output {out.name} must end in .ome.zarr (OME-Zarr) or .tif (ImageJ TIFF)")
    check_writable(out, args.overwrite) if not is_zarr else None
    vol = open_volume(args.volume, level=args.level)
    try:
        if is_zarr:
            write_ome_zarr(vol, out, chunks=tuple(args.chunks) if args.chunks else None, version=args.ngff_version,
                           pyramid=not args.no_pyramid, overwrite=args.overwrite)
        else:
            dtype = vol.dtype if vol.dtype in IMAGEJ_DTYPES else np.dtype(np.float32)
            with StackWriter(out, vol.shape, dtype, vol.calibration, args.overwrite) as writer:
                for z in range(vol.shape[0]):
                    writer.write(np.asarray(vol[z], dtype=dtype))
    finally:
        vol.close()
    z, y, x = vol.shape
    print(f"wrote {out} ({z}×{y}×{x} {vol.dtype}, voxel {'×'.join(f'{v:g}' for v in vol.calibration.voxel_size)} "
          f"{vol.calibration.unit})")
    return 0


# --------------------------------------------------------------------------- TIFF -> DeepSCEM


def _to_deepscem(args: argparse.Namespace) -> int:
    from ..engine.data.deepscem_io import write_deepscem_dataset
    from ..engine.data.files import check_writable
    from ..engine.data.sample import (
        Sample,
        class_name_from_path,
        load_sample,
        parse_slice_ranges,
    )
    from ..engine.data.volume_io import Calibration
    from ..errors import ConfigError, InputDataError

    out = Path(args.output)
    if out.suffix.lower() not in (".hdf5", ".h5", ".hdf"):
        raise ConfigError(f"output {out.name} must be a DeepSCEM .hdf5 file; e.g. --output dataset.hdf5")
    check_writable(out, args.overwrite)  # before any reading
    groups: list[list[str]] = args.samples
    n_masks = {len(g) - 1 for g in groups}
    if len(n_masks) > 1:
        raise InputDataError(f"samples have different numbers of masks ({sorted(n_masks)}); give every sample "
                             "one mask per class, in the same order")
    n_classes = n_masks.pop()
    classes = list(args.classes) if args.classes else [class_name_from_path(m) for m in groups[0][1:]]
    if len(classes) != n_classes:
        raise ConfigError(f"{len(classes)} class names for {n_classes} masks per sample; give one name per mask")
    names = _sample_names(args.sample_names, [Path(g[0]) for g in groups])
    if args.unit and not args.voxel_size:
        raise ConfigError("--unit needs --voxel-size; give both, e.g. --voxel-size 40 5 5 --unit nm")
    calibration = Calibration(tuple(args.voxel_size), args.unit or "nm") if args.voxel_size else None

    samples: list[Sample] = []
    for group, name in zip(groups, names, strict=True):
        image, masks = group[0], group[1:]
        if not args.classes:
            _check_mask_order(masks, classes)
        s = load_sample(image, masks, classes if masks else None, name=name, calibration=calibration)
        if args.slices:
            s = s.subset(parse_slice_ranges(args.slices, s.shape[0]), name=name)
        samples.append(s)
    write_deepscem_dataset(out, samples, name=args.name, overwrite=args.overwrite,
                           compression="gzip" if args.compress else None)
    labelled = f", {n_classes} classes {classes}" if n_classes else ", no labels"
    print(f"wrote {out}: {len(samples)} sample{'s' if len(samples) != 1 else ''} "
          f"({', '.join(s.name for s in samples)}){labelled}")
    return 0


def _sample_names(given: list[str] | None, images: list[Path]) -> list[str]:
    from ..engine.data.sample import class_name_from_path
    from ..errors import ConfigError

    if given:
        if len(given) != len(images):
            raise ConfigError(f"{len(given)} sample names for {len(images)} samples; give one name per --sample")
        if len(set(given)) != len(given):
            raise ConfigError(f"sample names must be unique, got {given}")
        return list(given)
    names = [class_name_from_path(p) for p in images]
    if len(set(names)) != len(names):  # e.g. a/image.tif and b/image.tif: add the folder name
        names = [f"{p.resolve().parent.name}_{n}" for p, n in zip(images, names, strict=True)]
    if len(set(names)) != len(names):
        raise ConfigError(f"several images give the same sample name {names}; pass --sample-names")
    return names


def _check_mask_order(masks: list[str], classes: list[str]) -> None:
    """Catch 'er.tif mito.tif' after 'mito.tif er.tif': same names in another order swaps classes."""
    from ..engine.data.sample import class_name_from_path
    from ..errors import InputDataError

    stems = [class_name_from_path(m) for m in masks]
    if sorted(stems) == sorted(classes) and stems != classes:
        raise InputDataError(f"masks {stems} are not in the class order {classes} of the first sample; "
                             "give the masks of every sample in the same order")


# --------------------------------------------------------------------------- DeepSCEM -> TIFF


def _to_tiff(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine.data.deepscem_io import (
        default_class_names,
        read_deepscem_dataset,
        read_deepscem_info,
    )
    from ..engine.data.files import check_writable
    from ..engine.data.volume_io import write_volume
    from ..errors import ConfigError, InputDataError

    if args.threshold is not None and not args.predictions:
        raise ConfigError("--threshold applies to --predictions; labels are binary already")
    src, out = Path(args.deepscem), Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file; give a folder to write the samples into")
    info = read_deepscem_info(src)
    by_name = {s.name: s for s in info.samples}
    wanted = list(args.only) if args.only else list(by_name)
    for name in wanted:
        if name not in by_name:
            raise InputDataError(f"{src.name} has no sample {name!r}; its samples are {sorted(by_name)}")
    if not wanted:
        raise InputDataError(f"{src} contains no samples; nothing to export")
    folders = _unique_safe([_safe(n) for n in wanted], "sample")
    plan: list[tuple[str, Path, list[str]]] = []  # sample, folder, mask file stems
    for name, folder in zip(wanted, folders, strict=True):
        s = by_name[name]
        n = s.n_predictions if args.predictions else s.n_labels
        classes = info.class_names if len(info.class_names) == n else default_class_names(n)
        stems = _unique_safe(["image", *(_safe(c) for c in classes)], "class")[1:] if n else []
        plan.append((name, out / folder, stems))
        for stem in ("image", *stems):  # every target is checked before anything is written
            check_writable(out / folder / f"{stem}.tif", args.overwrite)

    written = 0
    for name, folder_path, stems in plan:
        (sample,) = read_deepscem_dataset(src, predictions=args.predictions, threshold=args.threshold,
                                          samples=[name])
        write_volume(folder_path / "image.tif", sample.image, sample.calibration, overwrite=args.overwrite)
        written += 1
        for stem, mask in zip(stems, sample.masks if sample.masks is not None else (), strict=True):
            write_volume(folder_path / f"{stem}.tif", mask * np.uint8(255), sample.calibration,
                         overwrite=args.overwrite)
            written += 1
    what = "predictions" if args.predictions else "labels"
    print(f"wrote {written} TIFF files for {len(wanted)} sample{'s' if len(wanted) != 1 else ''} "
          f"({what}: {list(info.class_names)}) into {out}")
    return 0


def _safe(name: str) -> str:
    """A file-system-safe version of a sample or class name (DeepSCEM allows any HDF5 name)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "unnamed"
    return safe


def _unique_safe(names: list[str], what: str) -> list[str]:
    from ..errors import InputDataError

    if len(set(names)) != len(names):
        raise InputDataError(f"{what} names {names} collide once made safe for file names (image.tif is the image); "
                             "rename them in DeepSCEM")
    return names
