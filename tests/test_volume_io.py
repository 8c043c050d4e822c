"""volume_io and files: TIFF/npy/zarr reading with calibration, lazy slicing, atomic and streaming output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from fiji_emseg.engine.data.files import atomic_path, atomic_write_text
from fiji_emseg.engine.data.volume_io import (
    Calibration,
    LazyVolume,
    StackWriter,
    open_volume,
    read_volume,
    write_volume,
)
from fiji_emseg.errors import InputDataError, OutputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _stack(dtype: Any, shape: tuple[int, ...] = (5, 24, 32), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def _leftovers(folder: Path) -> list[str]:
    """Temporary '.name.XXXX.part.ext' files an interrupted write could leave behind."""
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


# ---------------------------------------------------------------- TIFF reading


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_round_trip_keeps_bit_depth_and_values(tmp_path: Path, dtype: Any) -> None:
    data = _stack(dtype)
    write_volume(tmp_path / "s.tif", data)
    out, cal = read_volume(tmp_path / "s.tif")
    assert out.dtype == np.dtype(dtype)
    assert out.shape == data.shape
    assert np.array_equal(out, data)
    assert not cal.is_calibrated


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_plain_multipage_tiff_from_other_software_is_a_stack(tmp_path: Path, dtype: Any) -> None:
    data = _stack(dtype, seed=1)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:  # no ImageJ or shape metadata, one page at a time
        for plane in data:
            tw.write(plane, metadata=None, contiguous=False)
    vol = open_volume(tmp_path / "pages.tif")
    try:
        assert vol.shape == data.shape and vol.dtype == np.dtype(dtype)
        assert np.array_equal(vol[:], data)
    finally:
        vol.close()


def test_single_image_tiff_is_a_one_slice_volume(tmp_path: Path) -> None:
    plane = _stack(np.uint8)[0]
    tifffile.imwrite(tmp_path / "one.tif", plane)
    vol = open_volume(tmp_path / "one.tif")
    try:
        assert vol.shape == (1, *plane.shape)
        assert len(vol) == 1
        assert np.array_equal(vol[0], plane)
        assert np.array_equal(vol[:, 3:7, ::2], plane[None, 3:7, ::2])
    finally:
        vol.close()


def test_imagej_hyperstack_with_singleton_time_and_channel_reads_as_zyx(tmp_path: Path) -> None:
    data = _stack(np.uint16, (1, 6, 1, 20, 30))
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    out, _ = read_volume(tmp_path / "h.tif")
    assert out.shape == (6, 20, 30)
    assert np.array_equal(out, data[0, :, 0])


def test_imagej_time_series_without_z_uses_frames_as_slices(tmp_path: Path) -> None:
    data = _stack(np.uint8, (4, 10, 12))
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=True, metadata={"axes": "TYX"})
    out, _ = read_volume(tmp_path / "t.tif")
    assert np.array_equal(out, data)


def test_multichannel_hyperstack_is_refused_with_the_fix(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((3, 2, 8, 9), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputDataError) as err:
        open_volume(tmp_path / "c.tif")
    msg = str(err.value)
    assert "c.tif" in msg and "2 channels" in msg and "Split Channels" in msg


def test_z_plus_time_hyperstack_is_refused_with_the_fix(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "zt.tif", np.zeros((2, 3, 8, 9), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(InputDataError) as err:
        open_volume(tmp_path / "zt.tif")
    msg = str(err.value)
    assert "zt.tif" in msg and "T=2" in msg and "Z=3" in msg and "one time point" in msg


@pytest.mark.parametrize("imagej", [False, True])
def test_rgb_tiff_is_refused_with_the_fix(tmp_path: Path, imagej: bool) -> None:
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 8, 9, 3), np.uint8), photometric="rgb", imagej=imagej)
    with pytest.raises(InputDataError) as err:
        open_volume(tmp_path / "rgb.tif")
    msg = str(err.value)
    assert "rgb.tif" in msg and "RGB" in msg and "Type > 8-bit" in msg


# ---------------------------------------------------------------- calibration


def test_voxel_size_and_unit_are_read_from_imagej_metadata(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "cal.tif", np.zeros((3, 8, 8), np.uint8), imagej=True,
                     resolution=(1 / 0.0046, 1 / 0.005), metadata={"spacing": 0.045, "unit": "micron", "axes": "ZYX"})
    vol = open_volume(tmp_path / "cal.tif")
    vol.close()
    assert vol.calibration.unit == "micron"
    assert vol.calibration.voxel_size == pytest.approx((0.045, 0.005, 0.0046))
    assert vol.calibration.is_calibrated


def test_write_volume_stores_calibration_the_way_imagej_reads_it(tmp_path: Path) -> None:
    cal = Calibration((45.0, 4.6, 4.2), "nm")
    write_volume(tmp_path / "w.tif", np.zeros((2, 6, 7), np.uint8), cal)
    with tifffile.TiffFile(tmp_path / "w.tif") as tif:  # what Fiji sees, independent of our reader
        ij = tif.imagej_metadata
        page = tif.pages.first
        xnum, xden = page.tags["XResolution"].value
        ynum, yden = page.tags["YResolution"].value
        assert ij is not None and ij["unit"] == "nm" and ij["spacing"] == pytest.approx(45.0)
        assert ij["slices"] == 2
        assert xden / xnum == pytest.approx(4.2) and yden / ynum == pytest.approx(4.6)
    _, back = read_volume(tmp_path / "w.tif")
    assert back.unit == "nm" and back.voxel_size == pytest.approx((45.0, 4.6, 4.2))


@pytest.mark.parametrize("unit", ["µm", "\u03bcm", "um", "micron"])
def test_micrometre_spellings_are_written_as_imagej_micron(tmp_path: Path, unit: str) -> None:
    write_volume(tmp_path / "u.tif", np.zeros((1, 4, 4), np.uint8), Calibration((0.05, 0.004, 0.004), unit))
    with tifffile.TiffFile(tmp_path / "u.tif") as tif:
        assert tif.imagej_metadata is not None and tif.imagej_metadata["unit"] == "micron"
    assert read_volume(tmp_path / "u.tif")[1].unit == "micron"


def test_escaped_imagej_micro_sign_is_read_as_micron(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "esc.tif", np.zeros((2, 4, 4), np.uint8), imagej=True,
                     resolution=(250.0, 250.0), metadata={"spacing": 0.05, "unit": "\\u00B5m", "axes": "ZYX"})
    cal = read_volume(tmp_path / "esc.tif")[1]
    assert cal.unit == "micron" and cal.voxel_size == pytest.approx((0.05, 0.004, 0.004))


def test_non_ascii_unit_survives_a_round_trip(tmp_path: Path) -> None:
    write_volume(tmp_path / "a.tif", np.zeros((1, 4, 4), np.uint8), Calibration((1.0, 2.0, 2.0), "Å"))
    assert read_volume(tmp_path / "a.tif")[1].unit == "Å"


def test_plain_tiff_resolution_in_centimetres_becomes_microns(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "cm.tif", np.zeros((4, 4), np.uint8), resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    cal = read_volume(tmp_path / "cm.tif")[1]
    assert cal.unit == "micron" and cal.voxel_size[1:] == pytest.approx((0.5, 0.5))


def test_uncalibrated_tiff_gives_pixel_units(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((2, 8, 8), np.uint8))
    cal = read_volume(tmp_path / "p.tif")[1]
    assert cal == Calibration() and not cal.is_calibrated


def test_calibration_rejects_non_positive_voxel_sizes() -> None:
    with pytest.raises(InputDataError, match=r"three positive numbers \(z, y, x\).*-1"):
        Calibration((1.0, -1.0, 1.0), "nm")
    assert Calibration.from_dict(Calibration((40, 5, 5), "nm").to_dict()) == Calibration((40.0, 5.0, 5.0), "nm")


def test_explicit_calibration_overrides_the_file(tmp_path: Path) -> None:
    write_volume(tmp_path / "c.tif", np.zeros((2, 4, 4), np.uint8), Calibration((40, 5, 5), "nm"))
    given = Calibration((50.0, 4.0, 4.0), "nm")
    assert read_volume(tmp_path / "c.tif", given)[1] == given


# ---------------------------------------------------------------- conversions on write


def test_write_volume_converts_to_imagej_pixel_types(tmp_path: Path) -> None:
    cases = {
        "bool": (np.array([[[True, False]]]), np.uint8, [[[255, 0]]]),
        "int64": (np.array([[[0, 70000 // 2]]], np.int64), np.uint16, [[[0, 35000]]]),
        "negative": (np.array([[[-3, 2]]], np.int16), np.float32, [[[-3.0, 2.0]]]),
        "float64": (np.array([[[0.25, 1.5]]]), np.float32, [[[0.25, 1.5]]]),
    }
    for name, (data, dtype, expected) in cases.items():
        write_volume(tmp_path / f"{name}.tif", data)
        out, _ = read_volume(tmp_path / f"{name}.tif")
        assert out.dtype == dtype, name
        assert np.array_equal(out, np.array(expected)), name


def test_write_volume_rejects_4d_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"x\.tif.*\(Z, Y, X\).*\(2, 2, 2, 2\)"):
        write_volume(tmp_path / "x.tif", np.zeros((2, 2, 2, 2)))
    with pytest.raises(OutputError, match=r"x\.png.*\.tif or \.npy"):
        write_volume(tmp_path / "x.png", np.zeros((2, 2, 2)))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- npy and zarr


def test_npy_is_memory_mapped_and_sliced_lazily(tmp_path: Path) -> None:
    data = _stack(np.uint16, (6, 10, 12))
    np.save(tmp_path / "v.npy", data)
    vol = open_volume(tmp_path / "v.npy")
    assert isinstance(vol._array, np.memmap)  # nothing read until sliced
    assert vol.shape == data.shape and vol.dtype == np.uint16
    assert np.array_equal(vol[2:4, 1, ::3], data[2:4, 1, ::3])
    assert np.array_equal(np.asarray(vol), data)


def test_npy_2d_and_bad_npy_files(tmp_path: Path) -> None:
    np.save(tmp_path / "plane.npy", np.arange(12, dtype=np.uint8).reshape(3, 4))
    vol = open_volume(tmp_path / "plane.npy")
    assert vol.shape == (1, 3, 4) and np.array_equal(vol[0], np.arange(12).reshape(3, 4))

    np.save(tmp_path / "four.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(InputDataError, match=r"four\.npy has 4 dimensions.*\(Z, Y, X\) stack"):
        open_volume(tmp_path / "four.npy")

    np.save(tmp_path / "full.npy", np.zeros((4, 16, 16), np.float32))
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputDataError, match=r"cut\.npy: not a valid \.npy file.*numpy\.save"):
        open_volume(tmp_path / "cut.npy")

    np.save(tmp_path / "cplx.npy", np.zeros((2, 3, 3), np.complex64))
    with pytest.raises(InputDataError, match=r"cplx\.npy: pixel type complex64.*8-, 16- or 32-bit"):
        open_volume(tmp_path / "cplx.npy")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_with_calibration(tmp_path: Path, zarr_format: int) -> None:
    import zarr

    data = _stack(np.uint8, (4, 16, 16))
    z = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16),
                          zarr_format=zarr_format)  # type: ignore[arg-type]
    z[:] = data
    z.attrs["voxel_size"] = [40, 5, 5]
    z.attrs["unit"] = "nm"
    vol = open_volume(tmp_path / "v.zarr")
    assert vol.calibration == Calibration((40.0, 5.0, 5.0), "nm")
    assert np.array_equal(vol[1:3], data[1:3])


def test_zarr_group_needs_exactly_one_array(tmp_path: Path) -> None:
    import zarr

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(2, 4, 4), dtype=np.uint8)[:] = 7
    assert np.all(read_volume(tmp_path / "g.zarr")[0] == 7)
    group.create_array("labels", shape=(2, 4, 4), dtype=np.uint8)
    with pytest.raises(InputDataError, match=r"g\.zarr is a zarr group with arrays \['labels', 'raw'\]; give the path"):
        open_volume(tmp_path / "g.zarr")


# ---------------------------------------------------------------- lazy access


class _Recorder:
    """An ArrayLike3D that records every key it is read with."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.keys: list[Any] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        self.keys.append(key)
        return self.data[key]


