"""ImagePlus <-> numpy at memory speed, with hyperstack axes and voxel calibration.

ImageJ1 keeps one Java primitive array per plane, ordered channel-fastest, then slice, then frame,
which is exactly a C-ordered numpy (T, Z, C, Y, X) array. Pixels move through a small staging
buffer: a numpy array with a ``java.nio`` view (``jpype.nio.convertToDirectBuffer``, native byte
order, typed view), filled or drained by Java's bulk ``get``/``put`` of whole primitive arrays (a
memcpy) and by numpy slice assignment (another memcpy): several GB/s, against ~0.5–1.5 GB/s for
``scyjava.to_python`` or ``JArray(JShort)(plane)`` and far less element-wise (``benchmarks/bridge_copy.py``).
Creating a *new* ImagePlus also pays for Java allocating (and zeroing) the pixel arrays; to fill
an image repeatedly, allocate it once and use :func:`numpy_into_imageplus`.

Why stage instead of viewing the caller's array directly: a Java buffer keeps the numpy memory it
views alive until the *Java* garbage collector finalizes it, which may be never for a quiet heap,
so viewing each multi-GB volume would pin it. Only the staging buffer (≤ 8 MB) is pinned that way.

16-bit pixels are Java ``short``: the uint16 bit patterns are copied unchanged both ways.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..engine.data.volume_io import Calibration
from ..errors import EmsegWarning, InputDataError
from .jvm import ensure_jvm, jclass

__all__ = [
    "AXES",
    "apply_calibration",
    "image_to_volume",
    "imageplus_to_numpy",
    "mask_from_imageplus",
    "numpy_into_imageplus",
    "numpy_to_imageplus",
    "read_calibration",
]

#: ImageJ's storage order, slowest axis first (XYCZT in ImageJ's own words).
AXES = "TZCYX"

_DTYPE_BY_BITDEPTH: dict[int, np.dtype[Any]] = {
    8: np.dtype(np.uint8), 16: np.dtype(np.uint16), 32: np.dtype(np.float32)}
_SUPPORTED = tuple(_DTYPE_BY_BITDEPTH.values())


def _java_element(dtype: np.dtype) -> Any:
    import jpype

    return {1: jpype.JByte, 2: jpype.JShort, 4: jpype.JFloat}[dtype.itemsize]


def _nio_view(array: np.ndarray) -> Any:
    """A typed ``java.nio`` buffer over ``array``'s memory; Java keeps ``array`` alive until it collects the view."""
    import jpype.nio

    buffer = jpype.nio.convertToDirectBuffer(array)
    buffer = buffer.order(jclass("java.nio.ByteOrder").nativeOrder())
    if array.dtype.itemsize == 1:
        return buffer
    if array.dtype == np.uint16:
        return buffer.asShortBuffer()
    return buffer.asFloatBuffer()


#: Size of the staging buffer; planes larger than this are copied in pieces.
STAGE_BYTES = 8 << 20


