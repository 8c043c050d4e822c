"""Reading and writing image volumes (Z, Y, X) with their voxel calibration.

TIFF is the exchange format with Fiji: ImageJ hyperstack metadata (slices, frames, channels,
``spacing``, ``unit``) and the X/Y resolution tags are honoured on read and written on output,
so a stack saved here opens in Fiji with the right voxel size. Volumes can be opened lazily
(:func:`open_volume`) so that prediction reads one slab at a time from arbitrarily large stacks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ...errors import EmsegError, InputDataError, OutputError
from .files import atomic_path, check_writable

__all__ = [
    "Calibration",
    "ArrayLike3D",
    "LazyVolume",
    "read_volume",
    "open_volume",
    "write_volume",
    "StackWriter",
    "IMAGEJ_DTYPES",
    "expand_stack_paths",
]

#: Pixel types ImageJ can display without conversion.
IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Calibration:
    """Physical voxel size in (z, y, x) order, with its unit (ImageJ's convention)."""

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str = "pixel"

    def __post_init__(self) -> None:
        vs = tuple(float(v) for v in self.voxel_size)
        if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
            raise InputDataError(f"voxel size must be three positive numbers (z, y, x), got {self.voxel_size}")
        object.__setattr__(self, "voxel_size", vs)

    @property
    def is_calibrated(self) -> bool:
        return self.unit not in ("pixel", "pixels", "") or self.voxel_size != (1.0, 1.0, 1.0)

    @property
    def voxel_volume(self) -> float:
        z, y, x = self.voxel_size
        return z * y * x

    def to_dict(self) -> dict[str, Any]:
        return {"voxel_size": list(self.voxel_size), "unit": self.unit}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Calibration:
        if not d:
            return cls()
        return cls(tuple(d.get("voxel_size", (1.0, 1.0, 1.0))), str(d.get("unit", "pixel")))  # type: ignore[arg-type]


@runtime_checkable
class ArrayLike3D(Protocol):
    """Anything with a shape, a dtype and numpy-style slicing: ndarray, memmap, zarr, h5py."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


def _private_copy_and_release(mapped: np.memmap, data: Any) -> np.ndarray:
    """Copy a slab out of a memory map, then let the kernel drop the mapped pages from our RSS.

    Read pages of a file mapping otherwise stay counted as resident memory of this process, so
    predicting a 100 GB ``.npy`` would *look* like a 100 GB process to memory monitors and
    job schedulers, although the pages are only reclaimable file cache.
    """
    out = np.array(data, copy=True)
    mm = getattr(mapped, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED)
    return out


class LazyVolume:
    """A (Z, Y, X) view of a stored array whose extra singleton axes are hidden.

    Slicing reads only what is asked for, so a 100 GB stack costs one slab of memory.
    """

    def __init__(self, array: ArrayLike3D, index: tuple[Any, ...], calibration: Calibration,
                 source: str, closer: Any = None) -> None:
        self._array = array
        self._index = index  # one entry per stored axis: "z", "y", "x" or an int to fix
        self.calibration = calibration
        self.source = source
        self._closer = closer
        shape = []
        for ax, n in zip(index, array.shape, strict=True):
            if ax in ("z", "y", "x"):
                shape.append(int(n))
        self.shape: tuple[int, int, int] = tuple(shape)  # type: ignore[assignment]
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key)
        it = iter(key)
        full = tuple(next(it) if ax in ("z", "y", "x") else ax for ax in self._index)
        try:
            data = self._array[full]
            if isinstance(self._array, np.memmap):
                return _private_copy_and_release(self._array, data)
            return np.asarray(data)
        except MemoryError as exc:
            raise InputDataError(
                f"cannot read {self.source}: {self.shape} voxels of {self.dtype} do not fit in this computer's memory; "
                "if the file is damaged copy it again, else give a smaller stack (or predict, which reads slab by slab)") from exc
        except TypeError as exc:
            if isinstance(self._array, np.ndarray):  # a wrong index, not a damaged file
                raise
            raise InputDataError(
                f"cannot read {self.source}: the file is damaged or truncated ({exc}); "
                "copy it again or re-save it from Fiji") from exc
        except (IndexError, EmsegError):
            raise
        except Exception as exc:  # codecs and tifffile raise many types for damaged data
            raise InputDataError(
                f"cannot read {self.source}: the file is damaged or truncated ({exc}); "
                "copy it again or re-save it from Fiji") from exc

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> LazyVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyVolume({self.source!r}, shape={self.shape}, dtype={self.dtype})"


def _expand_key(key: Any) -> tuple[Any, ...]:
    """A numpy-style index for a 3D volume as exactly three entries (``...`` expanded)."""
    if not isinstance(key, tuple):
        key = (key,)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (4 - len(key)) + key[i + 1:]
    if len(key) > 3:
        raise IndexError(f"too many indices for a (Z, Y, X) volume: {len(key)} were given")
    return key + (slice(None),) * (3 - len(key))


# --------------------------------------------------------------------------- reading


def _axes_to_zyx_index(axes: str, shape: Sequence[int], path: Path) -> tuple[Any, ...]:
    """Map a stored axes string (tifffile's letters) to a (Z, Y, X) view, or explain why not."""
    sizes = dict(zip(axes, shape, strict=True))
    if sizes.get("S", 1) > 1:
        raise InputDataError(
            f"{path.name} is an RGB/colour image ({sizes['S']} samples per pixel); "
            "convert it to grayscale first (Fiji: Image > Type > 8-bit)")
    others = [a for a in axes if a not in "YXSC" and sizes[a] > 1]
    if sizes.get("C", 1) > 1 and not others:
        # tifffile and some tools label a plain stack as channels; EM stacks are single-channel
        import warnings

        from ...errors import EmsegWarning

        warnings.warn(f"{path.name}: its metadata says {sizes['C']} channels and no slices; reading them as "
                      f"{sizes['C']} slices (if they really are channels, split them first)", EmsegWarning, stacklevel=4)
        axes = axes.replace("C", "Z") if "Z" not in axes else axes.replace("Z", "_").replace("C", "Z")
        sizes = dict(zip(axes, shape, strict=True))
    if sizes.get("C", 1) > 1:
        raise InputDataError(
            f"{path.name} has {sizes['C']} channels; split them (Fiji: Image > Color > Split Channels) "
            "and give one channel per file")
    if "Y" not in axes or "X" not in axes:
        raise InputDataError(f"{path.name} has axes {axes!r} with no Y/X plane; save it as a 2D image or stack")
    stack_axes = [a for a in axes if a not in "YXS" and sizes[a] > 1]
    if len(stack_axes) > 1:
        desc = ", ".join(f"{a}={sizes[a]}" for a in stack_axes)
        raise InputDataError(
            f"{path.name} is a {len(stack_axes) + 2}D hyperstack ({desc}); keep one time point "
            "(Fiji: Image > Duplicate… with a single frame) so that it is a plain Z stack")
    zaxis = stack_axes[0] if stack_axes else None
    index: list[Any] = []
    for a in axes:
        if a in ("Y", "X"):
            index.append(a.lower())
        elif a == zaxis:
            index.append("z")
        else:
            index.append(0)
    return tuple(index)


def _tiff_calibration(tif: Any) -> Calibration:
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "") or "")
    z = float(ij.get("spacing", 1.0) or 1.0)

    def res(tag: str) -> float | None:
        t = page.tags.get(tag)
        if t is None:
            return None
        num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
        return (den / num) if num else None

    x, y = res("XResolution"), res("YResolution")
    if not unit:
        ru = page.tags.get("ResolutionUnit")
        ru = int(ru.value) if ru is not None else 1
        if ru == 2 and x:  # inch: convert to micron
            x, y, unit = x * 25400.0, (y or x) * 25400.0, "micron"
        elif ru == 3 and x:  # centimetre
            x, y, unit = x * 1e4, (y or x) * 1e4, "micron"
        else:
            x = y = None
            unit = "pixel"
    x = x if x and np.isfinite(x) and x > 0 else 1.0
    y = y if y and np.isfinite(y) and y > 0 else x
    unit = _decode_unit(unit)
    try:
        return Calibration((z if z > 0 else 1.0, y, x), unit)
    except InputDataError:
        return Calibration()