def test_lazy_volume_reads_only_the_requested_region() -> None:
    data = _stack(np.uint8, (8, 20, 20))
    rec = _Recorder(data)
    vol = open_volume(rec)
    assert isinstance(vol, LazyVolume) and vol.shape == (8, 20, 20) and rec.keys == []
    assert np.array_equal(vol[3, 5:9], data[3, 5:9])
    assert rec.keys == [(3, slice(5, 9), slice(None))]
    assert np.array_equal(vol[..., 2:4], data[..., 2:4])
    assert rec.keys[-1] == (slice(None), slice(None), slice(2, 4))
    assert np.array_equal(vol[1, ..., 7], data[1, :, 7])
    with pytest.raises(IndexError, match="too many indices"):
        vol[0, 0, 0, 0]


def test_tiff_slices_are_read_page_by_page(tmp_path: Path) -> None:
    """Damage the last slice of a compressed stack: the first slices still read, the whole does not."""
    data = _stack(np.uint8, (6, 32, 32))
    write_volume(tmp_path / "z.tif", data, compression="zlib")
    with tifffile.TiffFile(tmp_path / "z.tif") as tif:
        offset = tif.pages[-1].dataoffsets[0]
    raw = bytearray((tmp_path / "z.tif").read_bytes())
    raw[offset:offset + 64] = b"\xff" * 64
    (tmp_path / "z.tif").write_bytes(bytes(raw))
    vol = open_volume(tmp_path / "z.tif")
    try:
        assert np.array_equal(vol[0:5], data[0:5])  # never touches the damaged page
        with pytest.raises(InputDataError) as err:
            vol[:]
        assert "z.tif" in str(err.value) and "damaged or truncated" in str(err.value)
    finally:
        vol.close()


