"""High-level evaluation and measurement: what the command line and the Fiji layer call.

:func:`evaluate` compares two mask sets — a reference and a prediction, or two experts'
annotations for inter-expert agreement — class by class and returns an
:class:`EvaluationReport` of three tables (per-class summary, per-slice scores, per-object
categories). :func:`measure` turns masks into one table of calibrated object measurements.

**Mask sets.** Each may be given as

* a TIFF / ``.npy`` / zarr file: one class, named after the file (``mito.tif`` -> ``mito``);
* a folder: one file per class (``*.tif``, ``*.tiff``, ``*.npy``; hidden files ignored), the
  class name being the file name without extension;
* an array: (Z, Y, X) or (Y, X) is one class, (C, Z, Y, X) is C classes;
* a list of files/arrays (one class each) or a dict ``{class name: file or array}``.

**Matching rule.** When both sets are named by class (folders or dicts), classes are matched
by exact name: the classes evaluated are ``class_names`` if given, else every class of the
reference, and each must exist on both sides — otherwise the error names the missing class and
lists what the other folder holds. A single file against a folder picks the folder's mask of
the same class (``class_names[0]``, else the file's name). Otherwise (files, arrays, lists)
classes are matched by position, the names coming from ``class_names`` or the reference. Classes are read and
evaluated one at a time, so memory holds one class of each side at once.

Summary columns (one row per class, numbers only, never NaN): ``class``, ``f1``, ``iou``,
``precision``, ``recall``, ``accuracy`` (whole annotated volume), ``<metric>_slice_mean|std|min``
(over annotated slices), ``n_slices``, ``ref_voxels``, ``pred_voxels``, ``tp``, ``fp``, ``fn``,
``tn``, then, with object evaluation, ``ref_objects``, ``pred_objects``, ``detected``,
``under_detected``, ``missed``, ``false_positives``, ``detected_frac``,
``under_detected_frac``, ``missed_frac``, ``false_positive_frac``, ``matched``, ``pq``, ``sq``,
``rq``, ``aji``. Empty-case values are those of :mod:`.metrics` and :mod:`.objects`: both empty
-> 1.0; a zero denominator otherwise -> 0.0; fractions of zero objects -> 0.0.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...errors import ConfigError, EmsegWarning, InputDataError, OutputError
from ..data.components import check_components, normalize_connectivity
from ..data.files import atomic_write_text, check_writable
from ..data.sample import class_name_from_path, parse_slice_ranges
from ..data.volume_io import Calibration, read_volume
from .metrics import METRICS, SLICE_STATS, binarize, pixel_metrics
from .objects import OBJECT_COLUMNS, check_detection_thresholds, evaluate_objects

__all__ = [
    "EvaluationReport",
    "MaskSet",
    "evaluate",
    "measure",
    "resolve_mask_set",
    "pair_mask_sets",
    "CONVENTIONS",
    "SUMMARY_COLUMNS",
    "OBJECT_SUMMARY_COLUMNS",
]

#: What a mask set may be (see the module docstring).
MaskSet = Any

MASK_SUFFIXES = (".tif", ".tiff", ".npy")

#: Pixel-metric summary columns, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "class", *METRICS,
    *(f"{m}_slice_{s}" for m in METRICS for s in SLICE_STATS),
    "n_slices", "ref_voxels", "pred_voxels", "tp", "fp", "fn", "tn",
)
#: Object summary columns appended when objects are evaluated.
OBJECT_SUMMARY_COLUMNS: tuple[str, ...] = (
    "ref_objects", "pred_objects", "detected", "under_detected", "missed", "false_positives",
    "detected_frac", "under_detected_frac", "missed_frac", "false_positive_frac",
    "matched", "pq", "sq", "rq", "aji",
)

#: The empty-case conventions, written into every JSON report so the numbers explain themselves.
CONVENTIONS: dict[str, str] = {
    "empty": "a ratio with a zero denominator is 1.0 when reference and prediction are both empty, else 0.0",
    "precision": "0.0 when nothing is predicted but the reference is not empty",
    "recall": "0.0 when the reference is empty but something is predicted",
    "slice_stats": "over slices with annotated voxels; std is the population std (ddof=0)",
    "detection": "reference object detected if voxel recall > detected_above, missed if < missed_below, "
                 "else under_detected; a predicted object overlapping no reference object is a false positive",
    "fractions": "0.0 when there is no object to divide by",
    "pq": "matches are object pairs with IoU > 0.5; 1.0 when both sides have no object",
    "aji": "Kumar et al. 2017; unmatched reference objects add their size to the union; 1.0 when both sides are empty",
    "annotated": "voxels outside the annotated region are set to background in both masks before anything is counted",
    "slice": "slice indices are 0-based",
}

_FILES = {"summary": "evaluation_summary.csv", "per_slice": "evaluation_per_slice.csv",
          "objects": "evaluation_objects.csv", "json": "evaluation.json"}


# --------------------------------------------------------------------------- mask sets


@dataclass(frozen=True)
class _Entry:
    name: str
    source: Any  # path or array
    label: str  # how to call it in messages


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, Path))


def _folder_entries(folder: Path, role: str) -> list[_Entry]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MASK_SUFFIXES)
    entries: dict[str, _Entry] = {}
    for p in files:
        name = class_name_from_path(p)
        if name in entries:
            raise InputDataError(f"{role} folder {folder} holds two files for class {name!r} "
                                 f"({entries[name].source.name}, {p.name}); keep one per class")
        entries[name] = _Entry(name, p, p.name)
    if not entries:
        raise InputDataError(f"{role} folder {folder} holds no mask file (.tif, .tiff, .npy); "
                             "save one mask per class there, named after the class")
    return list(entries.values())


def resolve_mask_set(masks: MaskSet, role: str = "masks") -> tuple[list[_Entry], bool]:
    """List the classes of a mask set as (name, source) entries, and whether they are named
    by class (folder or dict) rather than by position."""
    if isinstance(masks, Mapping):
        if not masks:
            raise InputDataError(f"{role}: no class given")
        return [_Entry(str(k), v, f"{role} {k!r}") for k, v in masks.items()], True
    if _is_pathlike(masks):
        p = Path(masks)
        if not p.exists():
            raise InputDataError(f"{role}: {p} does not exist; check the path")
        if p.is_dir() and p.suffix.lower() != ".zarr":
            return _folder_entries(p, role), True
        return [_Entry(class_name_from_path(p), p, p.name)], False
    if isinstance(masks, np.ndarray) or (hasattr(masks, "shape") and hasattr(masks, "dtype")):
        arr = masks
        if len(arr.shape) == 4:
            return [_Entry(f"class_{i + 1}", arr[i], f"{role} class {i + 1}") for i in range(arr.shape[0])], False
        return [_Entry("class_1", arr, role)], False
    if isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        if not masks:
            raise InputDataError(f"{role}: no mask given")
        out = []
        for i, m in enumerate(masks):
            if _is_pathlike(m):
                p = Path(m)
                if p.is_dir() and p.suffix.lower() != ".zarr":
                    raise InputDataError(f"{role}: {p} is a folder; give either one folder or a list of mask files")
                out.append(_Entry(class_name_from_path(p), p, p.name))
            else:
                out.append(_Entry(f"class_{i + 1}", m, f"{role} class {i + 1}"))
        return out, False
    raise InputDataError(f"{role}: expected a file, a folder, an array or a list of them, got {type(masks).__name__}")


def _describe_names(entries: Sequence[_Entry]) -> str:
    return ", ".join(e.label if _is_pathlike(e.source) else e.name for e in entries) or "nothing"


def _select(entries: list[_Entry], names: Sequence[str], role: str, where: str) -> list[_Entry]:
    by_name = {e.name: e for e in entries}
    out = []
    for n in names:
        if n not in by_name:
            raise InputDataError(
                f"class {n!r} has no mask in the {role} {where} (it has: {_describe_names(entries)}); "
                f"add {n}.tif there, or choose the classes to use (--classes)")
        out.append(by_name[n])
    return out


def _where(masks: MaskSet) -> str:
    return f"folder {masks}" if _is_pathlike(masks) else "set"


def pair_mask_sets(reference: MaskSet, prediction: MaskSet,
                   class_names: Sequence[str] | None = None) -> list[tuple[str, _Entry, _Entry]]:
    """Pair the classes of two mask sets by the module's matching rule; (name, ref, pred) each."""
    ref, ref_named = resolve_mask_set(reference, "reference")
    pred, pred_named = resolve_mask_set(prediction, "prediction")
    names = [str(c) for c in class_names] if class_names else None
    if names is not None and len(set(names)) != len(names):
        raise ConfigError(f"class names must be unique, got {names}")
    if ref_named and pred_named:
        wanted = names or [e.name for e in ref]
        return [(n, r, p) for n, r, p in zip(wanted, _select(ref, wanted, "reference", _where(reference)),
                                            _select(pred, wanted, "prediction", _where(prediction)), strict=True)]
    if ref_named != pred_named and len(pred if ref_named else ref) == 1 and (not names or len(names) == 1):
        single = pred[0] if ref_named else ref[0]
        wanted = names or [single.name]
        if ref_named:
            return [(wanted[0], _select(ref, wanted, "reference", _where(reference))[0], single)]
        return [(wanted[0], single, _select(pred, wanted, "prediction", _where(prediction))[0])]
    if ref_named != pred_named:
        raise InputDataError("give the reference and the prediction in the same form: two folders (classes "
                             "matched by file name) or files/arrays in the same order")
    if len(ref) != len(pred):
        raise InputDataError(f"the reference has {len(ref)} classes but the prediction has {len(pred)}; "
                             "give one prediction per reference mask, in the same order")
    if names is not None and len(names) != len(ref):
        raise ConfigError(f"{len(names)} class names given for {len(ref)} masks; give one name per mask")
    wanted = names or [e.name for e in ref]
    return list(zip(wanted, ref, pred, strict=True))


