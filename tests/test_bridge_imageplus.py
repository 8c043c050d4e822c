"""ImagePlus <-> numpy against real ImageJ1: bit-exact, ImageJ's own axis semantics, calibration."""

from __future__ import annotations

import gc
import math
import warnings
import weakref

import numpy as np
import pytest
from bridge_fixtures import ij1  # noqa: F401 - session fixture

from fiji_emseg.bridge import imageplus as ipm
from fiji_emseg.bridge.imageplus import (
    image_to_volume,
    imageplus_to_numpy,
    mask_from_imageplus,
    numpy_into_imageplus,
    numpy_to_imageplus,
)
from fiji_emseg.bridge.jvm import jclass
from fiji_emseg.engine.data.volume_io import Calibration
from fiji_emseg.errors import EmsegWarning, InputDataError

pytestmark = pytest.mark.imagej

RNG = np.random.default_rng(0)


def _random(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype == np.float32:
        a = RNG.normal(0, 1e3, shape).astype(np.float32)
        flat = a.reshape(-1)
        flat[:4] = [np.nan, -np.inf, np.inf, -0.0]  # special values must survive too
        flat[4:6] = [np.finfo(np.float32).max, np.finfo(np.float32).tiny]
        return a
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, int(info.max) + 1, shape, dtype=dtype)
    a.reshape(-1)[:2] = [info.max, info.min]  # e.g. 65535 is Java short -1
    return a


LAYOUTS = {  # axes: shape
    "YX": (7, 9),
    "ZYX": (5, 7, 9),
    "CZYX": (3, 4, 7, 9),
    "TZCYX": (2, 3, 4, 7, 9),
    "TYX": (3, 7, 9),
    "ZCYX": (4, 2, 7, 9),
    "CYX": (2, 7, 9),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32], ids=["8bit", "16bit", "32bit"])
@pytest.mark.parametrize("axes", list(LAYOUTS))
def test_round_trip_is_bit_exact(ij1, dtype: type, axes: str) -> None:  # noqa: F811
    shape = LAYOUTS[axes]
    a = _random(shape, np.dtype(dtype))
    imp = numpy_to_imageplus(a, f"rt {axes}", axes=axes)
    assert imp.getBitDepth() == {np.uint8: 8, np.uint16: 16, np.float32: 32}[dtype]
    dims = dict(zip(axes, shape))
    assert (imp.getNChannels(), imp.getNSlices(), imp.getNFrames()) == (dims.get("C", 1), dims.get("Z", 1),
                                                                        dims.get("T", 1))
    back, _, back_axes = imageplus_to_numpy(imp)
    # returned in ImageJ's TZCYX order without singleton axes
    expected = np.transpose(a, [axes.index(x) for x in back_axes])
    assert back.dtype == a.dtype and back.shape == expected.shape
    assert back.tobytes() == expected.tobytes()  # bit-exact, NaN payloads and -0.0 included


def test_uint16_bit_patterns_are_javas_shorts(ij1) -> None:  # noqa: F811
    a = np.array([[0, 1, 32767, 32768, 40000, 65535]], dtype=np.uint16)
    imp = numpy_to_imageplus(a, "u16")
    ip = imp.getProcessor()
    assert [ip.get(x, 0) for x in range(6)] == [0, 1, 32767, 32768, 40000, 65535]  # ImageJ reads them unsigned
    java_shorts = list(ip.getPixels())
    assert java_shorts == [0, 1, 32767, -32768, 40000 - 65536, -1]  # the raw Java short bit patterns


def test_numpy_indexing_matches_imagej_coordinates(ij1) -> None:  # noqa: F811
    """numpy [t, z, c, y, x] is ImageJ's (x, y) at channel c+1, slice z+1, frame t+1 — both ways."""
    imp = jclass("ij.IJ").createHyperStack("hs", 11, 7, 3, 4, 2, 16)  # w, h, C, Z, T, bit depth
    imp.setPosition(2, 3, 2)  # c, z, t (1-based)
    imp.getProcessor().set(9, 5, 4242)
    a, _, axes = imageplus_to_numpy(imp)
    assert axes == "TZCYX" and a.shape == (2, 4, 3, 7, 11)
    assert a[1, 2, 1, 5, 9] == 4242 and int(a.sum()) == 4242

    z = np.zeros((4, 7, 11), dtype=np.float32)
    z[3, 6, 10] = 1.5
    imp = numpy_to_imageplus(z, "zyx")
    assert imp.getStack().getProcessor(4).getPixelValue(10, 6) == 1.5
    assert imp.getStack().getProcessor(1).getPixelValue(10, 6) == 0.0