# ---------------------------------------------------------------- damaged and missing files


def test_not_a_tiff_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.tif").write_bytes(b"hello world" * 10)
    with pytest.raises(InputDataError) as err:
        open_volume(tmp_path / "junk.tif")
    assert "junk.tif" in str(err.value) and "not a valid TIFF" in str(err.value) and "re-save" in str(err.value)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_tiff_is_an_error_never_silent_data(tmp_path: Path, compression: str | None, keep: float) -> None:
    data = _stack(np.uint8, (10, 64, 64))
    write_volume(tmp_path / "full.tif", data, compression=compression)
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(InputDataError) as err:
        read_volume(tmp_path / "cut.tif")
    msg = str(err.value)
    assert "cut.tif" in msg
    assert any(w in msg for w in ("truncated", "damaged", "not a valid TIFF"))


def test_missing_paths_and_unsupported_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"nope\.tif does not exist; check the path"):
        open_volume(tmp_path / "nope.tif")
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(InputDataError, match=r"x\.png: unsupported file type '\.png'; use TIFF"):
        open_volume(tmp_path / "x.png")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputDataError, match=r"folder is a folder; give a TIFF, \.npy or \.zarr"):
        open_volume(tmp_path / "folder")
    with pytest.raises(InputDataError, match=r"expected an array or a file path, got list"):
        open_volume([1, 2, 3])  # type: ignore[arg-type]


