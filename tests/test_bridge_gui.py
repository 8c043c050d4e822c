"""A whole ImageJ GUI session under Xvfb: image window in, mask/overlay/results windows out, screenshot.

Run with a display (CI: ``xvfb-run -a python -m pytest``); skips without one. The screenshot path
is printed; it is also kept under ``runs/screenshots/`` (or ``$EMSEG_SCREENSHOT_DIR``).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from bridge_fixtures import (  # noqa: F401
    drain_edt,
    ij1,
    imagej_app,
    needs_display,
    screenshot,
    wait_for,
)

from fiji_emseg.bridge.awt import run_on_edt
from fiji_emseg.bridge.imageplus import image_to_volume, numpy_to_imageplus
from fiji_emseg.bridge.jvm import jclass
from fiji_emseg.bridge.outputs import masks_to_imageplus, overlay_composite, show
from fiji_emseg.bridge.progress import FijiProgress
from fiji_emseg.bridge.results import find_table, show_table
from fiji_emseg.engine.data.volume_io import Calibration

pytestmark = [pytest.mark.imagej, pytest.mark.gui, needs_display()]


def _synthetic_em(z: int = 6, size: int = 192) -> np.ndarray:
    """Bright cytoplasm with dark round "mitochondria" and a dark thin "membrane" band."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:size, :size]
    em = np.full((z, size, size), 40000, np.float64)
    for cy, cx, r in ((50, 60, 22), (130, 140, 28), (140, 45, 16)):
        em[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 9000
    em[:, :, 95:99] = 20000
    em += rng.normal(0, 1500, em.shape)
    return np.clip(em, 0, 65535).astype(np.uint16)


def test_gui_session_produces_windows_and_a_screenshot(imagej_app, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    wm = jclass("ij.WindowManager")
    cal = Calibration((0.03, 0.008, 0.008), "micron")
    show(numpy_to_imageplus(_synthetic_em(), "em stack", cal, display_range=(0, 50000)))
    assert wait_for(lambda: wm.getImage("em stack") is not None)

    # what a command does on an open window: read it by title, segment, show the results
    em = wm.getImage("em stack")
    volume, got_cal = image_to_volume(em)
    assert got_cal == cal
    with FijiProgress("Predict EM Model", min_interval_s=0.0) as progress:
        masks = np.zeros((2,) + volume.shape, np.uint8)
        for z in range(volume.shape[0]):
            masks[0, z] = volume[z] < 15000
            masks[1, z] = (volume[z] >= 15000) & (volume[z] < 28000)
            progress.on_progress(z + 1, volume.shape[0], f"Predicting slice {z + 1}/{volume.shape[0]}")
        status = str(jclass("ij.ImageJ").getStatusBarText())
    assert status == f"Predicting slice {volume.shape[0]}/{volume.shape[0]}"
    for imp in masks_to_imageplus(masks, "em stack", ["mito", "membrane"], cal):
        show(imp)
    show(overlay_composite(volume, masks, "em stack", ["mito", "membrane"], cal))
    metrics = pd.DataFrame({"class": ["mito", "membrane"], "voxels": masks.reshape(2, -1).sum(1),
                            "volume (µm³)": masks.reshape(2, -1).sum(1) * cal.voxel_volume},
                           index=["em stack", "em stack"])
    show_table(metrics, "em stack — run 1 metrics")

    expected = ["em stack", "em stack pred mito", "em stack pred membrane", "em stack overlay"]
    assert wait_for(lambda: all(wm.getImage(t) is not None for t in expected))
    assert all(wm.getImage(t).getWindow().isShowing() for t in expected)
    assert wait_for(lambda: wm.getWindow("em stack — run 1 metrics") is not None)
    assert find_table("em stack — run 1 metrics").size() == 2

    # image windows side by side, off the event thread as ImageJ runs menu commands (tiling a plot
    # window, such as Train EM Model's live plot from an earlier test, waits for the event thread)
    for title in [str(t) for t in (wm.getImageTitles() or [])]:
        if title.startswith("Train EM Model: loss"):  # ImageJ 1.53t's Tile hangs on a plot window left open
            wm.getImage(title).close()
    jclass("ij.plugin.WindowOrganizer")().run("tile")

    def arrange() -> None:
        wm.getWindow("em stack — run 1 metrics").setBounds(10, 420, 640, 160)  # the table below them

    run_on_edt(arrange, wait=True)
    drain_edt()
    time.sleep(1.0)  # let AWT paint before the X server is read
    path = screenshot("bridge_gui_session")
    with capsys.disabled():
        print(f"\nGUI screenshot: {path}")

    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1024, 1280)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    magenta = (r - g > 120) & (b - g > 120)  # the overlay's mito channel over dark EM
    assert magenta.sum() > 500, "the overlay window is not visible on the screenshot"
    white = (r > 240) & (g > 240) & (b > 240)
    assert white.sum() > 2000  # the white foreground of the mask windows