def test_calibration_both_ways(ij1) -> None:  # noqa: F811
    cal = Calibration((0.05, 0.004, 0.0045), "micron")
    imp = numpy_to_imageplus(np.zeros((3, 4, 5), np.uint8), "cal", cal)
    jcal = imp.getCalibration()
    assert (jcal.pixelWidth, jcal.pixelHeight, jcal.pixelDepth) == (0.0045, 0.004, 0.05)
    assert str(jcal.getUnit()) == "micron"
    assert imageplus_to_numpy(imp)[1] == cal
    for unit in ("nm", "µm", "pixel"):
        c = Calibration((2.0, 1.0, 1.0), unit)
        assert imageplus_to_numpy(numpy_to_imageplus(np.zeros((2, 3, 3), np.uint8), "u", c))[1] == c


def test_calibration_set_in_imagej_is_read(ij1) -> None:  # noqa: F811
    imp = jclass("ij.IJ").createImage("c", "8-bit black", 8, 8, 3)
    c = imp.getCalibration()
    c.pixelWidth, c.pixelHeight, c.pixelDepth = 5.0, 6.0, 30.0
    c.setUnit("nm")
    read = imageplus_to_numpy(imp)[1]
    assert read == Calibration((30.0, 6.0, 5.0), "nm")


def test_invalid_voxel_depth_falls_back_with_warning(ij1) -> None:  # noqa: F811
    imp = jclass("ij.IJ").createImage("d", "8-bit black", 4, 4, 2)
    imp.getCalibration().pixelDepth = 0.0
    with pytest.warns(EmsegWarning, match="Image > Properties"):
        cal = imageplus_to_numpy(imp)[1]
    assert cal.voxel_size == (1.0, 1.0, 1.0)