# ---------------------------------------------------------------- streaming writer


def test_stack_writer_round_trip_appears_only_after_close(tmp_path: Path) -> None:
    data = _stack(np.uint16, (5, 12, 14))
    cal = Calibration((40.0, 5.0, 5.0), "nm")
    writer = StackWriter(tmp_path / "s.tif", data.shape, np.uint16, cal)
    writer.write(data[0])
    writer.write(data[1:3])  # a block of slices
    assert not (tmp_path / "s.tif").exists()
    assert len(_leftovers(tmp_path)) == 1  # work in progress lives under a temporary name
    writer.write(data[3])
    writer.write(data[4])
    assert writer.close() == tmp_path / "s.tif"
    assert _leftovers(tmp_path) == []
    out, back = read_volume(tmp_path / "s.tif")
    assert np.array_equal(out, data) and back == cal


def test_stack_writer_abort_and_exception_leave_nothing(tmp_path: Path) -> None:
    data = _stack(np.uint8, (4, 8, 8))
    writer = StackWriter(tmp_path / "a.tif", data.shape, np.uint8)
    writer.write(data[:2])
    writer.abort()
    with pytest.raises(RuntimeError, match="boom"), StackWriter(tmp_path / "b.tif", data.shape, np.uint8) as w:
        w.write(data[0])
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stack_writer_abort_with_a_full_queue_is_prompt(tmp_path: Path) -> None:
    import time

    writer = StackWriter(tmp_path / "big.tif", (60, 256, 256), np.float32, queue_size=1)
    for _ in range(30):
        writer.write(np.zeros((256, 256), np.float32))
    start = time.perf_counter()
    writer.abort()
    assert time.perf_counter() - start < 2.0
    assert not writer._thread.is_alive()
    assert list(tmp_path.iterdir()) == []


