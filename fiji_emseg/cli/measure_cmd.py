"""``emseg measure``: count and measure the objects of segmentation masks."""

from __future__ import annotations

import argparse
from typing import Any

from .common import int_range

DESCRIPTION = """\
Label the connected objects of each class mask and measure them: one CSV row per object with
its voxel count, calibrated volume, surface area (marching cubes), equivalent diameter,
sphericity, centroid and bounding box. With --components 2d (the default for a single image)
objects are measured slice by slice: area, perimeter, equivalent diameter and circularity.

The voxel size is read from each TIFF (ImageJ calibration: Image > Properties in Fiji);
--voxel-size overrides it. Volumes are in unit³, areas in unit², lengths in unit; the unit is
written in the 'unit' column. Objects touching the edge of the volume are flagged in
'touches_border' because they are cut and their size is a lower bound."""

EPILOG = """\
examples:
  emseg measure --masks pred/mito.tif --output mito_objects.csv
  emseg measure --masks pred/ --classes mito --output objects.csv --voxel-size 50 4.6 4.6 --unit nm
  emseg measure --masks prob_mito.tif --threshold 0.5 --min-voxels 100 --output objects.csv"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "measure", help="count and measure objects in masks (volume, surface, diameter, shape) into a CSV",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masks", "-m", nargs="+", required=True, metavar="M",
                   help="mask files (one class each, named after the file) or one folder of one mask per class")
    p.add_argument("--output", "-o", required=True, metavar="CSV", help="objects table to write (.csv)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="with a folder: the classes to measure; with files: their names, in order")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in z, y, x (overrides the calibration stored in the files)")
    p.add_argument("--unit", metavar="UNIT",
                   help="length unit of --voxel-size, e.g. nm or micron (default: the files' unit)")
    p.add_argument("--threshold", "-t", type=float, metavar="T",
                   help="binarise non-binary masks (probability maps) as value > T, e.g. 0.5")
    p.add_argument("--components", choices=("auto", "3d", "2d"), default="auto",
                   help="3D objects, or 2D objects per slice; auto = 2d for a single image, 3d for a stack (default)")
    p.add_argument("--connectivity", type=int_range(1, 26), default=1, metavar="N",
                   help="object connectivity: 1 = faces (6 neighbours in 3D, 4 in 2D) … 3 = full (26); "
                        "6/18/26 or 4/8 accepted (default: 1)")
    p.add_argument("--min-voxels", type=int_range(0), default=0, metavar="N",
                   help="leave objects of fewer than N voxels out of the table (default: 0, keep all)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engine.data.files import atomic_write_text, check_writable
    from ..engine.data.volume_io import Calibration
    from ..engine.evaluation.evaluation import measure
    from ..errors import ConfigError, InputDataError

    out = Path(args.output)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--output {out.name} should be a .csv file; e.g. --output objects.csv")
    check_writable(out, args.overwrite)
    paths = [Path(m) for m in args.masks]
    for p in paths:
        if not p.exists():
            raise InputDataError(f"mask {p} does not exist; check the path")
    if len(paths) > 1 and any(p.is_dir() and p.suffix.lower() != ".zarr" for p in paths):
        raise InputDataError("give either one folder or a list of mask files to --masks, not both")
    calibration = None
    if args.voxel_size is not None:
        unit = args.unit
        if unit is None:
            cal = _file_calibration(paths[0])
            unit = cal.unit if cal.unit not in ("pixel", "pixels", "") else None
            if unit is None:
                raise ConfigError("--voxel-size needs a unit; add e.g. --unit nm or --unit micron")
        calibration = Calibration(tuple(args.voxel_size), unit)
    elif args.unit is not None:
        raise ConfigError("--unit needs --voxel-size; give both, e.g. --voxel-size 50 4.6 4.6 --unit nm")
    source: Any = paths[0] if len(paths) == 1 else paths
    table = measure(source, args.classes, calibration, threshold=args.threshold, components=args.components,
                    connectivity=args.connectivity, min_voxels=args.min_voxels)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"), args.overwrite)
    _print_summary(table)
    print(f"wrote {len(table)} objects to {out}")
    return 0


def _file_calibration(path: Any) -> Any:
    """Calibration of a mask file, or of the first mask of a folder."""
    from ..engine.data.volume_io import open_volume
    from ..engine.evaluation.evaluation import resolve_mask_set

    entries, _ = resolve_mask_set(path, "masks")
    with open_volume(entries[0].source) as vol:
        return vol.calibration


def _print_summary(table: Any) -> None:
    if table.empty:
        print("no object found")
        return
    size = "volume" if "volume" in table.columns else "area"
    unit = str(table["unit"].iloc[0])
    power = "³" if size == "volume" else "²"
    head = ("class", "objects", f"mean {size}", f"median {size}", f"total {size}")
    rows = []
    for name, g in table.groupby("class", sort=False):
        rows.append((str(name), str(len(g)), f"{g[size].mean():.4g}", f"{g[size].median():.4g}",
                     f"{g[size].sum():.4g}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))
          + f"   ({unit}{power})")
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
