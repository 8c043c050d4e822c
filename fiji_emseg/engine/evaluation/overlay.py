"""PNG overlays of masks on an EM slice, for a quick visual check of a prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.files import atomic_path

__all__ = ["CLASS_COLOURS", "blend_overlay", "write_overlay_png"]

#: Distinct, colour-blind-friendly colours (Okabe–Ito), one per class.
CLASS_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167))


def blend_overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (Y, X, 3): the slice in grey with each class's mask (C, Y, X) tinted in its colour."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for k, m in enumerate(masks):
        colour = np.array(CLASS_COLOURS[k % len(CLASS_COLOURS)], dtype=np.float32)
        sel = m.astype(bool)
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
    return rgb.astype(np.uint8)


def write_overlay_png(path: str | Path, image: np.ndarray, panels: Sequence[tuple[str, np.ndarray]],
                      class_names: Sequence[str], title: str = "", overwrite: bool = False) -> Path:
    """One row of panels: the raw slice, then each (label, masks (C, Y, X)) overlay, with a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = 1 + len(panels)
    fig = Figure(figsize=(4 * n, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("EM slice", fontsize=10)
    for ax, (label, masks) in zip(axes[1:], panels, strict=True):
        ax.imshow(blend_overlay(image, masks))
        ax.set_title(label, fontsize=10)
    for ax in axes:
        ax.axis("off")
    handles = [Patch(color=np.array(CLASS_COLOURS[k % len(CLASS_COLOURS)]) / 255, label=c) for k, c in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