def test_stack_writer_refuses_to_overwrite_and_checks_slices(tmp_path: Path) -> None:
    target = tmp_path / "keep.tif"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError) as err:
        StackWriter(target, (2, 4, 4), np.uint8)
    assert "keep.tif already exists" in str(err.value) and "--overwrite" in str(err.value)
    assert target.read_bytes() == b"precious" and _leftovers(tmp_path) == []

    with pytest.raises(OutputError, match=r"cannot stream int64 to TIFF; use uint8, uint16 or float32"):
        StackWriter(tmp_path / "i.tif", (2, 4, 4), np.int64)

    writer = StackWriter(tmp_path / "w.tif", (2, 4, 4), np.uint8)
    with pytest.raises(OutputError) as err:
        writer.write(np.zeros((4, 5), np.uint8))
    assert "(4, 5)" in str(err.value) and "(2, 4, 4)" in str(err.value)
    writer.write(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(OutputError, match="more than 2 slices"):
        writer.write(np.zeros((4, 4), np.uint8))
    writer.close()

    short = StackWriter(tmp_path / "short.tif", (3, 4, 4), np.uint8)
    short.write(np.zeros((4, 4), np.uint8))
    with pytest.raises(OutputError, match=r"short\.tif: only 1 of 3 slices were written"):
        short.close()
    assert not (tmp_path / "short.tif").exists()

    replaced = StackWriter(target, (1, 4, 4), np.uint8, overwrite=True)
    replaced.write(np.full((4, 4), 9, np.uint8))
    replaced.close()
    assert np.all(read_volume(target)[0] == 9)
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- atomic output


def test_atomic_path_leaves_no_partial_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError, match="half-way"), atomic_path(target) as tmp:
        tmp.write_text("partial")
        assert tmp.parent == tmp_path and tmp.suffix == ".txt"  # same folder, same suffix
        raise ValueError("half-way")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_atomic_path_keeps_existing_files_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputError) as err, atomic_path(target):
        pass
    assert "out.txt already exists" in str(err.value) and "--overwrite" in str(err.value)
    assert target.read_text() == "old"
    write_volume(tmp_path / "v.tif", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(OutputError, match=r"v\.tif already exists"):
        write_volume(tmp_path / "v.tif", np.ones((1, 2, 2), np.uint8))
    assert np.all(read_volume(tmp_path / "v.tif")[0] == 0)
    atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "new" and _leftovers(tmp_path) == []


def test_atomic_path_refuses_a_file_created_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "race.txt"
    with pytest.raises(OutputError, match="created by someone else meanwhile"), atomic_path(target) as tmp:
        tmp.write_text("mine")
        target.write_text("theirs")
    assert target.read_text() == "theirs" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_real_isbi_stack_opens_lazily() -> None:
    path = DATA / "isbi2012" / "image.tif"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    with open_volume(path) as vol:
        assert vol.shape == (30, 512, 512) and vol.dtype == np.uint8
        plane = vol[12]
        assert plane.shape == (512, 512) and plane.std() > 10
        assert np.array_equal(vol[12, 100:110, 200:220], plane[100:110, 200:220])
