"""Result images for Fiji: per-class masks, probability maps, an overlay composite, and showing them.

Conventions (what users see in the window list and what macros refer to):

- masks: 8-bit, 0 = background, 255 = foreground (ImageJ's binary convention, so Analyze
  Particles, 3D Objects Counter and Binary commands work on them), titled ``<image> pred <class>``;
- probability maps: 32-bit in [0, 1], titled ``<image> prob <class>``;
- overlay: a ``CompositeImage`` titled ``<image> overlay`` whose first channel is the EM image
  (grey) and whose next channels are the class masks, one colour each. A composite rather than an
  ``ij.gui.Overlay`` of ``ImageRoi``s because it is real pixel data: it survives Save As TIFF, the
  channels can be toggled in Image > Color > Channels Tool, and it needs no per-slice ROIs.

All carry the source image's voxel calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine.data.volume_io import Calibration
from ..errors import InputDataError
from .awt import run_on_edt
from .imageplus import numpy_to_imageplus
from .jvm import ensure_jvm, is_headless, jclass

__all__ = [
    "CLASS_COLORS",
    "mask_title",
    "mask_to_imageplus",
    "masks_to_imageplus",
    "overlay_composite",
    "overlay_title",
    "probabilities_to_imageplus",
    "probability_title",
    "show",
]

#: Class colours for the overlay (RGB), chosen to stand out on grey EM and from each other.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 255), (0, 255, 0), (0, 255, 255), (255, 255, 0), (255, 0, 0), (0, 128, 255), (255, 128, 0))


def mask_title(image_title: str, class_name: str) -> str:
    return f"{image_title} pred {class_name}"


def probability_title(image_title: str, class_name: str) -> str:
    return f"{image_title} prob {class_name}"


def overlay_title(image_title: str) -> str:
    return f"{image_title} overlay"


def _as_class_stack(data: Any, class_names: Sequence[str], what: str) -> np.ndarray:
    """(C, Z, Y, X) from (C, Z, Y, X), or from (Z, Y, X)/(Y, X) when there is one class."""
    arr = np.asarray(data)
    if arr.ndim in (2, 3) and len(class_names) == 1:
        arr = arr.reshape((1,) + (1,) * (3 - arr.ndim) + arr.shape)
    if arr.ndim != 4 or arr.shape[0] != len(class_names):
        raise InputDataError(f"{what}: expected one (Z, Y, X) volume per class {list(class_names)}, "
                             f"got shape {arr.shape}")
    return arr


def _binary_255(mask: np.ndarray) -> np.ndarray:
    """uint8 0/255 from any mask (non-zero is foreground)."""
    return np.multiply(mask != 0, 255, dtype=np.uint8)


def mask_to_imageplus(mask: Any, title: str, calibration: Calibration | None = None) -> Any:
    """An 8-bit 0/255 ImagePlus from a (Z, Y, X) or (Y, X) mask (bool, 0/1 or 0/255)."""
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise InputDataError(f"{title}: a mask must be (Z, Y, X) or (Y, X), got shape {arr.shape}")
    return numpy_to_imageplus(_binary_255(arr), title, calibration, display_range=(0, 255))


def masks_to_imageplus(masks: Any, image_title: str, class_names: Sequence[str],
                       calibration: Calibration | None = None) -> list[Any]:
    """One 8-bit 0/255 ImagePlus per class, titled ``<image> pred <class>``; masks is (C, Z, Y, X)."""
    stack = _as_class_stack(masks, class_names, f"{image_title} masks")
    return [mask_to_imageplus(stack[i], mask_title(image_title, name), calibration)
            for i, name in enumerate(class_names)]


def probabilities_to_imageplus(probabilities: Any, image_title: str, class_names: Sequence[str],
                               calibration: Calibration | None = None) -> list[Any]:
    """One 32-bit ImagePlus (display range 0–1) per class, titled ``<image> prob <class>``."""
    stack = _as_class_stack(probabilities, class_names, f"{image_title} probabilities")
    return [numpy_to_imageplus(stack[i].astype(np.float32, copy=False), probability_title(image_title, name),
                               calibration, display_range=(0.0, 1.0))
            for i, name in enumerate(class_names)]


def _image_range(image: np.ndarray) -> tuple[float, float]:
    """Contrast for the grey channel: 0.1–99.9 percentiles of a subsample (robust to outliers)."""
    sample = image.reshape(-1)[:: max(1, image.size // 1_000_000)]
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def overlay_composite(image: Any, masks: Any, image_title: str, class_names: Sequence[str],
                      calibration: Calibration | None = None,
                      colors: Sequence[tuple[int, int, int]] = CLASS_COLORS) -> Any:
    """A composite of the EM image (grey) and one coloured channel per class mask (see module doc).

    ``image`` is (Z, Y, X) or (Y, X) uint8/uint16/float32; ``masks`` (C, Z, Y, X), non-zero =
    foreground. Mask channels hold 0/255 in the image's pixel type (a composite has one type).
    """
    ensure_jvm()
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    stack = _as_class_stack(masks, class_names, f"{image_title} masks")
    if stack.shape[1:] != img.shape:
        raise InputDataError(f"{image_title}: masks {stack.shape[1:]} and image {img.shape} differ in shape (Z, Y, X)")
    if len(class_names) + 1 > int(jclass("ij.CompositeImage").MAX_CHANNELS):
        raise InputDataError(f"{image_title}: too many classes ({len(class_names)}) for one composite image")
    channels = np.empty((img.shape[0], len(class_names) + 1) + img.shape[1:], dtype=img.dtype)
    channels[:, 0] = img
    for i in range(len(class_names)):
        channels[:, i + 1] = np.multiply(stack[i] != 0, 255, dtype=img.dtype)
    imp = numpy_to_imageplus(channels, overlay_title(image_title), calibration, axes="ZCYX")
    composite_cls = jclass("ij.CompositeImage")
    comp = composite_cls(imp, composite_cls.COMPOSITE)
    lut_cls, color_cls = jclass("ij.process.LUT"), jclass("java.awt.Color")
    luts = [lut_cls.createLutFromColor(color_cls.WHITE)]
    luts[0].min, luts[0].max = _image_range(img)
    for i in range(len(class_names)):
        r, g, b = colors[i % len(colors)]
        lut = lut_cls.createLutFromColor(color_cls(r, g, b))
        lut.min, lut.max = 0.0, 255.0
        luts.append(lut)
    from jpype import JArray

    comp.setLuts(JArray(lut_cls)(luts))
    comp.setTitle(overlay_title(image_title))
    return comp


def show(imp: Any, wait: bool = True) -> bool:
    """Show an image window on the AWT thread; does nothing when headless. Returns whether shown."""
    ensure_jvm()
    if is_headless():
        return False
    run_on_edt(imp.show, wait=wait)
    return True