_MICRON_SPELLINGS = ("\\u00B5m", "\\u00b5m", "\\u03BCm", "\\u03bcm", "\u00b5m", "\u03bcm", "um")


def _decode_unit(unit: str) -> str:
    """ImageJ's unit string as text: micrometre spellings become 'micron', ``\\uXXXX`` escapes are decoded."""
    if unit in _MICRON_SPELLINGS:
        return "micron"
    if "\\u" in unit:
        unit = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), unit)
    return unit


def _encode_unit(unit: str) -> str:
    """A unit string that fits the ASCII-only TIFF description, spelled the way ImageJ reads it."""
    if unit in _MICRON_SPELLINGS:
        return "micron"
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in unit)


#: What tifffile logs when the structure of a file is damaged and it carries on with what it can
#: reach (fewer pages, a fallback series): each is a sign that what it would return is not the file.
_TIFF_DAMAGE = ("invalid page offset", "corrupted tag list", "incorrect stripoffsets", "incorrect stripbytecounts",
                "missing required tags", "invalid data type", "raised tifffileerror", "series metadata invalid",
                "missing data offset", "invalid value offset")


#: Compression schemes that grayscale stacks are stored with (none, LZW, JPEG, deflate, PackBits,
#: LZMA, zstd, WebP, JPEG 2000/XL). Fax codes (2-4) and others are for bilevel or colour data; seen
#: on a grayscale stack they are a damaged tag, and decoding them yields an image of arbitrary size.
_TIFF_COMPRESSIONS = frozenset({1, 5, 6, 7, 8, 32946, 32773, 34925, 50000, 50001, 50002, 33003, 33004, 33005,
                                34712, 34892, 34933, 34934, 22610})


