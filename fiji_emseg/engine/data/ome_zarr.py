"""Writing prediction results as OME-Zarr multiscale images (NGFF 0.4 by default, or 0.5).

Why these choices:

- NGFF 0.4 (zarr v2, ``/`` chunk keys, gzip) is what Fiji's N5/OME-NGFF reader, BigDataViewer,
  MoBIE and napari-ome-zarr all open today; 0.5 (zarr v3) is offered for newer viewers.
- One image per output kind (``probabilities``, ``masks``, ``labels``) under one root group, each
  with axes ``c, z, y, x`` (classes on the channel axis; labels: ``z, y, x``) and the input's
  voxel size as the level-0 scale.
- A pyramid halves y and x per level (and z while the voxels stay roughly isotropic) until a
  level fits in one chunk: probabilities are averaged, masks keep any foreground (max), labels
  take the most frequent value (mode), so small objects do not vanish from overviews.
- Chunks are what viewers fetch; the block-wise predictor writes whole chunks only, so workers
  never share a chunk. Metadata is built here and validated with ``ome-zarr-models``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, InputDataError
from .chunked_io import ngff_unit
from .volume_io import Calibration

__all__ = [
    "DOWNSAMPLE_METHOD",
    "NGFF_VERSIONS",
    "LevelSpec",
    "create_image",
    "downsample",
    "pyramid_levels",
    "validate_ome_zarr",
]

NGFF_VERSIONS = ("0.4", "0.5")

#: How each output kind is downsampled for the pyramid.
DOWNSAMPLE_METHOD = {"probabilities": "mean", "masks": "max", "labels": "mode", "image": "mean"}


@dataclass(frozen=True)
class LevelSpec:
    """One pyramid level: (z, y, x) shape, its downsampling factor from the previous level, voxel size."""

    shape: tuple[int, int, int]
    factor: tuple[int, int, int]
    voxel_size: tuple[float, float, float]


def pyramid_levels(shape: Sequence[int], voxel_size: Sequence[float], chunks: Sequence[int],
                   max_levels: int = 8) -> list[LevelSpec]:
    """Level 0 plus halvings until a level fits one chunk in y and x (z halves only while near-isotropic)."""
    shp = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size)
    levels = [LevelSpec(shp, (1, 1, 1), vs)]  # type: ignore[arg-type]
    while len(levels) < max_levels and max(shp[1], shp[2]) > max(chunks[1], chunks[2]):
        fz = 2 if shp[0] > 1 and vs[0] * 2 <= 2.0 * max(vs[1], vs[2]) * 1.01 else 1
        factor = (fz, 2, 2)
        shp = tuple(-(-n // f) for n, f in zip(shp, factor, strict=True))  # type: ignore[assignment]
        vs = tuple(v * f for v, f in zip(vs, factor, strict=True))  # type: ignore[assignment]
        levels.append(LevelSpec(shp, factor, vs))  # type: ignore[arg-type]
    return levels


def _compressor(zarr_format: int) -> Any:
    if zarr_format == 2:
        import numcodecs

        return numcodecs.GZip(level=1)
    from zarr.codecs import GzipCodec

    return GzipCodec(level=1)


def create_image(root: Any, name: str, channels: int | None, levels: Sequence[LevelSpec], dtype: Any,
                 chunks: Sequence[int], calibration: Calibration, version: str = "0.4",
                 channel_names: Sequence[str] = (), extra: dict[str, Any] | None = None) -> list[Any]:
    """Create the arrays and NGFF metadata of one multiscale image under *root*; returns the level arrays."""
    if version not in NGFF_VERSIONS:
        raise ConfigError(f"unknown OME-Zarr version {version!r}; use {' or '.join(NGFF_VERSIONS)}")
    zarr_format = 2 if version == "0.4" else 3
    group = root.create_group(name, overwrite=True)
    unit = ngff_unit(calibration.unit)
    spatial = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in ("z", "y", "x")]
    axes = ([{"name": "c", "type": "channel"}] if channels is not None else []) + spatial
    lead = (channels,) if channels is not None else ()
    arrays = []
    datasets = []
    for i, lev in enumerate(levels):
        shape = lead + lev.shape
        ch = (1,) * len(lead) + tuple(min(c, n) for c, n in zip(chunks, lev.shape, strict=True))
        kwargs: dict[str, Any] = {"shape": shape, "chunks": ch, "dtype": np.dtype(dtype), "fill_value": 0,
                                  "compressors": _compressor(zarr_format)}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = [a["name"] for a in axes]
        arrays.append(group.create_array(str(i), **kwargs))
        scale = ([1.0] if channels is not None else []) + list(lev.voxel_size)
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ms: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets,
                          "type": {"mean": "mean", "max": "max", "mode": "mode"}.get(DOWNSAMPLE_METHOD.get(name, "mean"))}
    attrs: dict[str, Any] = {}
    if version == "0.4":
        ms["version"] = "0.4"
        attrs["multiscales"] = [ms]
    else:
        attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    if channel_names:
        attrs["emseg_channels"] = list(channel_names)
    if extra:
        attrs.update(extra)
    group.attrs.update(attrs)
    return arrays


def open_root(path: str | Path, version: str, mode: str = "a") -> Any:
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=2 if version == "0.4" else 3)  # type: ignore[arg-type]


def downsample(data: np.ndarray, factor: Sequence[int], method: str) -> np.ndarray:
    """Downsample the last three axes of *data* by integer *factor* (edge windows padded by replication)."""
    fz, fy, fx = (int(f) for f in factor)
    lead = data.shape[:-3]
    z, y, x = data.shape[-3:]
    pad = [(0, 0)] * len(lead) + [(0, -z % fz), (0, -y % fy), (0, -x % fx)]
    if any(p[1] for p in pad):
        data = np.pad(data, pad, mode="edge")
    z2, y2, x2 = data.shape[-3] // fz, data.shape[-2] // fy, data.shape[-1] // fx
    win = data.reshape(*lead, z2, fz, y2, fy, x2, fx)
    axes = tuple(len(lead) + i for i in (1, 3, 5))
    if method == "max":
        return win.max(axis=axes)
    if method == "mean":
        m = win.mean(axis=axes, dtype=np.float32)
        if data.dtype.kind in "ui":
            return np.rint(m).astype(data.dtype)
        return m.astype(data.dtype)
    if method == "mode":
        flat = np.moveaxis(win, axes, tuple(range(win.ndim - 3, win.ndim))).reshape(*lead, z2, y2, x2, -1)
        values = np.unique(flat)
        counts = np.stack([(flat == v).sum(axis=-1) for v in values])
        return values[counts.argmax(axis=0)].astype(data.dtype)
    raise ConfigError(f"unknown downsampling method {method!r}")


def validate_ome_zarr(path: str | Path) -> list[str]:
    """Validate *path* and the multiscale images directly under it with ome-zarr-models; returns their names."""
    import warnings

    import zarr

    root = zarr.open_group(str(path), mode="r")
    names = []
    with warnings.catch_warnings():  # our .emseg/ run record is not a zarr node
        warnings.simplefilter("ignore")
        members = [(Path(path).name, root)] + sorted(root.groups())
    for name, group in members:
        attrs = dict(group.attrs)
        if "multiscales" in attrs:
            from ome_zarr_models.v04 import Image
        elif "multiscales" in (attrs.get("ome") or {}):
            from ome_zarr_models.v05 import Image
        else:
            continue
        try:
            Image.from_zarr(group)
        except Exception as exc:
            raise InputDataError(f"{group.store_path} is not a valid OME-Zarr image: {str(exc).splitlines()[0]}") from exc
        names.append(name)
    return names


def write_ome_zarr(volume: Any, path: str | Path, *, chunks: Sequence[int] | None = None, version: str = "0.4",
                   pyramid: bool = True, overwrite: bool = False, name: str | None = None,
                   progress: Any = None) -> Path:
    """Stream a (Z, Y, X) volume into a new OME-Zarr image at *path* (memory: one chunk-deep slab).

    The store is built under a hidden temporary name beside *path* and moved into place only
    when complete, so an interrupted conversion leaves nothing under the chosen name.
    """
    import shutil

    from ...errors import OutputError
    from .files import describe_os_error

    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists; choose another name or pass --overwrite")
    shape = tuple(int(s) for s in volume.shape)
    ch = tuple(min(int(c), n) for c, n in zip(chunks or (32, 256, 256), shape, strict=True))
    cal = getattr(volume, "calibration", None) or Calibration()
    levels = pyramid_levels(shape, cal.voxel_size, ch) if pyramid else [LevelSpec(shape, (1, 1, 1), cal.voxel_size)]  # type: ignore[arg-type]
    tmp = out.parent / f".{out.name}.part"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        import zarr

        parent = zarr.open_group(str(tmp), mode="w", zarr_format=2 if version == "0.4" else 3)
        arrays = _create_root_image(parent, name or out.name.split(".")[0], levels, volume.dtype, ch, cal, version)
        step = ch[0]
        for z0 in range(0, shape[0], step):
            arrays[0][z0:z0 + step] = np.asarray(volume[z0:z0 + step])
            if progress is not None:
                progress(min(z0 + step, shape[0]), shape[0])
        for lev in range(1, len(levels)):
            f = levels[lev].factor
            zstep = ch[0] * f[0]
            for z0 in range(0, levels[lev - 1].shape[0], zstep):
                small = downsample(np.asarray(arrays[lev - 1][z0:z0 + zstep]), f, "mean")
                arrays[lev][z0 // f[0]:z0 // f[0] + small.shape[0]] = small[:, :levels[lev].shape[1], :levels[lev].shape[2]]
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(describe_os_error(exc, out)) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _create_root_image(root: Any, name: str, levels: Sequence[LevelSpec], dtype: Any, chunks: Sequence[int],
                       calibration: Calibration, version: str) -> list[Any]:
    """Like :func:`create_image`, for an image that is the root group itself (``x.ome.zarr``)."""
    zarr_format = 2 if version == "0.4" else 3
    unit = ngff_unit(calibration.unit)
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in ("z", "y", "x")]
    arrays, datasets = [], []
    for i, lev in enumerate(levels):
        kwargs: dict[str, Any] = {"shape": lev.shape, "chunks": tuple(min(c, n) for c, n in zip(chunks, lev.shape, strict=True)),
                                  "dtype": np.dtype(dtype), "fill_value": 0, "compressors": _compressor(zarr_format)}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = ["z", "y", "x"]
        arrays.append(root.create_array(str(i), **kwargs))
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": list(lev.voxel_size)}]})
    ms: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets, "type": "mean"}
    if version == "0.4":
        root.attrs["multiscales"] = [{**ms, "version": "0.4"}]
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return arrays