def _zyx(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape) + " (Z×Y×X)"


def _read(entry: _Entry, calibration: Calibration | None = None) -> tuple[np.ndarray, Calibration]:
    arr, cal = read_volume(entry.source, calibration)
    return arr, cal


def _load_region(annotated: Any, annotated_slices: str | Sequence[int] | None,
                 shape: tuple[int, int, int]) -> tuple[np.ndarray | None, str]:
    region: np.ndarray | None = None
    desc = "all voxels"
    if annotated is not None:
        arr, _ = read_volume(annotated)
        if arr.shape != shape:
            raise InputDataError(f"annotated-region mask has shape {_zyx(arr.shape)} but the masks have {_zyx(shape)}; "
                                 "use a region mask of the same image")
        region = binarize(arr, "annotated region").view(bool)
        desc = str(annotated) if _is_pathlike(annotated) else "mask"
    if annotated_slices is not None and not (isinstance(annotated_slices, str) and not annotated_slices.strip()):
        sl = parse_slice_ranges(annotated_slices, shape[0])
        by_slice = np.zeros(shape, dtype=bool)
        by_slice[sl] = True
        region = by_slice if region is None else (region & by_slice)
        spec = annotated_slices if isinstance(annotated_slices, str) else ",".join(map(str, sl))
        desc = f"slices {spec}" if desc == "all voxels" else f"{desc} ∩ slices {spec}"
    if region is not None and not region.any():
        raise InputDataError("the annotated region is empty; mark at least one annotated slice or region")
    return region, desc


