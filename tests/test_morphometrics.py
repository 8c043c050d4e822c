"""Morphometrics: calibrated volume and surface of voxelised shapes against analytic values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fiji_emseg.engine.data.volume_io import Calibration, write_volume
from fiji_emseg.engine.evaluation.evaluation import measure
from fiji_emseg.engine.evaluation.morphometrics import COLUMNS_2D, COLUMNS_3D, measure_objects, perimeter, surface_area


def _ellipsoid_voxels(radius: float, voxel: tuple[float, float, float]) -> np.ndarray:
    n = [int(radius / v) + 3 for v in voxel]
    z, y, x = np.ogrid[-n[0]:n[0] + 1, -n[1]:n[1] + 1, -n[2]:n[2] + 1]
    return ((z * voxel[0]) ** 2 + (y * voxel[1]) ** 2 + (x * voxel[2]) ** 2 <= radius ** 2).astype(np.uint8)


@pytest.mark.parametrize(("voxel", "r"), [((1.0, 1.0, 1.0), 12.0), ((1.0, 0.5, 0.5), 10.0), ((0.3, 0.2, 0.25), 5.0)])
def test_sphere_volume_and_surface_with_anisotropic_voxels(voxel: tuple[float, float, float], r: float) -> None:
    mask = _ellipsoid_voxels(r, voxel)
    t = measure_objects(mask, Calibration(voxel, "micron"))
    assert len(t) == 1
    row = t.iloc[0]
    assert row["volume"] == pytest.approx(int(mask.sum()) * voxel[0] * voxel[1] * voxel[2])
    assert row["volume"] == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.03)
    assert row["surface_area"] == pytest.approx(4 * math.pi * r ** 2, rel=0.03)
    assert row["equivalent_diameter"] == pytest.approx(2 * r, rel=0.01)
    assert 0.95 < row["sphericity"] <= 1.02
    assert row["unit"] == "micron"
    assert row["touches_border"] == 0


def test_raw_marching_cubes_overestimates_curved_surfaces() -> None:
    mask = _ellipsoid_voxels(12.0, (1.0, 1.0, 1.0))
    raw = surface_area(mask, (1.0, 1.0, 1.0), smoothing=0)
    smooth = surface_area(mask, (1.0, 1.0, 1.0))
    true = 4 * math.pi * 144
    assert raw > 1.05 * true
    assert abs(smooth - true) < abs(raw - true)


def test_box_volume_exact_and_surface_close() -> None:
    m = np.zeros((14, 24, 44), np.uint8)
    m[2:12, 2:22, 2:42] = 1  # 10 x 20 x 40 voxels of 2.0 x 0.5 x 0.25 -> 20 x 10 x 10 micron
    t = measure_objects(m, Calibration((2.0, 0.5, 0.25), "micron"))
    row = t.iloc[0]
    assert row["voxels"] == 8000
    assert row["volume"] == pytest.approx(2000.0)
    assert row["surface_area"] == pytest.approx(2 * (200 + 200 + 100), rel=0.04)
    assert row["equivalent_diameter"] == pytest.approx((6 * 2000 / math.pi) ** (1 / 3))
    # box bounding box and centroid in voxel coordinates
    assert (row["z_min"], row["z_max"], row["y_min"], row["y_max"], row["x_min"], row["x_max"]) == (2, 11, 2, 21, 2, 41)
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == pytest.approx((6.5, 11.5, 21.5))


def test_disk_area_perimeter_circularity() -> None:
    yy, xx = np.ogrid[-25:26, -25:26]
    disk = ((yy * 0.5) ** 2 + (xx * 0.5) ** 2 <= 100).astype(np.uint8)  # radius 10 micron, 0.5 micron pixels
    t = measure_objects(disk, Calibration((1.0, 0.5, 0.5), "micron"))
    assert list(t.columns) == list(COLUMNS_2D)  # a single image is measured in 2D
    row = t.iloc[0]
    assert row["area"] == pytest.approx(int(disk.sum()) * 0.25)
    assert row["area"] == pytest.approx(math.pi * 100, rel=0.01)
    assert row["perimeter"] == pytest.approx(2 * math.pi * 10, rel=0.03)
    assert row["circularity"] == pytest.approx(1.0, abs=0.06)
    assert perimeter(disk, (0.5, 0.5), smoothing=0) > 1.05 * 2 * math.pi * 10


def test_counts_min_voxels_border_and_2d_mode() -> None:
    m = np.zeros((4, 10, 10), np.uint8)
    m[1:3, 2:4, 2:4] = 1  # 8 voxels, inside
    m[0:2, 0:2, 7:9] = 1  # 8 voxels, touches z = 0 and y = 0
    m[3, 8, 8] = 1  # 1 voxel
    t = measure_objects(m, class_name="mito")
    assert list(t.columns) == list(COLUMNS_3D)
    assert list(t["voxels"]) == [8, 8, 1]
    assert list(t["touches_border"]) == [1, 0, 1]
    assert list(t["label"]) == [1, 2, 3] and set(t["class"]) == {"mito"}
    assert list(measure_objects(m, min_voxels=2)["voxels"]) == [8, 8]
    per_slice = measure_objects(m, components="2d")
    assert list(per_slice["voxels"]) == [4, 4, 4, 4, 1]
    assert list(per_slice["z_min"]) == [0, 1, 1, 2, 3]
    empty = measure_objects(np.zeros((3, 5, 5), np.uint8))
    assert empty.empty and list(empty.columns) == list(COLUMNS_3D)


def test_measure_reads_calibration_from_tiff(tmp_path: Path) -> None:
    m = np.zeros((6, 20, 20), np.uint8)
    m[1:5, 2:12, 2:12] = 255
    write_volume(tmp_path / "mito.tif", m, Calibration((50.0, 4.0, 4.0), "nm"))
    t = measure(tmp_path / "mito.tif")
    assert list(t["class"]) == ["mito"]
    assert t.iloc[0]["volume"] == pytest.approx(400 * 50 * 16)
    assert t.iloc[0]["unit"] == "nm"
    override = measure(tmp_path / "mito.tif", calibration=Calibration((1.0, 1.0, 1.0), "micron"))
    assert override.iloc[0]["volume"] == pytest.approx(400)
    two = measure({"a": m, "b": m[:, ::-1]}, components="3d")
    assert list(two["class"]) == ["a", "b"]
