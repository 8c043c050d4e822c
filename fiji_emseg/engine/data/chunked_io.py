"""Reading chunked volumes: OME-Zarr (NGFF 0.4 and 0.5), plain zarr v2/v3 arrays and N5.

Why a separate module: these formats store volumes far larger than memory, so they are only
ever opened lazily (a :class:`~fiji_emseg.engine.volume_io.LazyVolume` over the stored array)
and their metadata decides what the volume *is*: which scale level, which axes, which voxel
size. OME-Zarr metadata is parsed and validated by ``ome-zarr-models`` and N5 is read by
TensorStore's N5 driver (zarr 3 no longer reads N5), so no file format is hand-parsed here.

Axis rules: the model predicts single-channel (Z, Y, X) stacks. Channel and time axes of size
one are dropped; larger ones are refused with the fix (extract one channel / time point).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputDataError
from .volume_io import Calibration, LazyVolume

__all__ = ["is_n5", "is_zarr", "ome_levels", "open_chunked"]

#: Units as NGFF spells them -> ImageJ's spelling (what Calibration and TIFF use).
_NGFF_TO_IJ = {"micrometer": "micron", "um": "micron", "µm": "micron", "\u03bcm": "micron", "nanometer": "nm", "millimeter": "mm", "angstrom": "Å", "meter": "m"}
_IJ_TO_NGFF = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer", "nm": "nanometer", "mm": "millimeter",
               "Å": "angstrom", "m": "meter"}

#: N5 compressions TensorStore's N5 driver decodes.
N5_COMPRESSIONS = ("raw", "gzip", "bzip2", "xz", "blosc", "zstd")


def ngff_unit(unit: str) -> str | None:
    """The NGFF (UDUNITS-2) spelling of an ImageJ unit, or None for uncalibrated pixels."""
    if unit in ("pixel", "pixels", ""):
        return None
    return _IJ_TO_NGFF.get(unit, unit)


def ij_unit(unit: str | None) -> str:
    return "pixel" if not unit else _NGFF_TO_IJ.get(unit, unit)


def is_n5(path: Path) -> bool:
    if path.suffix.lower() == ".n5":
        return True
    attrs = path / "attributes.json"
    if path.is_dir() and attrs.is_file():
        try:
            d = json.loads(attrs.read_text())
        except (OSError, ValueError):
            return False
        return "n5" in d or "dimensions" in d
    return False


def is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or (
        path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup")))


# ----------------------------------------------------------------------------- OME-Zarr


def _ome_image(group: Any, path: Path) -> Any | None:
    """The validated ome-zarr-models Image of *group*, None when it has no multiscales metadata."""
    attrs = dict(group.attrs)
    if "multiscales" in attrs:
        from ome_zarr_models.v04 import Image
    elif "multiscales" in (attrs.get("ome") or {}):
        from ome_zarr_models.v05 import Image
    else:
        return None
    try:
        return Image.from_zarr(group)
    except Exception as exc:  # pydantic ValidationError and zarr errors: the metadata is not valid NGFF
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else type(exc).__name__)
        raise InputDataError(f"{path}: its OME-Zarr metadata is not valid NGFF ({detail}); re-save it "
                             "(Fiji: File > Save As > HDF5/N5/Zarr/OME-NGFF, or 'emseg convert')") from exc


def _multiscale(image: Any) -> Any:
    attrs = image.attributes
    ms = attrs.multiscales if hasattr(attrs, "multiscales") else attrs.ome.multiscales
    return ms[0]


def ome_levels(path: str | Path) -> list[dict[str, Any]]:
    """Per scale level of an OME-Zarr image: path, shape and the (z, y, x) voxel size."""
    import zarr

    p = Path(path)
    group = zarr.open_group(str(p), mode="r")
    image = _ome_image(group, p)
    if image is None:
        raise InputDataError(f"{p} is a zarr group without OME-Zarr multiscales metadata; give an OME-Zarr image")
    ms = _multiscale(image)
    names = [a.name for a in ms.axes]
    out = []
    for ds in ms.datasets:
        scale = _scale_of(ds, ms, len(names))
        arr = group[ds.path]
        out.append({"path": ds.path, "shape": tuple(int(s) for s in arr.shape), "axes": names,
                    "scale": dict(zip(names, scale, strict=True))})
    return out


def _scale_of(dataset: Any, multiscale: Any, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for tr in dataset.coordinateTransformations:
        if getattr(tr, "type", None) == "scale" and hasattr(tr, "scale"):
            scale = [float(s) for s in tr.scale]
    glob = getattr(multiscale, "coordinateTransformations", None) or ()
    for tr in glob:
        if getattr(tr, "type", None) == "scale" and hasattr(tr, "scale"):
            scale = [a * float(b) for a, b in zip(scale, tr.scale, strict=True)]
    return scale


def _open_ome(group: Any, image: Any, path: Path, level: int | None) -> LazyVolume:
    ms = _multiscale(image)
    n = len(ms.datasets)
    lev = 0 if level is None else int(level)
    if not 0 <= lev < n:
        raise InputDataError(f"{path} has scale levels 0 to {n - 1}; level {lev} does not exist (choose one of those)")
    ds = ms.datasets[lev]
    arr = group[ds.path]
    axes = [(a.name, getattr(a, "type", None)) for a in ms.axes]
    index: list[Any] = []
    for (name, kind), size in zip(axes, arr.shape, strict=True):
        if name in ("z", "y", "x"):
            index.append(name)
        elif size == 1:
            index.append(0)
        else:
            what = "channels" if kind == "channel" or name == "c" else ("time points" if kind == "time" or name == "t" else
                                                                        f"entries along axis {name!r}")
            raise InputDataError(
                f"{path} holds {size} {what} ({name!r} axis); the model predicts single-channel Z stacks: extract one "
                f"(e.g. 'emseg convert' of one {name} index, or Fiji: Image > Duplicate…) and predict that")
    if "y" not in index or "x" not in index:
        raise InputDataError(f"{path}: OME-Zarr axes {[a for a, _ in axes]} have no y/x plane; give a 2D or 3D image")
    if "z" not in index:
        from .volume_io import _Add0

        arr, index = _Add0(_Squeeze(arr, index)), ["z", "y", "x"]
    scale = dict(zip((a for a, _ in axes), _scale_of(ds, ms, len(axes)), strict=True))
    units = {a.name: getattr(a, "unit", None) for a in ms.axes}
    unit = ij_unit(units.get("x") or units.get("y"))
    cal = Calibration((scale.get("z", 1.0), scale.get("y", 1.0), scale.get("x", 1.0)), unit)
    return LazyVolume(arr, tuple(index), cal, f"{path}[level {lev}]" if lev else str(path))


class _Squeeze:
    """A 2D (Y, X) view of an array whose other axes are fixed indices (for 2D OME-Zarr images)."""

    def __init__(self, arr: Any, index: list[Any]) -> None:
        self._a, self._index = arr, index
        self.shape = tuple(int(n) for ax, n in zip(index, arr.shape, strict=True) if ax in ("y", "x"))
        self.dtype = arr.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        it = iter(key)
        full = tuple(next(it) if ax in ("y", "x") else ax for ax in self._index)
        return np.asarray(self._a[full])


# ----------------------------------------------------------------------------- zarr


def open_zarr_volume(path: Path, level: int | None = None) -> LazyVolume:
    """A zarr v2/v3 array, or an OME-Zarr image (its scale *level*, default full resolution)."""
    import zarr

    from .volume_io import _wrap_array

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputDataError(f"cannot read {path}: not a valid zarr array or group ({exc}); check the path or re-save it") from exc
    if isinstance(node, zarr.Group):
        image = _ome_image(node, path)
        if image is not None:
            return _open_ome(node, image, path, level)
        keys = sorted(node.array_keys())
        if len(keys) != 1:
            groups = sorted(node.group_keys())
            hint = f" and sub-groups {groups}; give the path of one image or array" if groups else "; give the path of one array"
            raise InputDataError(f"{path} is a zarr group with arrays {keys}{hint}")
        node = node[keys[0]]
    if level not in (None, 0):
        raise InputDataError(f"{path} is a plain zarr array with a single scale level; level {level} does not exist (omit it)")
    arr: Any = node
    if np.dtype(arr.dtype).kind not in "uifb":
        raise InputDataError(f"{path}: pixel type {arr.dtype} is not an image; give a grayscale 8-, 16- or 32-bit array")
    cal = Calibration()
    vs = arr.attrs.get("voxel_size")
    if isinstance(vs, (list, tuple)):
        try:
            cal = Calibration(tuple(float(v) for v in vs), str(arr.attrs.get("unit", "pixel")))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise InputDataError(f"{path}: voxel_size attribute {vs!r} is not three numbers (z, y, x); fix or remove it") from exc
    return _wrap_array(arr, str(path), cal)


# ----------------------------------------------------------------------------- N5


def _n5_attrs(path: Path) -> dict[str, Any]:
    f = path / "attributes.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{f} is not valid JSON ({exc}); re-save the N5 container") from exc


def _n5_dataset(path: Path, level: int | None) -> Path:
    """The dataset folder: *path* itself, its ``s<level>`` (N5 Viewer / BigDataViewer multiscale) or its only dataset."""
    if "dimensions" in _n5_attrs(path):
        if level not in (None, 0):
            raise InputDataError(f"{path} is a single N5 dataset; scale level {level} does not exist (omit it)")
        return path
    scales = sorted((p for p in path.iterdir() if p.is_dir() and p.name[:1] == "s" and p.name[1:].isdigit()),
                    key=lambda p: int(p.name[1:])) if path.is_dir() else []
    if scales:
        lev = 0 if level is None else int(level)
        if not 0 <= lev < len(scales):
            raise InputDataError(f"{path} has scale levels s0 to s{len(scales) - 1}; level {lev} does not exist")
        return scales[lev]
    sets = [p for p in path.rglob("attributes.json") if "dimensions" in _n5_attrs(p.parent)] if path.is_dir() else []
    if len(sets) == 1:
        return _n5_dataset(sets[0].parent, level)
    names = sorted(str(p.parent.relative_to(path)) for p in sets)
    raise InputDataError(f"{path} is an N5 container with datasets {names or '(none)'}; give the path of one dataset")


def open_n5(path: Path, level: int | None = None) -> LazyVolume:
    """An N5 dataset (as written by Fiji's N5 plugins or BigDataViewer), read with TensorStore.

    N5 lists dimensions fastest-first (x, y, z); the volume is presented as (z, y, x). The voxel
    size comes from N5 Viewer's ``pixelResolution``/``resolution`` (with ``downsamplingFactors``).
    """
    import tensorstore as ts

    ds = _n5_dataset(path, level)
    attrs = _n5_attrs(ds)
    comp = (attrs.get("compression") or {}).get("type", "raw")
    if comp not in N5_COMPRESSIONS:
        raise InputDataError(f"{ds}: N5 compression {comp!r} is not supported (readable: {', '.join(N5_COMPRESSIONS)}); "
                             "re-save it with gzip or raw (Fiji: File > Save As > HDF5/N5/Zarr/OME-NGFF)")
    try:
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(ds)}}, read=True).result()
    except Exception as exc:
        raise InputDataError(f"cannot read N5 dataset {ds} ({str(exc).splitlines()[0]}); check the path or re-save it") from exc
    nd = store.rank
    if nd not in (2, 3):
        raise InputDataError(f"{ds} has {nd} dimensions {list(store.shape)}; expected a 2D image or a 3D stack")
    view = _TsArray(store.T)  # N5 (x, y, z) -> numpy (z, y, x)
    res = attrs.get("pixelResolution")
    unit = "pixel"
    voxel = None
    if isinstance(res, dict) and isinstance(res.get("dimensions"), list):
        voxel, unit = res["dimensions"], str(res.get("unit") or "pixel")
    elif isinstance(attrs.get("resolution"), list):
        voxel = attrs["resolution"]
    if voxel is None:  # BigDataViewer keeps the resolution on the container, factors on each level
        parent = _n5_attrs(ds.parent)
        pr = parent.get("pixelResolution") or parent.get("resolution")
        if isinstance(pr, dict):
            voxel, unit = pr.get("dimensions"), str(pr.get("unit") or "pixel")
        elif isinstance(pr, list):
            voxel = pr
    factors = attrs.get("downsamplingFactors") or [1] * nd
    cal = Calibration()
    if isinstance(voxel, list) and len(voxel) >= 2:
        v = [float(a) * float(f) for a, f in zip(voxel, factors, strict=False)]
        z = v[2] if len(v) > 2 else 1.0
        try:
            cal = Calibration((z, v[1], v[0]), ij_unit(unit) if unit not in ("pixel", "") else "pixel")
        except InputDataError:
            cal = Calibration()
    from .volume_io import _wrap_array

    return _wrap_array(view, str(ds), cal)


class _TsArray:
    """numpy-style reads from a TensorStore array (shape, dtype, slicing)."""

    def __init__(self, store: Any) -> None:
        self._s = store
        self.shape = tuple(int(n) for n in store.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._s[key].read().result())


def open_chunked(path: str | Path, level: int | None = None) -> LazyVolume:
    """Open an OME-Zarr image, a zarr array or an N5 dataset lazily as (Z, Y, X)."""
    p = Path(path)
    if is_n5(p):
        return open_n5(p, level)
    return open_zarr_volume(p, level)