def test_multi_chunk_staging_is_exact(ij1, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(ipm, "STAGE_BYTES", 64)  # planes of 7×9×4 bytes go in 16-element pieces
    a = _random((3, 7, 9), np.dtype(np.float32))
    back = imageplus_to_numpy(numpy_to_imageplus(a, "chunks"))[0]
    assert back.tobytes() == a.tobytes()


def test_copies_do_not_pin_numpy_memory(ij1) -> None:  # noqa: F811
    """A Java buffer keeps the numpy array it views alive until Java's GC; the bridge must not
    view caller arrays (multi-GB volumes would stay pinned)."""
    a = np.ones((4, 64, 64), np.uint16)
    ref = weakref.ref(a)
    imp = numpy_to_imageplus(a, "pin")
    out = imageplus_to_numpy(imp)[0]
    out_ref = weakref.ref(out)
    del a, out
    gc.collect()
    assert ref() is None and out_ref() is None


def test_layout_other_than_imagej_order_and_float64(ij1) -> None:  # noqa: F811
    a = RNG.random((9, 7, 3))  # Y, X, C as float64
    imp = numpy_to_imageplus(a, "yxc", axes="YXC")
    assert imp.getBitDepth() == 32 and imp.getNChannels() == 3
    back, _, axes = imageplus_to_numpy(imp)
    assert axes == "CYX"
    np.testing.assert_array_equal(back, np.moveaxis(a, 2, 0).astype(np.float32))


@pytest.mark.parametrize("array, axes, match", [
    (np.zeros((2, 2, 3, 3), np.uint8), None, "explicit axes"),
    (np.zeros((3, 3), np.uint8), "ZYX", "do not describe"),
    (np.zeros((3, 3, 3), np.uint8), "ZZX", "do not describe"),
    (np.zeros((3, 3), np.int16), None, "uint8, uint16 or float32"),
    (np.zeros((0, 3, 3), np.uint8), None, "empty"),
])
def test_bad_arrays_are_rejected(ij1, array: np.ndarray, axes: str | None, match: str) -> None:  # noqa: F811
    with pytest.raises(InputDataError, match=match):
        numpy_to_imageplus(array, "bad", axes=axes)


def test_write_into_existing_image(ij1) -> None:  # noqa: F811
    imp = numpy_to_imageplus(np.zeros((6, 5, 4), np.uint16), "dest")
    slab = _random((2, 5, 4), np.dtype(np.uint16))
    numpy_into_imageplus(slab, imp, first_plane=3)
    back = imageplus_to_numpy(imp)[0]
    assert back[3:5].tobytes() == slab.tobytes()
    assert not back[:3].any() and not back[5:].any()
    with pytest.raises(InputDataError, match="cannot write float32"):
        numpy_into_imageplus(slab.astype(np.float32), imp)
    with pytest.raises(InputDataError, match="do not fit"):
        numpy_into_imageplus(slab, imp, first_plane=5)


# -- image_to_volume / mask_from_imageplus ---------------------------------------------------------

def test_image_to_volume_returns_zyx_and_calibration(ij1) -> None:  # noqa: F811
    a = _random((4, 6, 5), np.dtype(np.uint16))
    cal = Calibration((0.03, 0.01, 0.01), "micron")
    vol, got = image_to_volume(numpy_to_imageplus(a, "vol", cal))
    assert vol.shape == (4, 6, 5) and vol.tobytes() == a.tobytes() and got == cal
    single, _ = image_to_volume(numpy_to_imageplus(a[0], "2d"))
    assert single.shape == (1, 6, 5)


def test_image_to_volume_explains_rgb_channels_and_frames(ij1) -> None:  # noqa: F811
    ij = jclass("ij.IJ")
    with pytest.raises(InputDataError, match=r"RGB.*Image > Type > 8-bit"):
        image_to_volume(ij.createImage("rgb", "RGB black", 8, 8, 1))
    with pytest.raises(InputDataError, match="3 channels.*Split Channels"):
        image_to_volume(numpy_to_imageplus(np.zeros((3, 2, 4, 4), np.uint8), "ch", axes="CZYX"))
    with pytest.raises(InputDataError, match=r"5 time frames.*Image > Properties"):
        image_to_volume(numpy_to_imageplus(np.zeros((5, 4, 4), np.uint8), "tt", axes="TYX"))


def test_mask_binary_images_give_no_warning(ij1) -> None:  # noqa: F811
    m = np.zeros((2, 5, 5), np.uint8)
    m[:, 1:3, 1:4] = 255
    for values in (m, m // 255):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = mask_from_imageplus(numpy_to_imageplus(values, "bin"))
        assert out.dtype == np.uint8 and out.shape == (2, 5, 5)
        np.testing.assert_array_equal(out, m // 255)


def test_mask_non_binary_warns_and_uses_non_zero(ij1) -> None:  # noqa: F811
    labels = np.zeros((1, 4, 4), np.uint16)
    labels[0, 0, :3] = [1, 2, 300]
    with pytest.warns(EmsegWarning, match=r"labels: mask is not binary \(non-zero values from 1 to 300\)"):
        out = mask_from_imageplus(numpy_to_imageplus(labels, "lbl"), "labels")
    np.testing.assert_array_equal(out, (labels != 0).astype(np.uint8))


def test_mask_all_foreground_warns(ij1) -> None:  # noqa: F811
    with pytest.warns(EmsegWarning, match="whole mask is foreground.*Edit > Invert"):
        out = mask_from_imageplus(numpy_to_imageplus(np.full((1, 3, 3), 255, np.uint8), "inv"))
    assert out.all()


def test_mask_float_nan_is_background(ij1) -> None:  # noqa: F811
    f = np.array([[[0.0, np.nan, 1.0, -1.0]]], np.float32)
    with pytest.warns(EmsegWarning, match="from -1 to 1"):
        out = mask_from_imageplus(numpy_to_imageplus(f, "f"))
    assert out.tolist() == [[[0, 0, 1, 1]]]
    assert not math.isnan(float(out.sum()))