class _Stage:
    """A small numpy buffer that Java and numpy both copy through (see module docstring)."""

    def __init__(self, dtype: np.dtype, plane_elements: int) -> None:
        self.array = np.empty(max(1, min(plane_elements, STAGE_BYTES // dtype.itemsize)), dtype)
        self.view = _nio_view(self.array)
        self.step = len(self.array)

    def from_java(self, pixels: Any, dest: np.ndarray) -> None:
        """Copy a Java primitive array into the 1-D numpy ``dest`` of the same length."""
        n = len(dest)
        for off in range(0, n, self.step):
            k = min(self.step, n - off)
            self.view.clear()
            self.view.put(pixels, off, k)
            dest[off:off + k] = self.array[:k]

    def to_java(self, src: np.ndarray, pixels: Any) -> None:
        """Copy the 1-D numpy ``src`` into a Java primitive array of the same length."""
        n = len(src)
        for off in range(0, n, self.step):
            k = min(self.step, n - off)
            self.array[:k] = src[off:off + k]
            self.view.clear()
            self.view.get(pixels, off, k)


# -- calibration ---------------------------------------------------------------------------------

def read_calibration(imp: Any) -> Calibration:
    """The (z, y, x) voxel size and unit of an ImagePlus; invalid sizes fall back to 1 with a warning."""
    cal = imp.getCalibration()
    sizes = [float(cal.pixelDepth), float(cal.pixelHeight), float(cal.pixelWidth)]
    bad = [axis for axis, v in zip("zyx", sizes) if not (math.isfinite(v) and v > 0)]
    if bad:
        warnings.warn(f"{imp.getTitle()}: voxel size {sizes} (z, y, x) is not positive along {', '.join(bad)}; "
                      "using 1 there (fix it in Image > Properties…)", EmsegWarning, stacklevel=2)
        sizes = [v if axis not in bad else 1.0 for axis, v in zip("zyx", sizes)]
    return Calibration((sizes[0], sizes[1], sizes[2]), str(cal.getUnit()))


def apply_calibration(imp: Any, calibration: Calibration) -> None:
    """Set an ImagePlus's pixel width/height/depth and unit from a (z, y, x) Calibration."""
    cal = jclass("ij.measure.Calibration")(imp)
    z, y, x = calibration.voxel_size
    cal.pixelWidth, cal.pixelHeight, cal.pixelDepth = x, y, z
    cal.setUnit(calibration.unit)
    imp.setCalibration(cal)


# -- ImagePlus -> numpy --------------------------------------------------------------------------

def _dtype_of(imp: Any) -> np.dtype:
    depth = int(imp.getBitDepth())
    if depth == 24:
        raise InputDataError(f"{imp.getTitle()}: RGB colour images are not supported; convert to grayscale first "
                             "(Image > Type > 8-bit)")
    if depth not in _DTYPE_BY_BITDEPTH:
        raise InputDataError(f"{imp.getTitle()}: unsupported bit depth {depth}; use an 8-, 16- or 32-bit image")
    return _DTYPE_BY_BITDEPTH[depth]


def _dimensions(imp: Any) -> tuple[int, int, int, int, int]:
    """(T, Z, C, Y, X) of an ImagePlus; a stack whose C×Z×T does not add up counts as Z only."""
    t, z, c = int(imp.getNFrames()), int(imp.getNSlices()), int(imp.getNChannels())
    n = int(imp.getStackSize())
    if t * z * c != n:
        t, z, c = 1, n, 1
    return t, z, c, int(imp.getHeight()), int(imp.getWidth())


def imageplus_to_numpy(imp: Any, squeeze: bool = True) -> tuple[np.ndarray, Calibration, str]:
    """Copy an 8/16/32-bit ImagePlus (any hyperstack) into a new numpy array.

    Returns ``(array, calibration, axes)``. ``axes`` is a subsequence of ``"TZCYX"`` (ImageJ's own
    order, so the copy is sequential); with ``squeeze`` T, Z and C of length 1 are dropped, so a
    plain stack is ``"ZYX"`` and a single image ``"YX"``.
    """
    ensure_jvm()
    dtype = _dtype_of(imp)
    shape = _dimensions(imp)
    out = np.empty(shape, dtype=dtype)
    stack = imp.getStack()
    plane = shape[3] * shape[4]
    planes = out.reshape(-1, plane)
    stage = _Stage(dtype, plane)
    for i in range(len(planes)):
        pixels = stack.getPixels(i + 1)
        if pixels is None or len(pixels) != plane:
            raise InputDataError(f"{imp.getTitle()}: plane {i + 1} could not be read (virtual stack file missing?); "
                                 "open the image again or Image > Duplicate… it into memory")
        stage.from_java(pixels, planes[i])
    axes = AXES
    if squeeze:
        keep = [i for i, n in enumerate(shape) if n > 1 or i >= 3]
        out = out.reshape([shape[i] for i in keep])
        axes = "".join(AXES[i] for i in keep)
    return out, read_calibration(imp), axes


# -- numpy -> ImagePlus --------------------------------------------------------------------------

def _default_axes(ndim: int) -> str:
    if ndim in (2, 3):
        return "ZYX"[3 - ndim:]
    raise InputDataError(f"a {ndim}-D array needs explicit axes, e.g. axes='CZYX' or 'TZCYX'")


def _to_tzcyx(array: np.ndarray, axes: str) -> np.ndarray:
    """A (T, Z, C, Y, X) view of ``array`` (no copy; planes may be non-contiguous)."""
    axes = axes.upper()
    if len(axes) != array.ndim or len(set(axes)) != len(axes) or not set(axes) <= set(AXES) \
            or "Y" not in axes or "X" not in axes:
        raise InputDataError(f"axes {axes!r} do not describe a {array.ndim}-D array {array.shape}; use one letter per "
                             "dimension from T, Z, C, Y, X, including Y and X (e.g. 'ZYX', 'CZYX', 'TZCYX')")
    missing = [a for a in AXES if a not in axes]
    full = array.reshape(array.shape + (1,) * len(missing))
    order = axes + "".join(missing)
    return full.transpose([order.index(a) for a in AXES])


def _planes(data: np.ndarray) -> Iterator[np.ndarray]:
    """The (Y, X) planes of a (T, Z, C, Y, X) array in ImageJ's stack order, flattened; a plane is
    copied only when it is not contiguous (another axis order), so no whole-array copy is made."""
    t, z, c = data.shape[:3]
    for ti in range(t):
        for zi in range(z):
            for ci in range(c):
                yield data[ti, zi, ci].reshape(-1)


def _target_dtype(array: np.ndarray) -> np.dtype[Any]:
    if array.dtype in _SUPPORTED:
        return array.dtype
    if array.dtype == np.float64:
        return np.dtype(np.float32)  # ImageJ has no 64-bit float; engine outputs often are float64
    raise InputDataError(f"pixel type {array.dtype} has no ImageJ equivalent; convert to uint8, uint16 or "
                         "float32 first (ImageJ's 8-, 16- and 32-bit images)")


def numpy_to_imageplus(array: Any, title: str, calibration: Calibration | None = None,
                       axes: str | None = None,
                       display_range: tuple[float, float] | None = None) -> Any:
    """Copy a uint8/uint16/float32 array into a new ImagePlus (hyperstack when it has C or T).

    ``axes`` names the dimensions with letters from T, Z, C, Y, X in any order (default ``"YX"``
    for 2-D and ``"ZYX"`` for 3-D arrays). float64 is stored as 32-bit. ``display_range`` sets
    the initial contrast (ImageJ's default uses the first plane only).
    """
    ensure_jvm()
    arr = np.asarray(array)
    dtype = _target_dtype(arr)
    data = _to_tzcyx(arr, axes or _default_axes(arr.ndim))
    t, z, c, h, w = data.shape
    if data.size == 0:
        raise InputDataError(f"cannot make an image of shape {arr.shape}: it is empty")
    from jpype import JArray

    element = JArray(_java_element(dtype))
    stack = jclass("ij.ImageStack")(w, h)
    stage = _Stage(dtype, h * w)  # float64 planes become float32 as they enter the stage
    for plane in _planes(data):
        pixels = element(h * w)
        stage.to_java(plane, pixels)
        stack.addSlice("", pixels)
    imp = jclass("ij.ImagePlus")(title, stack)
    imp.setDimensions(c, z, t)
    if sum(n > 1 for n in (c, z, t)) > 1 or c > 1 or t > 1:
        imp.setOpenAsHyperStack(True)
    if calibration is not None:
        apply_calibration(imp, calibration)
    if display_range is not None:
        imp.setDisplayRange(float(display_range[0]), float(display_range[1]))
    return imp


def numpy_into_imageplus(array: Any, imp: Any, axes: str | None = None, first_plane: int = 0) -> None:
    """Overwrite planes of an existing ImagePlus in place (no Java allocation), then refresh it.

    ``array`` (axes as in :func:`numpy_to_imageplus`, dtype equal to the image's) fills stack planes
    ``first_plane``, ``first_plane + 1``, … in ImageJ's order; e.g. a (Z, Y, X) slab predicted for
    slices z0…z1 of a single-channel stack goes in with ``first_plane=z0``.
    """
    ensure_jvm()
    dtype = _dtype_of(imp)
    arr = np.asarray(array)
    if arr.dtype != dtype:
        raise InputDataError(f"{imp.getTitle()}: cannot write {arr.dtype} pixels into a {imp.getBitDepth()}-bit image")
    data = _to_tzcyx(arr, axes or _default_axes(arr.ndim))
    h, w = data.shape[3:]
    if (h, w) != (int(imp.getHeight()), int(imp.getWidth())):
        raise InputDataError(f"{imp.getTitle()}: planes are {w}×{h} but the image is {imp.getWidth()}×{imp.getHeight()}")
    n_planes = data.shape[0] * data.shape[1] * data.shape[2]
    stack = imp.getStack()
    if first_plane < 0 or first_plane + n_planes > int(stack.getSize()):
        raise InputDataError(f"{imp.getTitle()}: planes {first_plane}…{first_plane + n_planes - 1} do not fit in "
                             f"its {stack.getSize()} planes")
    stage = _Stage(dtype, h * w)
    for i, plane in enumerate(_planes(data)):
        stage.to_java(plane, stack.getPixels(first_plane + i + 1))
    imp.updateAndDraw()


# -- single volumes and masks for the engine ------------------------------------------------------

def image_to_volume(imp: Any) -> tuple[np.ndarray, Calibration]:
    """A (Z, Y, X) volume and its calibration from a single-channel, single-frame image."""
    ensure_jvm()
    title = str(imp.getTitle())
    _dtype_of(imp)  # RGB check first: its message is the most useful one
    t, z, c, _, _ = _dimensions(imp)
    if c > 1:
        raise InputDataError(f"{title}: has {c} channels; segment one channel at a time "
                             "(Image > Color > Split Channels, or Image > Duplicate… with one channel)")
    if t > 1:
        hint = ("if these are Z slices, fix the dimensions in Image > Properties… (slices vs frames)" if z == 1
                else "keep one frame with Image > Duplicate…")
        raise InputDataError(f"{title}: has {t} time frames; a single volume is needed — {hint}")
    array, calibration, _ = imageplus_to_numpy(imp, squeeze=False)
    return array.reshape(z, array.shape[3], array.shape[4]), calibration


def mask_from_imageplus(imp: Any, name: str | None = None) -> np.ndarray:
    """A uint8 0/1 (Z, Y, X) mask: non-zero is foreground, with a warning when that is a guess.

    Warns (:class:`EmsegWarning`) when the image has more than two distinct values or has no zero
    (everything would be foreground), since then a threshold or an inverted mask was probably meant.
    Unlike the engine's strict ``as_binary_mask`` this accepts any image, because Fiji users
    often draw masks in 8-bit images with antialiased or label values.
    """
    label = name or str(imp.getTitle())
    volume, _ = image_to_volume(imp)
    if volume.dtype.kind == "f":
        fg = (volume > 0) | (volume < 0)  # NaN is background
    else:
        fg = volume != 0
    nonzero = volume[fg]
    n_fg = nonzero.size
    if n_fg:
        lo, hi = nonzero.min(), nonzero.max()
        if lo != hi:
            warnings.warn(f"{label}: mask is not binary (non-zero values from {_fmt(lo)} to {_fmt(hi)}); every non-zero "
                          "pixel counts as foreground — threshold it first if that is wrong (Image > Adjust > "
                          "Threshold…, then Process > Binary > Convert to Mask)", EmsegWarning, stacklevel=2)
        elif n_fg == volume.size:
            warnings.warn(f"{label}: every pixel is {_fmt(lo)}, so the whole mask is foreground; background must be 0 "
                          "(invert it with Edit > Invert if it is inverted)", EmsegWarning, stacklevel=2)
    return fg.view(np.uint8)


def _fmt(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"