class _TooDamaged(BaseException):
    """Stops tifffile mid-parse (a BaseException, so its own ``except Exception`` lets it pass)."""


class _TiffDamageLog(logging.Handler):
    """Collects tifffile's own reports of structural damage while a file is opened.

    A badly damaged file can make tifffile parse thousands of bogus pages with thousands of bogus
    tags each (minutes for a 5 kB file, found by fuzzing); after :attr:`LIMIT` reports the parse
    is stopped, since the file is damaged either way.
    """

    LIMIT = 200

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.damage: list[str] = []
        self.reports = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.reports += 1
        with contextlib.suppress(Exception):
            text = record.getMessage()
            if any(k in text.lower() for k in _TIFF_DAMAGE):
                self.damage.append(" ".join(text.split())[:160])
        if self.reports >= self.LIMIT:
            raise _TooDamaged


def _open_tiff(path: Path) -> LazyVolume:
    import tifffile

    log = logging.getLogger("tifffile")
    watcher = _TiffDamageLog()
    log.addHandler(watcher)
    try:
        return _open_tiff_checked(path, tifffile, watcher)
    except _TooDamaged:
        first = watcher.damage[0] if watcher.damage else "too many problems"
        raise InputDataError(
            f"cannot read {path}: the file is badly damaged (tifffile: {first}, and {watcher.reports - 1} more reports); "
            "copy it again or re-save it from Fiji") from None
    finally:
        log.removeHandler(watcher)


def _open_tiff_checked(path: Path, tifffile: Any, watcher: _TiffDamageLog) -> LazyVolume:
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for damaged files
        raise InputDataError(f"cannot read {path}: not a valid TIFF file ({exc}); re-save it from Fiji") from exc
    try:
        series = tif.series[0]
        _check_complete(tif, series.axes, series.shape, path)
        _check_tags_agree(tif, series, path)
        description = tif.pages[0].description or ""
        if not tif.is_imagej and "ImageJ=" in description and "images=" in description:
            watcher.damage.append("ImageJ header present but unreadable")
        if watcher.damage:
            raise InputDataError(
                f"cannot read {path}: the file is damaged (tifffile: {watcher.damage[0]}); "
                "copy it again or re-save it from Fiji")
        index = _axes_to_zyx_index(series.axes, series.shape, path)
        store = series.aszarr()
        node = zarr.open(store, mode="r")
        if isinstance(node, zarr.Group):  # pyramidal files: take full resolution
            node = node["0"]
        arr: ArrayLike3D = node  # type: ignore[assignment]
        if "z" not in index:  # a single plane: present it as a one-slice stack
            arr, index = _Add0(arr), ("z", *index)
        cal = _tiff_calibration(tif)
    except InputDataError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise InputDataError(f"cannot read {path}: damaged or unsupported TIFF ({exc}); re-save it from Fiji") from exc
    return LazyVolume(arr, index, cal, str(path), closer=tif)


