"""Import and export of DeepSCEM's HDF5 datasets, so DeepSCEM users can bring their data.

Layout (DeepSCEM's ``data.py``): root attributes ``name`` (str) and ``labels`` (number of
classes), optionally ``labels_aliases`` (class names); one group per sample with attribute
``shape`` = [Z, Y, X] holding ``image`` (float32, min-max normalised per sample) and
``label_0000``, ``label_0001``, … (uint8 0/1) or, for predictions, ``prediction_0000``, ….

Differences from DeepSCEM, all compatible with it: input files are only ever opened read-only
(DeepSCEM opens them for appending); a constant image is written as zeros rather than NaN; the
voxel calibration is kept as two extra sample attributes (``voxel_size``, ``unit``), which
DeepSCEM ignores. No extra datasets are ever added to a sample group, because DeepSCEM refuses
groups holding anything but ``image`` and labels.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, EmsegWarning, InputDataError
from .files import atomic_path, check_writable
from .sample import Sample, as_binary_mask, check_finite, check_image_dtype
from .volume_io import Calibration

__all__ = [
    "DeepscemInfo",
    "DeepscemSampleInfo",
    "deepscem_normalize",
    "default_class_names",
    "read_deepscem_dataset",
    "read_deepscem_info",
    "write_deepscem_dataset",
]

_LABEL = re.compile(r"^label_(\d+)$")
_PREDICTION = re.compile(r"^prediction_(\d+)$")
_SLAB_VOXELS = 1 << 24  # normalise and write images in slabs of about 64 MB of float32


@dataclass(frozen=True)
class DeepscemSampleInfo:
    """One sample of a DeepSCEM file, described without reading its arrays."""

    name: str
    shape: tuple[int, int, int]
    n_labels: int
    n_predictions: int


@dataclass(frozen=True)
class DeepscemInfo:
    """Summary of a DeepSCEM file: dataset name, class count and names, samples."""

    path: Path
    name: str
    labels: int
    aliases: tuple[str, ...] | None
    samples: tuple[DeepscemSampleInfo, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The aliases when the file has them, else DeepSCEM's own dataset names."""
        return self.aliases if self.aliases is not None else default_class_names(self.labels)

    def format(self) -> str:
        head = (f"{self.path.name}: DeepSCEM dataset {self.name!r}, {self.labels} classes "
                f"{list(self.class_names)}, {len(self.samples)} samples")
        lines = [head]
        for s in self.samples:
            pred = f", {s.n_predictions} predictions" if s.n_predictions else ""
            lines.append(f"  {s.name}: {'×'.join(map(str, s.shape))} (Z×Y×X), {s.n_labels} labels{pred}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def read_deepscem_info(path: str | os.PathLike[str]) -> DeepscemInfo:
    """Name, classes and samples of a DeepSCEM file; cheap, reads no image or label data."""
    path = Path(path)
    with _open(path) as f:
        name, labels, aliases = _root_attrs(f, path)
        samples = tuple(
            DeepscemSampleInfo(key, _shape_attr(group, path, key),
                               len(_numbered(group, _LABEL)), len(_numbered(group, _PREDICTION)))
            for key, group in _sample_groups(f))
    return DeepscemInfo(path, name, labels, aliases, samples)


def read_deepscem_dataset(path: str | os.PathLike[str], *, predictions: bool = False,
                          threshold: float | None = None,
                          samples: Sequence[str] | None = None) -> list[Sample]:
    """Read every sample (or the named *samples*) of a DeepSCEM file as :class:`Sample` objects.

    Masks come from ``label_NNNN`` or, with ``predictions=True``, from ``prediction_NNNN``;
    probability maps need a *threshold* (foreground = value > threshold). Class names are the
    file's ``labels_aliases`` when present, else ``label_0000``, ``label_0001``, ….
    """
    path = Path(path)
    if threshold is not None and not 0 <= threshold < 1:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    pattern, kind = (_PREDICTION, "prediction") if predictions else (_LABEL, "label")
    out: list[Sample] = []
    with _open(path) as f:
        _, labels, aliases = _root_attrs(f, path)
        groups = dict(_sample_groups(f))
        if not groups:
            raise InputDataError(f"{path} contains no samples; add samples in DeepSCEM or with 'emseg convert'")
        wanted = list(groups) if samples is None else list(samples)
        missing = [s for s in wanted if s not in groups]
        if missing:
            raise InputDataError(f"{path} has no sample {missing[0]!r}; its samples are {list(groups)}")
        if predictions and not any(_numbered(g, _PREDICTION) for g in groups.values()):
            raise InputDataError(f"{path} holds no predictions (prediction_0000, …); read its labels instead "
                                 "(leave out --predictions)")
        class_names = aliases if aliases is not None else default_class_names(labels)
        for key in wanted:
            out.append(_read_sample(path, key, groups[key], pattern, kind, labels, class_names, threshold))
    return out


def default_class_names(n: int) -> tuple[str, ...]:
    """Class names of a file without ``labels_aliases``: DeepSCEM's label dataset names.

    Predictions get the same names as labels so that exported folders match class by class.
    """
    return tuple(f"label_{i:04d}" for i in range(n))


def _read_sample(path: Path, key: str, group: Any, pattern: re.Pattern[str], kind: str, labels: int,
                 class_names: tuple[str, ...], threshold: float | None) -> Sample:
    where = f"{path.name}:{key}"
    shape = _shape_attr(group, path, key)
    if "image" not in group or not _is_dataset(group["image"]):
        raise InputDataError(
            f"{where} has no 'image' dataset; add the sample again in DeepSCEM or with 'emseg convert'")
    image = np.asarray(group["image"][()])
    if image.shape != shape:
        raise InputDataError(f"{where}: image shape {_zyx(image.shape)} does not match the sample's shape "
                             f"attribute {_zyx(shape)}; the file is damaged — export the dataset again from DeepSCEM")
    check_image_dtype(image.dtype, f"{where}/image")
    check_finite(image, f"{where}/image")
    names = _numbered(group, pattern, where, kind)
    unknown = [k for k in group if k != "image" and not _LABEL.fullmatch(k) and not _PREDICTION.fullmatch(k)]
    if unknown and (not names or any(not k.isprintable() for k in unknown)):
        raise InputDataError(
            f"{where} holds entries {[str(k) for k in unknown][:3]} that are neither {kind}s nor the image, so its "
            f"{kind}s cannot be trusted (the file is damaged?); copy it again or export the dataset again")
    masks = None
    if names:
        expected = labels if labels > 0 or kind == "label" else len(names)
        if len(names) != expected:
            raise InputDataError(
                f"{where} has {len(names)} {kind}s ({', '.join(names)}) but the dataset declares labels = {labels}; "
                f"give every sample one {kind} per class (fix the sample in DeepSCEM)")
        masks = np.empty((len(names), *shape), dtype=np.uint8)
        for c, dname in enumerate(names):
            arr = np.asarray(group[dname][()])
            if arr.shape != shape:
                raise InputDataError(f"{where}/{dname}: shape {_zyx(arr.shape)} does not match the image "
                                     f"{_zyx(shape)}; the file is damaged — export the dataset again from DeepSCEM")
            masks[c] = _binary(arr, f"{where}/{dname}", kind, threshold)
        if len(class_names) != len(names):  # a prediction-only file declaring labels = 0
            class_names = default_class_names(len(names))
    return Sample(name=key, image=image, masks=masks, class_names=class_names if masks is not None else (),
                  calibration=_calibration(group))


def _binary(arr: np.ndarray, where: str, kind: str, threshold: float | None) -> np.ndarray:
    if threshold is not None and arr.dtype.kind == "f":
        return (arr > threshold).astype(np.uint8)
    try:
        return as_binary_mask(arr, where)
    except InputDataError:
        if kind == "prediction" and arr.dtype.kind == "f":
            raise InputDataError(f"{where} is a probability map, not a binary mask; give a threshold "
                                 "(threshold=0.5, --threshold 0.5)") from None
        raise


#: Reading every attribute of a sound file takes milliseconds, whatever its size.
METADATA_TIMEOUT_S = 20.0

def _read_all_attributes(path: Path) -> None:
    import h5py

    def attrs(obj: Any) -> None:
        for k in obj.attrs:
            obj.attrs[k]

    with h5py.File(path, "r") as f:
        attrs(f)
        f.visititems(lambda name, obj: attrs(obj))


def _probe_metadata(path: Path, timeout: float | None = None) -> None:
    """Read all attributes in a child process first: a damaged file can make libhdf5 loop for ever.

    Fuzzing found a variable-length string attribute whose damaged heap entry kept libhdf5
    busy without end, in C code that no signal interrupts. A forked child (h5py already
    imported, so it costs milliseconds) reads every attribute; it is killed after the time limit
    and the file refused in one line. Any other failure of the child is left to the real read,
    which turns it into its own precise message.
    """
    import signal
    import time

    limit = METADATA_TIMEOUT_S if timeout is None else timeout
    if not hasattr(os, "fork"):
        return
    import h5py  # noqa: F401 - imported before the fork so that the child starts at once

    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            _read_all_attributes(path)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + limit
    delay = 0.0005
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise InputDataError(
                f"cannot read {path}: reading its HDF5 attributes did not finish in {limit:g} s, so the file is damaged; "
                "copy it again or export the dataset again")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Any]:
    """Open read-only (never 'a' as DeepSCEM does); damaged files become one-line errors."""
    import h5py

    if not path.exists():
        raise InputDataError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise InputDataError(f"{path} is a folder; give a DeepSCEM .hdf5 file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise InputDataError(f"{path} is not an HDF5 file; give a DeepSCEM dataset (.hdf5) exported by DeepSCEM "
                             "or 'emseg convert'")
    _probe_metadata(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(f"cannot open {path}: damaged HDF5 file ({exc}); copy it again or re-export it") from exc
    try:
        yield f
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # h5py's errors for damaged objects, attributes and data
        raise InputDataError(f"cannot read {path}: damaged HDF5 file ({exc}); copy it again or re-export it") from exc
    finally:
        f.close()


def _root_attrs(f: Any, path: Path) -> tuple[str, int, tuple[str, ...] | None]:
    for attr in ("name", "labels"):
        if attr not in f.attrs:
            raise InputDataError(
                f"{path} is not a DeepSCEM dataset: the root attribute {attr!r} is missing; "
                "create the dataset in DeepSCEM or with 'emseg convert'")
    name = _as_text(f.attrs["name"])
    raw = np.asarray(f.attrs["labels"])
    if raw.size != 1 or raw.dtype.kind not in "uif" or float(raw.item()) != int(raw.item()) or raw.item() < 0:
        raise InputDataError(f"{path}: the root attribute 'labels' must be the number of classes, got {raw.tolist()!r}")
    labels = int(raw.item())
    aliases = None
    if "labels_aliases" in f.attrs:
        aliases = _aliases(f.attrs["labels_aliases"], labels, path)
    return name, labels, aliases


def _aliases(raw: Any, labels: int, path: Path) -> tuple[str, ...]:
    if isinstance(raw, (str, bytes)):
        text = _as_text(raw)
        names = [text] if labels <= 1 else [t.strip() for t in text.split(",")]
    else:
        names = [_as_text(v) for v in np.asarray(raw).reshape(-1)]
    if len(names) != labels:
        raise InputDataError(f"{path}: labels_aliases names {len(names)} classes {names} but labels = {labels}; "
                             "give one name per class")
    if len(set(names)) != len(names):
        raise InputDataError(f"{path}: labels_aliases {names} repeats a class name; class names must be unique")
    return tuple(names)


def _as_text(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _sample_groups(f: Any) -> Iterator[tuple[str, Any]]:
    import h5py

    for key in f:
        if "SFS_TRANSITION" in key:  # DeepSCEM's own scratch entries
            continue
        obj = f[key]  # not f.get(): a damaged entry must fail, not vanish with its sample
        if isinstance(obj, h5py.Group):
            yield key, obj


def _is_dataset(obj: Any) -> bool:
    import h5py

    return isinstance(obj, h5py.Dataset)


def _shape_attr(group: Any, path: Path, key: str) -> tuple[int, int, int]:
    if "shape" not in group.attrs:
        raise InputDataError(f"{path.name}:{key} has no 'shape' attribute; the sample is not in DeepSCEM's "
                             "layout — add it again in DeepSCEM or with 'emseg convert'")
    raw = np.asarray(group.attrs["shape"]).reshape(-1)
    if len(raw) != 3 or raw.dtype.kind not in "ui" or (raw < 1).any():
        raise InputDataError(f"{path.name}:{key}: the 'shape' attribute must be [Z, Y, X], got {raw.tolist()}")
    return tuple(int(v) for v in raw)  # type: ignore[return-value]


def _numbered(group: Any, pattern: re.Pattern[str], where: str = "", kind: str = "") -> list[str]:
    """Dataset names such as label_0000, label_0001 … in class order; gaps are an error."""
    found = sorted((int(m.group(1)), k) for k in group if (m := pattern.match(k)) and _is_dataset(group[k]))
    if where and [i for i, _ in found] != list(range(len(found))):
        raise InputDataError(f"{where}: {kind}s are numbered {[k for _, k in found]}, not from 0 without gaps; "
                             "the file is damaged — export the dataset again from DeepSCEM")
    return [k for _, k in found]


def _calibration(group: Any) -> Calibration:
    vs, unit = group.attrs.get("voxel_size"), group.attrs.get("unit")
    if vs is None:
        return Calibration()
    try:
        return Calibration(tuple(float(v) for v in np.asarray(vs).reshape(-1)),  # type: ignore[arg-type]
                           _as_text(unit) if unit is not None else "pixel")
    except (InputDataError, TypeError, ValueError):
        return Calibration()  # a foreign attribute of the same name: calibration is optional


def _zyx(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape) + " (Z×Y×X)"


# --------------------------------------------------------------------------- writing


def deepscem_normalize(image: Any) -> np.ndarray:
    """Min-max normalise to float32 [0, 1] with exactly DeepSCEM's arithmetic.

    DeepSCEM computes ``(x - x.min()) / (x.max() - x.min())`` on the float32 image; a constant
    image (where DeepSCEM divides by zero and stores NaN) becomes zeros.
    """
    data = np.asarray(image).astype(np.float32)
    lo, hi = data.min(), data.max()
    if hi == lo:
        return np.zeros_like(data)
    return (data - lo) / (hi - lo)


def write_deepscem_dataset(path: str | os.PathLike[str], samples: Sequence[Sample], name: str | None = None,
                           overwrite: bool = False, predictions: Mapping[str, Any] | None = None, *,
                           compression: str | None = None) -> Path:
    """Write *samples* as a DeepSCEM dataset file, atomically; an existing file is kept unless *overwrite*.

    ``predictions`` maps sample names to (C, Z, Y, X) or (Z, Y, X) arrays stored as
    ``prediction_NNNN`` (float probabilities as float32, binary masks as uint8).
    ``compression="gzip"`` shrinks the file (DeepSCEM reads it; it writes uncompressed itself).
    """
    import h5py

    path = check_writable(path, overwrite)
    samples = list(samples)
    if not samples:
        raise InputDataError(f"no samples to write to {path}; give at least one image")
    if compression not in (None, "gzip"):
        raise ConfigError(f"compression must be None or 'gzip', got {compression!r}")
    class_names = _common_classes(samples)
    preds = _check_predictions(samples, predictions or {}, class_names)
    labels = len(class_names) if class_names is not None else (
        next(iter(preds.values())).shape[0] if preds else 0)
    for s in samples:
        if s.annotated is not None and s.masks is not None and not s.annotated.all():
            warnings.warn(
                f"sample {s.name!r} has an annotated region, which DeepSCEM cannot store: its unannotated voxels "
                "are written as background; write only the annotated slices (Sample.subset) to avoid that",
                EmsegWarning, stacklevel=2)
    ds_opts: dict[str, Any] = {"compression": "gzip", "compression_opts": 1} if compression else {}
    with atomic_path(path, overwrite) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.attrs["name"] = str(name if name is not None else path.stem)
        f.attrs["labels"] = np.int64(labels)
        if class_names:
            f.attrs["labels_aliases"] = np.array(class_names, dtype=h5py.string_dtype())
        for s in samples:
            g = f.create_group(s.name)
            g.attrs["shape"] = np.array(s.shape, dtype=np.int64)
            if s.calibration.is_calibrated:
                g.attrs["voxel_size"] = np.array(s.calibration.voxel_size, dtype=np.float64)
                g.attrs["unit"] = s.calibration.unit
            _write_image(g, s.image, ds_opts)
            if s.masks is not None:
                for c, mask in enumerate(s.masks):
                    g.create_dataset(f"label_{c:04d}", data=mask, **_chunked(mask.shape, ds_opts))
            for c, pred in enumerate(preds.get(s.name, ())):
                g.create_dataset(f"prediction_{c:04d}", data=pred, **_chunked(pred.shape, ds_opts))
    return path


def _common_classes(samples: Sequence[Sample]) -> tuple[str, ...] | None:
    seen: set[str] = set()
    for s in samples:
        if not s.name or "/" in s.name or s.name in (".", ".."):
            raise InputDataError(f"sample name {s.name!r} cannot be an HDF5 group name; "
                                 "give a name without '/' (e.g. the image file name)")
        if s.name in seen:
            raise InputDataError(f"two samples are named {s.name!r}; give every sample its own name")
        seen.add(s.name)
    labelled = [s for s in samples if s.masks is not None]
    if not labelled:
        return None
    first = labelled[0]
    for s in labelled[1:]:
        if s.class_names != first.class_names:
            raise InputDataError(
                f"samples {first.name!r} and {s.name!r} have different classes {list(first.class_names)} vs "
                f"{list(s.class_names)}; a DeepSCEM dataset needs the same classes in the same order in every sample")
    return first.class_names


def _check_predictions(samples: Sequence[Sample], predictions: Mapping[str, Any],
                       class_names: tuple[str, ...] | None) -> dict[str, np.ndarray]:
    by_name = {s.name: s for s in samples}
    out: dict[str, np.ndarray] = {}
    for key, value in predictions.items():
        if key not in by_name:
            raise InputDataError(f"prediction given for {key!r}, which is not one of the samples {list(by_name)}")
        arr = np.asarray(value)
        arr = arr[None] if arr.ndim == 3 else arr
        shape = by_name[key].shape
        if arr.ndim != 4 or arr.shape[1:] != shape:
            raise InputDataError(f"prediction for {key!r} has shape {arr.shape}; expected (classes, {_zyx(shape)})")
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        else:
            arr = np.stack([as_binary_mask(p, f"prediction for {key!r}") for p in arr])
        out[key] = arr
    counts = {a.shape[0] for a in out.values()} | ({len(class_names)} if class_names is not None else set())
    if len(counts) > 1:
        raise InputDataError(f"predictions and labels disagree on the number of classes ({sorted(counts)}); "
                             "give one prediction per class")
    return out


def _chunked(shape: tuple[int, ...], ds_opts: dict[str, Any]) -> dict[str, Any]:
    return {**ds_opts, "chunks": (1, *shape[1:])} if ds_opts else {}


def _write_image(group: Any, image: np.ndarray, ds_opts: dict[str, Any]) -> None:
    """Normalise slab by slab (bounded memory) with the same float32 arithmetic as DeepSCEM."""
    ds = group.create_dataset("image", shape=image.shape, dtype=np.float32, **_chunked(image.shape, ds_opts))
    per_slab = max(1, _SLAB_VOXELS // max(1, image.shape[1] * image.shape[2]))
    lo = hi = None
    for z in range(0, image.shape[0], per_slab):
        slab = image[z:z + per_slab].astype(np.float32)
        lo = slab.min() if lo is None else min(lo, slab.min())
        hi = slab.max() if hi is None else max(hi, slab.max())
    assert lo is not None and hi is not None
    for z in range(0, image.shape[0], per_slab):
        slab = image[z:z + per_slab].astype(np.float32)
        ds[z:z + per_slab] = np.zeros_like(slab) if hi == lo else (slab - lo) / (hi - lo)
