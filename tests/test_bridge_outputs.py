"""Result images: 8-bit masks, 32-bit probabilities, the overlay composite, showing them."""

from __future__ import annotations

import numpy as np
import pytest
from bridge_fixtures import ij1, imagej_app, needs_display, wait_for  # noqa: F401

from fiji_emseg.bridge import outputs
from fiji_emseg.bridge.imageplus import imageplus_to_numpy
from fiji_emseg.bridge.jvm import jclass
from fiji_emseg.engine.data.volume_io import Calibration
from fiji_emseg.errors import InputDataError

pytestmark = pytest.mark.imagej

CAL = Calibration((0.04, 0.008, 0.008), "micron")
CLASSES = ["mito", "er"]


def _masks() -> np.ndarray:
    m = np.zeros((2, 3, 20, 30), np.uint8)
    m[0, :, 2:8, 3:12] = 1
    m[1, 1:, 10:18, 15:28] = 1
    return m


def test_masks_are_8bit_0_255_per_class_with_titles_and_calibration(ij1) -> None:  # noqa: F811
    m = _masks()
    imps = outputs.masks_to_imageplus(m.astype(bool), "cell 3.tif", CLASSES, CAL)
    assert [str(i.getTitle()) for i in imps] == ["cell 3.tif pred mito", "cell 3.tif pred er"]
    for k, imp in enumerate(imps):
        assert imp.getBitDepth() == 8 and imp.getNSlices() == 3
        assert imp.getProcessor().isBinary()  # ImageJ agrees it is a binary mask
        data, cal, axes = imageplus_to_numpy(imp)
        assert axes == "ZYX" and cal == CAL
        np.testing.assert_array_equal(data, m[k] * 255)


def test_single_class_mask_may_be_zyx(ij1) -> None:  # noqa: F811
    (imp,) = outputs.masks_to_imageplus(_masks()[0] * 255, "em", ["mito"])
    assert str(imp.getTitle()) == "em pred mito"
    with pytest.raises(InputDataError, match="one \\(Z, Y, X\\) volume per class"):
        outputs.masks_to_imageplus(_masks(), "em", ["only one"])


def test_probabilities_are_32bit_with_unit_display_range(ij1) -> None:  # noqa: F811
    p = np.random.default_rng(1).random((2, 3, 20, 30))  # float64 from the engine
    imps = outputs.probabilities_to_imageplus(p, "em", CLASSES, CAL)
    assert [str(i.getTitle()) for i in imps] == ["em prob mito", "em prob er"]
    for k, imp in enumerate(imps):
        assert imp.getBitDepth() == 32
        assert (imp.getDisplayRangeMin(), imp.getDisplayRangeMax()) == (0.0, 1.0)
        np.testing.assert_array_equal(imageplus_to_numpy(imp)[0], p[k].astype(np.float32))


def test_overlay_composite_channels_colours_and_data(ij1) -> None:  # noqa: F811
    img = np.random.default_rng(2).integers(0, 4000, (3, 20, 30), dtype=np.uint16)
    comp = outputs.overlay_composite(img, _masks(), "em", CLASSES, CAL)
    composite = jclass("ij.CompositeImage")
    assert isinstance(comp, composite) and comp.getMode() == composite.COMPOSITE
    assert str(comp.getTitle()) == "em overlay" and comp.getNChannels() == 3 and comp.getNSlices() == 3
    data, cal, axes = imageplus_to_numpy(comp)
    assert axes == "ZCYX" and cal == CAL
    np.testing.assert_array_equal(data[:, 0], img)
    np.testing.assert_array_equal(data[:, 1:].transpose(1, 0, 2, 3), _masks() * 255)
    from jpype import JInt

    def colour(channel: int) -> int:
        return int(comp.getChannelLut(channel).getRGB(JInt(255))) & 0xFFFFFF

    assert colour(1) == 0xFFFFFF  # EM image in grey
    assert colour(2) == 0xFF00FF and colour(3) == 0x00FF00  # magenta, green
    assert (comp.getChannelLut(2).min, comp.getChannelLut(2).max) == (0.0, 255.0)


def test_overlay_rejects_mismatched_shapes(ij1) -> None:  # noqa: F811
    with pytest.raises(InputDataError, match="differ in shape"):
        outputs.overlay_composite(np.zeros((3, 10, 10), np.uint8), _masks(), "em", CLASSES)


def test_show_is_a_no_op_when_headless(ij1, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    imp = outputs.mask_to_imageplus(_masks()[0], "never shown")
    monkeypatch.setattr(outputs, "is_headless", lambda: True)
    assert outputs.show(imp) is False
    assert imp.getWindow() is None


@needs_display()
@pytest.mark.gui
def test_show_opens_an_image_window(imagej_app) -> None:  # noqa: F811
    imp = outputs.mask_to_imageplus(_masks()[1], "em pred shown-test", CAL)
    assert outputs.show(imp) is True
    assert wait_for(lambda: jclass("ij.WindowManager").getImage("em pred shown-test") is not None)
    assert imp.getWindow() is not None and imp.getWindow().isVisible()
    imp.changes = False
    imp.close()