def _check_complete(tif: Any, axes: str, shape: Sequence[int], path: Path) -> None:
    """Refuse a truncated ImageJ file instead of silently reading only its first plane.

    When pages are missing, tifffile falls back from the ImageJ series to whatever pages it can
    reach (often just the first), so the header's image count is the only sign of the damage.
    """
    ij = tif.imagej_metadata or {}
    try:
        expected = int(ij.get("images", 1) or 1)
    except (TypeError, ValueError):
        return
    planes = math.prod(int(n) for a, n in zip(axes, shape, strict=True) if a not in "YXS")
    if expected > planes:
        raise InputDataError(
            f"cannot read {path}: its ImageJ header announces {expected} images but only {planes} can be read, "
            "so the file is truncated or damaged; copy it again or re-save it from Fiji")
    if tif.is_imagej and "images" in ij and expected < planes:
        raise InputDataError(
            f"cannot read {path}: its ImageJ header announces {expected} images but its slices, frames and channels "
            f"make {planes}, so the header is damaged; copy it again or re-save it from Fiji")


def _check_tags_agree(tif: Any, series: Any, path: Path) -> None:  # noqa: C901 - one check per tag relation
    """Refuse a TIFF whose own tags contradict each other, instead of reading a wrong shape.

    A damaged ImageLength tag (39 instead of 64) still opens: tifffile then reads the first 39
    rows of every plane and the rest of the data is silently lost. The strip byte counts record
    how much data each plane really holds, so for uncompressed data they must equal what the
    width, height and pixel type announce. Pages beyond what the metadata describes mean the
    metadata (the ImageJ header) was damaged.
    """
    import tifffile

    damaged = f"cannot read {path}: the file is damaged"
    fix = "copy it again or re-save it from Fiji"
    shape = tuple(int(n) for n in series.shape)
    if not shape or min(shape) == 0:
        raise InputDataError(f"{damaged} (its tags give an empty image of shape {shape}); {fix}")
    page = series.keyframe if getattr(series, "keyframe", None) is not None else series.pages[0]
    sizes = dict(zip(series.axes, shape, strict=True))
    if (sizes.get("Y"), sizes.get("X")) != (int(page.imagelength), int(page.imagewidth)):
        raise InputDataError(
            f"{damaged} (its tags give {page.imagelength}×{page.imagewidth} pixels per image but the series "
            f"{sizes.get('Y')}×{sizes.get('X')}); {fix}")
    offsets_tag = page.tags.get("StripOffsets")
    if not page.is_tiled and offsets_tag is not None:
        rps_tag = page.tags.get("RowsPerStrip")
        rows = int(page.imagelength)
        rps = min(int(rps_tag.value) if rps_tag is not None else rows, rows) or rows
        planes_per_page = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
        n_strips = -(-rows // rps) * planes_per_page
        if int(offsets_tag.count) != n_strips:
            raise InputDataError(
                f"{damaged} (its tags give {rows} rows in strips of {rps}, i.e. {n_strips} strip(s), but it stores "
                f"{offsets_tag.count}); {fix}")
    counts = tuple(int(c) for c in (page.databytecounts or ()))
    compression = int(page.compression)
    if compression not in _TIFF_COMPRESSIONS or compression not in tifffile.TIFF.DECOMPRESSORS:
        raise InputDataError(
            f"cannot read {path}: its compression (TIFF code {compression}) is unknown or not supported here, or the "
            "tag is damaged; re-save it from Fiji (uncompressed, LZW or ZIP)")
    spp, bps = int(page.samplesperpixel), int(page.bitspersample)
    if not 1 <= bps <= 64 or not 1 <= spp <= 16:
        raise InputDataError(f"{damaged} (its tags give {bps} bits and {spp} samples per pixel); {fix}")
    plane_bytes = int(page.imagelength) * int(page.imagewidth) * spp * max(bps, 8) // 8
    if compression != 1 and plane_bytes > (1 << 30) and plane_bytes > 100_000 * max(1, sum(counts)):
        raise InputDataError(
            f"{damaged} (its tags announce {page.imagelength}×{page.imagewidth} pixels per image, {plane_bytes} bytes, "
            f"from only {sum(counts)} bytes of compressed data); {fix}")
    if compression == 1 and counts:
        if page.is_tiled:
            tile_bytes = int(page.tilelength) * int(page.tilewidth) * max(1, int(getattr(page, "tiledepth", 1) or 1)) \
                * spp * bps // 8
            expected = tile_bytes * len(counts)
        else:
            row_bytes = -(-int(page.imagewidth) * (spp if int(page.planarconfig) != 2 else 1) * bps // 8)
            expected = int(page.imagelength) * row_bytes * (spp if int(page.planarconfig) == 2 else 1)
        if sum(counts) != expected:
            raise InputDataError(
                f"{damaged} (its tags announce {page.imagelength}×{page.imagewidth} pixels, {expected} bytes per image, "
                f"but the image data holds {sum(counts)} bytes); {fix}")
    planes = math.prod(int(n) for a, n in zip(series.axes, shape, strict=True) if a not in "YXS")
    n_pages = len(tif.pages)
    if n_pages > planes and len(tif.series) == 1:
        raise InputDataError(
            f"{damaged} (its header describes {planes} image(s) but the file holds {n_pages}); {fix}")
    if n_pages < planes and path.stat().st_size < (1 << 32):  # ImageJ writes one page per image below 4 GiB
        raise InputDataError(
            f"{damaged} (its header describes {planes} images but the file holds only {n_pages}); {fix}")


def _open_npy(path: Path) -> LazyVolume:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise InputDataError(
            f"cannot read {path}: not a valid .npy file ({exc}); save it again with numpy.save") from exc
    if isinstance(arr, np.memmap):  # numpy.save writes exactly the header plus the data
        size = path.stat().st_size
        if size != int(arr.offset) + int(arr.nbytes):
            raise InputDataError(
                f"cannot read {path}: its header announces shape {arr.shape} ({arr.nbytes} bytes of {arr.dtype}) but the "
                f"file holds {size - int(arr.offset)} bytes of data, so it is damaged; save it again with numpy.save")
    return _wrap_array(arr, str(path))


def _open_zarr(path: Path) -> LazyVolume:
    from .chunked_io import open_zarr_volume

    return open_zarr_volume(path)


def _wrap_array(arr: ArrayLike3D, source: str, calibration: Calibration | None = None) -> LazyVolume:
    shape = tuple(arr.shape)
    if len(shape) == 2:
        index: tuple[Any, ...] = ("y", "x")
        # a 2D array viewed as one slice: handled by LazyVolume via an added axis below
        return LazyVolume(_Add0(arr), ("z", "y", "x"), calibration or Calibration(), source)
    if len(shape) == 3:
        index = ("z", "y", "x")
    else:
        raise InputDataError(f"{source} has {len(shape)} dimensions {shape}; expected a 2D image or a (Z, Y, X) stack")
    return LazyVolume(arr, index, calibration or Calibration(), source)


class _Add0:
    """Presents a 2D array as a one-slice 3D array."""

    def __init__(self, arr: ArrayLike3D) -> None:
        self._a = arr
        self.shape = (1, *arr.shape)
        self.dtype = arr.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        zk, rest = key[0], key[1:]
        plane = np.asarray(self._a[rest if rest else slice(None)])[None]
        return plane[zk]


def open_volume(source: str | Path | np.ndarray | ArrayLike3D, calibration: Calibration | None = None,
                level: int | None = None) -> LazyVolume:
    """Open a volume lazily as (Z, Y, X); arrays are wrapped, files are read on demand.

    Supported files: TIFF (ImageJ hyperstacks included), ``.npy`` (memory-mapped), zarr arrays,
    OME-Zarr images (NGFF 0.4/0.5; *level* picks the scale level, default full resolution) and
    N5 datasets (see :mod:`fiji_emseg.engine.chunked_io`).
    """
    if not isinstance(source, (str, Path)):
        if isinstance(source, LazyVolume):
            return source
        if not hasattr(source, "shape") or not hasattr(source, "dtype"):
            raise InputDataError(f"expected an array or a file path, got {type(source).__name__}")
        return _wrap_array(source, f"<{type(source).__name__}>", calibration)
    path = Path(source)
    if not path.exists():
        raise InputDataError(f"{path} does not exist; check the path")
    suffix = path.suffix.lower()
    if path.is_dir() and suffix in (*TIFF_SUFFIXES, ".npy"):
        raise InputDataError(f"{path} is a folder, not a {suffix} file; give the path of the file itself")
    from .chunked_io import is_n5, is_zarr, open_n5, open_zarr_volume

    if level not in (None, 0) and (suffix in TIFF_SUFFIXES or suffix == ".npy"):
        raise InputDataError(f"{path.name} has a single scale level; level {level} does not exist (omit it)")
    if suffix in TIFF_SUFFIXES:
        vol = _open_tiff(path)
    elif suffix == ".npy":
        vol = _open_npy(path)
    elif is_n5(path):
        vol = open_n5(path, level)
    elif is_zarr(path):
        vol = open_zarr_volume(path, level)
    elif path.is_dir():
        raise InputDataError(f"{path} is a folder; give a TIFF, .npy or .zarr volume (OME-Zarr, or a .n5 dataset)")
    else:
        raise InputDataError(f"{path.name}: unsupported file type {suffix!r}; use TIFF (.tif), .npy, .zarr/.ome.zarr or .n5")
    if calibration is not None:
        vol.calibration = calibration
    try:
        _check_pixel_type(vol.dtype, path)
        if min(vol.shape) == 0:
            raise InputDataError(f"{path} holds no pixels (shape {vol.shape}); the file is empty or damaged, "
                                 "copy it again or re-save it")
    except InputDataError:
        vol.close()
        raise
    return vol


def _check_pixel_type(dtype: np.dtype, path: Path | str) -> None:
    if dtype.kind not in "uifb":
        raise InputDataError(f"{path}: pixel type {dtype} is not numeric grayscale; convert to 8-, 16- or 32-bit")


def read_volume(source: str | Path | np.ndarray | ArrayLike3D,
                calibration: Calibration | None = None) -> tuple[np.ndarray, Calibration]:
    """Read a whole volume into memory as a (Z, Y, X) ndarray plus its calibration."""
    vol = open_volume(source, calibration)
    try:
        data = np.ascontiguousarray(vol[:])
        return data, vol.calibration
    finally:
        if isinstance(source, (str, Path)):
            vol.close()


def expand_stack_paths(paths: Sequence[str | Path], what: str = "input", folder_ok: bool = True) -> list[Path]:
    """Files as given; a folder stands for the TIFF stacks inside it, sorted by name (batch runs)."""
    out: list[Path] = []
    for entry in paths:
        p = Path(entry).expanduser()
        if not p.exists():
            raise InputDataError(f"{what}: {entry} does not exist; check the path")
        if p.is_dir() and p.suffix.lower() not in (".zarr", ".n5") and not _is_chunked_store(p):
            if not folder_ok:
                raise InputDataError(f"{what}: {entry} is a folder; give a file")
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in TIFF_SUFFIXES and not f.name.startswith("."))
            if not found:
                raise InputDataError(f"{what}: the folder {entry} holds no .tif file; give TIFF stacks")
            out.extend(found)
        else:
            out.append(p)
    return out


def _is_chunked_store(path: Path) -> bool:
    from .chunked_io import is_n5, is_zarr

    return is_zarr(path) or is_n5(path)


# --------------------------------------------------------------------------- writing


def _imagej_ready(data: np.ndarray) -> np.ndarray:
    dt = np.dtype(data.dtype)
    if dt in IMAGEJ_DTYPES:
        return data
    if dt == np.bool_:
        return data.astype(np.uint8) * 255
    if dt.kind in "ui" and data.size and data.min() >= 0 and data.max() <= 65535:
        return data.astype(np.uint16)
    return data.astype(np.float32)


def _tiff_kwargs(calibration: Calibration | None) -> dict[str, Any]:
    cal = calibration or Calibration()
    z, y, x = cal.voxel_size
    return {
        "resolution": (1.0 / x, 1.0 / y),
        "metadata": {"spacing": z, "unit": _encode_unit(cal.unit), "axes": "ZYX"},
    }


def write_volume(path: str | Path, data: np.ndarray, calibration: Calibration | None = None,
                 overwrite: bool = False, compression: str | None = None) -> Path:
    """Write a (Z, Y, X) or (Y, X) volume atomically as an ImageJ TIFF (or ``.npy``)."""
    import tifffile

    path = Path(path)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputDataError(f"cannot write {path.name}: expected (Z, Y, X) data, got shape {data.shape}")
    with atomic_path(path, overwrite) as tmp:
        if path.suffix.lower() == ".npy":
            np.save(tmp, data)
        elif path.suffix.lower() in TIFF_SUFFIXES:
            tifffile.imwrite(tmp, _imagej_ready(data), imagej=True, compression=compression,
                             **_tiff_kwargs(calibration))
        else:
            raise OutputError(f"cannot write {path.name}: use a .tif or .npy file name")
    return path


_DONE = object()


class StackWriter:
    """Writes a (Z, Y, X) ImageJ TIFF one slice at a time, atomically, on a background thread.

    The file appears under its final name only after :meth:`close` succeeds; on error or
    :meth:`abort` nothing is left behind. Memory is bounded by the small queue between the
    producer and the writer thread, and disk writes overlap with the producer's compute.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype: Any,
                 calibration: Calibration | None = None, overwrite: bool = False,
                 compression: str | None = None, queue_size: int = 4) -> None:
        import tifffile

        self.path = check_writable(path, overwrite)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in IMAGEJ_DTYPES:
            raise OutputError(f"cannot stream {self.dtype} to TIFF; use uint8, uint16 or float32")
        self._overwrite = overwrite
        self._ctx = atomic_path(self.path, overwrite)
        self._tmp = self._ctx.__enter__()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._written = 0
        kwargs = _tiff_kwargs(calibration)

        def pages() -> Iterator[np.ndarray]:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                yield item

        def run() -> None:
            try:
                with tifffile.TiffWriter(self._tmp, imagej=True, bigtiff=False) as tw:
                    tw.write(pages(), shape=self.shape, dtype=self.dtype, compression=compression, **kwargs)
            except BaseException as exc:  # reported to the producer on its next call
                self._error = exc
                while True:  # drain so the producer never blocks forever
                    try:
                        if self._queue.get(timeout=0.1) is _DONE:
                            break
                    except queue.Empty:
                        if self._closed:
                            break

        self._closed = False
        self._thread = threading.Thread(target=run, name=f"StackWriter[{self.path.name}]", daemon=True)
        self._thread.start()

    def write(self, plane: np.ndarray) -> None:
        """Append one (Y, X) slice or a (k, Y, X) block of slices."""
        plane = np.asarray(plane)
        planes = plane[None] if plane.ndim == 2 else plane
        for p in planes:
            self._raise_if_failed()
            if p.shape != self.shape[1:]:
                raise OutputError(f"slice of shape {p.shape} does not fit {self.path.name} of shape {self.shape}")
            if self._written >= self.shape[0]:
                raise OutputError(f"{self.path.name}: more than {self.shape[0]} slices written")
            self._put(np.ascontiguousarray(p, dtype=self.dtype))
            self._written += 1

    def _put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            self.abort()
            if isinstance(err, OSError):
                from .files import describe_os_error

                raise OutputError(describe_os_error(err, self.path)) from err
            raise OutputError(f"writing {self.path} failed: {err}") from err

    def close(self) -> Path:
        """Finish the file and move it into place; all slices must have been written."""
        if self._closed:
            return self.path
        if self._written != self.shape[0]:
            self.abort()
            raise OutputError(f"{self.path.name}: only {self._written} of {self.shape[0]} slices were written")
        self._put(_DONE)
        self._thread.join()
        self._closed = True
        if self._error is not None:
            err = self._error
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise OutputError(f"writing {self.path} failed: {err}") from err
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the partial file."""
        if self._closed:
            return
        self._closed = True
        while self._thread.is_alive():  # a full queue is drained by the writer (or its error loop)
            try:
                self._queue.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join(timeout=5)
        err = RuntimeError("aborted")
        try:
            self._ctx.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