# --------------------------------------------------------------------------- report


def _clean_number(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"non-finite number {v} in a report")  # a bug: every empty case is defined
    return v


def _records(df: Any) -> list[dict[str, Any]]:
    return [{k: _clean_number(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate`: three tables and the settings that produced them.

    ``summary``: one row per class (see module docstring); ``per_slice``: one row per (class,
    annotated slice) with ``class``, ``slice`` (0-based), the five metrics, confusion counts and
    ``both_empty``; ``objects``: one row per reference and predicted object with its category.
    """

    summary: Any
    per_slice: Any
    objects: Any
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: settings, conventions and the three tables as lists of records."""
        return {
            "fiji_emseg_version": __version__,
            "settings": self.settings,
            "conventions": dict(CONVENTIONS),
            "summary": _records(self.summary),
            "per_slice": _records(self.per_slice),
            "objects": _records(self.objects),
        }

    def save(self, folder: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the three CSV tables and the JSON report into ``folder`` (created if needed).

        Every target is checked before anything is written, and each file is written
        atomically, so an existing report is never half-replaced.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder} is a file, not a folder; choose a folder for the evaluation report")
        paths = {k: folder / v for k, v in _FILES.items()}
        for p in paths.values():
            check_writable(p, overwrite)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        written = []
        for key in ("summary", "per_slice", "objects"):
            df = getattr(self, key)
            written.append(atomic_write_text(paths[key], df.to_csv(index=False, float_format="%.6g",
                                                                    lineterminator="\n"), overwrite))
        written.append(atomic_write_text(paths["json"], text, overwrite))
        return written

    def format_table(self) -> str:
        """A short aligned text table of the main numbers, one line per class."""
        return format_summary(self.summary)


def format_summary(summary: Any) -> str:
    """Aligned plain-text table of the key summary columns."""
    has_obj = "pq" in summary.columns
    head = ["class", "F1", "IoU", "prec", "recall", "F1/slice (mean±sd)"]
    if has_obj:
        head += ["objects", "detect", "under", "missed", "FP", "PQ", "AJI"]
    rows = []
    for _, r in summary.iterrows():
        row = [str(r["class"]), f"{r['f1']:.3f}", f"{r['iou']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
               f"{r['f1_slice_mean']:.3f}±{r['f1_slice_std']:.3f}"]
        if has_obj:
            row += [f"{int(r['ref_objects'])}", f"{int(r['detected'])}", f"{int(r['under_detected'])}",
                    f"{int(r['missed'])}", f"{int(r['false_positives'])}", f"{r['pq']:.3f}", f"{r['aji']:.3f}"]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


# --------------------------------------------------------------------------- evaluate


def evaluate(reference: MaskSet, prediction: MaskSet, *,
             class_names: Sequence[str] | None = None,
             annotated: Any = None,
             annotated_slices: str | Sequence[int] | None = None,
             threshold: float | None = None,
             components: str = "3d",
             connectivity: int = 1,
             detected_above: float = 0.8,
             missed_below: float = 0.1,
             iou_threshold: float = 0.5,
             skip_empty_slices: bool = False,
             objects: bool = True) -> EvaluationReport:
    """Compare two mask sets class by class (see the module docstring for inputs and columns).

    ``annotated`` (bool mask, file or array) and/or ``annotated_slices`` ('0-11,14', 0-based)
    restrict every count to the annotated region. ``threshold`` binarises inputs that are not
    already binary (foreground = value > threshold); without it a probability map is refused.
    ``components`` '3d' or '2d' and ``connectivity`` (1..3 or 6/18/26, 4/8) define objects;
    ``objects=False`` skips the object evaluation (pixel metrics only).
    """
    import pandas as pd

    comp = check_components(components)
    normalize_connectivity(connectivity, 3 if comp == "3d" else 2)
    d_above, m_below = check_detection_thresholds(detected_above, missed_below)
    if not 0.5 <= float(iou_threshold) < 1.0:
        raise ConfigError(f"the PQ matching IoU must be in [0.5, 1) so that matches are unique, got {iou_threshold}")
    pairs = pair_mask_sets(reference, prediction, class_names)
    region: np.ndarray | None = None
    region_desc = "all voxels"
    shape: tuple[int, int, int] | None = None
    summary_rows: list[dict[str, Any]] = []
    slice_tables: list[Any] = []
    object_tables: list[Any] = []
    for name, ref_entry, pred_entry in pairs:
        ref_raw, _ = _read(ref_entry)
        ref = binarize(ref_raw, ref_entry.label, threshold)
        del ref_raw
        pred_raw, _ = _read(pred_entry)
        if pred_raw.shape != ref.shape:
            raise InputDataError(
                f"class {name!r}: prediction {pred_entry.label} has shape {_zyx(pred_raw.shape)} but the reference "
                f"{ref_entry.label} has {_zyx(ref.shape)}; compare masks of the same image")
        pred = binarize(pred_raw, pred_entry.label, threshold)
        del pred_raw
        if shape is None:
            shape = ref.shape  # type: ignore[assignment]
            region, region_desc = _load_region(annotated, annotated_slices, shape)  # type: ignore[arg-type]
        elif ref.shape != shape:
            raise InputDataError(f"class {name!r} has shape {_zyx(ref.shape)} but the first class has {_zyx(shape)}; "
                                 "evaluate masks of one image at a time")
        if region is not None:
            # restrict to the annotated region; arrays given by the caller are copied, never modified
            if not (_is_pathlike(ref_entry.source) and ref.flags.writeable):
                ref = np.array(ref, dtype=np.uint8, copy=True)
            if not (_is_pathlike(pred_entry.source) and pred.flags.writeable):
                pred = np.array(pred, dtype=np.uint8, copy=True)
            ref &= region
            pred &= region
        pm = pixel_metrics(ref, pred, region, skip_empty_slices=skip_empty_slices)
        if pm.counts["ref_voxels"] == 0:
            warnings.warn(f"class {name!r}: the reference is empty in the annotated region; its scores only say "
                          "whether the prediction is empty too", EmsegWarning, stacklevel=2)
        row: dict[str, Any] = {"class": name, **pm.summary_row()}
        per = pm.per_slice
        per.insert(0, "class", name)
        slice_tables.append(per)
        if objects:
            oe = evaluate_objects(ref, pred, components=comp, connectivity=connectivity,
                                  detected_above=d_above, missed_below=m_below, iou_threshold=iou_threshold)
            row.update(oe.summary)
            tab = oe.table
            tab.insert(0, "class", name)
            object_tables.append(tab)
        summary_rows.append(row)
        del ref, pred
    columns = list(SUMMARY_COLUMNS) + (list(OBJECT_SUMMARY_COLUMNS) if objects else [])
    summary = pd.DataFrame(summary_rows, columns=columns)
    per_slice = pd.concat(slice_tables, ignore_index=True)
    obj_tables = [t for t in object_tables if len(t)]
    objects_df = (pd.concat(obj_tables, ignore_index=True) if obj_tables
                  else pd.DataFrame(columns=["class", *OBJECT_COLUMNS]))
    settings = {
        "reference": _describe_source(reference),
        "prediction": _describe_source(prediction),
        "classes": [p[0] for p in pairs],
        "shape_zyx": list(shape) if shape else None,
        "annotated": region_desc,
        "annotated_voxels": int(np.count_nonzero(region)) if region is not None else int(np.prod(shape or (0,))),
        "threshold": threshold,
        "components": comp,
        "connectivity": int(connectivity),
        "detected_above": d_above,
        "missed_below": m_below,
        "iou_threshold": float(iou_threshold),
        "skip_empty_slices": bool(skip_empty_slices),
        "objects": bool(objects),
    }
    return EvaluationReport(summary, per_slice, objects_df, settings)


def _describe_source(masks: MaskSet) -> Any:
    if _is_pathlike(masks):
        return str(masks)
    if isinstance(masks, Mapping):
        return {str(k): (str(v) if _is_pathlike(v) else "<array>") for k, v in masks.items()}
    if isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        return [str(m) if _is_pathlike(m) else "<array>" for m in masks]
    return "<array>"


# --------------------------------------------------------------------------- measure


def measure(masks: MaskSet, class_names: Sequence[str] | None = None, calibration: Calibration | None = None, *,
            threshold: float | None = None, components: str = "auto", connectivity: int = 1,
            min_voxels: int = 0, smoothing: int | None = None) -> Any:
    """One table of object measurements for every class of a mask set (see
    :mod:`.morphometrics` for the columns).

    ``calibration`` overrides the voxel size read from each file (arrays default to 1 pixel).
    With a folder, ``class_names`` selects classes by name; otherwise it names the masks in order.
    ``smoothing``: Taubin passes for surfaces and perimeters (default
    :data:`~.morphometrics.SMOOTHING_ITERATIONS`; 0 = raw marching cubes).
    """
    import pandas as pd

    from .morphometrics import COLUMNS_2D, COLUMNS_3D, SMOOTHING_ITERATIONS, measure_objects

    entries, named = resolve_mask_set(masks, "masks")
    if class_names:
        names = [str(c) for c in class_names]
        if named:
            entries = _select(entries, names, "masks", _where(masks))
        elif len(names) != len(entries):
            raise ConfigError(f"{len(names)} class names given for {len(entries)} masks; give one name per mask")
        else:
            entries = [_Entry(n, e.source, e.label) for n, e in zip(names, entries, strict=True)]
    tables = []
    for e in entries:
        raw, cal = _read(e)
        mask = binarize(raw, e.label, threshold)
        del raw
        tables.append(measure_objects(mask, calibration or cal, class_name=e.name, components=components,
                                      connectivity=connectivity, min_voxels=min_voxels,
                                      smoothing=SMOOTHING_ITERATIONS if smoothing is None else smoothing))
    non_empty = [t for t in tables if len(t)]
    if non_empty:
        return pd.concat(non_empty, ignore_index=True)
    return tables[0] if tables else pd.DataFrame(columns=list(COLUMNS_3D if components != "2d" else COLUMNS_2D))
