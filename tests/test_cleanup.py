"""Clean-up: config round trip and validation; each step on constructed masks; 2D vs 3D; in place."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fiji_emseg.engine.inference.cleanup import CleanupConfig, clean_mask, clean_mask_slice
from fiji_emseg.errors import ConfigError, InputDataError


def test_config_round_trip_is_json_able() -> None:
    cfg = CleanupConfig(min_object_size=50, max_hole_size=20, opening_radius=1, closing_radius=2,
                        per_slice=True, connectivity=8)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d == {"min_object_size": 50, "max_hole_size": 20, "opening_radius": 1, "closing_radius": 2,
                 "per_slice": True, "connectivity": 8}
    assert CleanupConfig.from_dict(d) == cfg
    assert CleanupConfig.from_dict(None) == CleanupConfig()
    assert CleanupConfig.from_dict({"min_object_size": 3}).max_hole_size == 0
    assert not CleanupConfig().enabled and cfg.enabled


@pytest.mark.parametrize("bad", [
    {"min_object_size": -1}, {"max_hole_size": 2.5}, {"opening_radius": True}, {"per_slice": "yes"},
    {"connectivity": 5}, {"connectivity": 4}, {"min_size": 3},
])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ConfigError):
        CleanupConfig.from_dict(bad)


def test_connectivity_4_is_fine_per_slice() -> None:
    assert CleanupConfig(per_slice=True, connectivity=4).connectivity == 4


def test_remove_small_objects_3d_threshold_is_strict() -> None:
    m = np.zeros((3, 10, 10), np.uint8)
    m[0, 0, 0:3] = 1  # 3 voxels: removed
    m[0, 5, 0:4] = 1  # 4 voxels: kept (size < 4 is removed)
    m[2, 0:2, 5:8] = 1  # 6 voxels: kept
    out = clean_mask(m, CleanupConfig(min_object_size=4))
    expected = m.copy()
    expected[0, 0, 0:3] = 0
    assert np.array_equal(out, expected)
    assert out.dtype == np.uint8


def test_remove_small_objects_2d_vs_3d() -> None:
    m = np.zeros((2, 6, 6), np.uint8)
    m[:, 2, 1:4] = 1  # 3 voxels per slice, 6 in 3D
    assert clean_mask(m, CleanupConfig(min_object_size=4)).sum() == 6
    assert clean_mask(m, CleanupConfig(min_object_size=4, per_slice=True)).sum() == 0


def test_connectivity_decides_what_an_object_is() -> None:
    m = np.zeros((1, 5, 5), np.uint8)
    m[0, 1, 1] = m[0, 2, 2] = 1  # diagonal neighbours
    assert clean_mask(m, CleanupConfig(min_object_size=2, connectivity=1)).sum() == 0
    assert clean_mask(m, CleanupConfig(min_object_size=2, connectivity=3)).sum() == 2


def _ring_with_holes() -> np.ndarray:
    m = np.zeros((12, 16), np.uint8)
    m[1:6, 1:6] = 1
    m[3, 3] = 0  # hole of 1 pixel
    m[1:9, 7:13] = 1
    m[3:5, 9:11] = 0  # hole of 4 pixels
    m[0:4, 14:16] = 1
    m[1, 15] = 0  # background notch touching the border: not a hole
    return m


def test_fill_small_holes_2d() -> None:
    m = _ring_with_holes()
    cfg1 = CleanupConfig(max_hole_size=1, per_slice=True)
    out1 = clean_mask_slice(m, cfg1)
    assert out1[3, 3] == 1 and out1[3:5, 9:11].sum() == 0
    out4 = clean_mask_slice(m, CleanupConfig(max_hole_size=4, per_slice=True))
    assert out4[3, 3] == 1 and out4[3:5, 9:11].sum() == 4
    assert out4[1, 15] == 0  # touches the border
    assert int(out4.sum()) == int(m.sum()) + 5


def test_fill_small_holes_3d_cavity_vs_tunnel() -> None:
    m = np.zeros((5, 7, 7), np.uint8)
    m[1:4, 1:6, 1:6] = 1
    m[2, 3, 3] = 0  # enclosed cavity of 1 voxel
    assert clean_mask(m, CleanupConfig(max_hole_size=1))[2, 3, 3] == 1
    tunnel = np.zeros((3, 7, 7), np.uint8)
    tunnel[:, 1:6, 1:6] = 1
    tunnel[:, 3, 3] = 0  # a tube open at the top and bottom of the volume: not a hole in 3D
    assert clean_mask(tunnel, CleanupConfig(max_hole_size=5))[:, 3, 3].sum() == 0
    assert clean_mask(tunnel, CleanupConfig(max_hole_size=5, per_slice=True))[:, 3, 3].sum() == 3


def test_opening_removes_spur_and_ignores_border() -> None:
    m = np.zeros((1, 12, 12), np.uint8)
    m[0, 3:8, 3:8] = 1
    m[0, 5, 8:11] = 1  # one-pixel-wide spur
    out = clean_mask(m, CleanupConfig(opening_radius=1, per_slice=True))
    assert out[0, 5, 9:11].sum() == 0  # (5, 8) is re-grown from the square by the cross-shaped disk(1)
    assert out[0, 3, 3] == 0  # corners of the square go too (opening by a cross)
    assert out[0, 5, 5] == 1
    full = np.ones((3, 6, 6), np.uint8)  # touches every border: unchanged (border ignored)
    assert np.array_equal(clean_mask(full, CleanupConfig(opening_radius=1)), full)
    assert np.array_equal(clean_mask(full, CleanupConfig(closing_radius=1)), full)


def test_closing_bridges_a_gap() -> None:
    m = np.zeros((1, 8, 12), np.uint8)
    m[0, 1:6, 1:5] = 1
    m[0, 1:6, 6:10] = 1  # one-column gap at x = 5
    out = clean_mask(m, CleanupConfig(closing_radius=1, per_slice=True))
    assert out[0, 2:5, 5].sum() == 3  # bridged (rows 1 and 5 stay open: disk(1) is a cross)
    assert np.all(out >= m)  # closing only adds
    assert out[0, 0].sum() == 0 and out[0, 6:].sum() == 0 and out[0, :, 0].sum() == 0  # no growth toward the border


def test_opening_3d_removes_thin_sheet_but_keeps_block() -> None:
    m = np.zeros((9, 9, 9), np.uint8)
    m[2:7, 2:7, 2:7] = 1
    m[4, 0:9, 8] = 1  # a 1-voxel line
    out = clean_mask(m, CleanupConfig(opening_radius=1))
    assert out[4, :, 8].sum() == 0
    assert out[4, 4, 4] == 1


def test_inplace_and_copy_semantics() -> None:
    m = np.zeros((2, 6, 6), np.uint8)
    m[0, 0, 0] = 1
    before = m.copy()
    out = clean_mask(m, CleanupConfig(min_object_size=2))
    assert np.array_equal(m, before) and out.sum() == 0 and out is not m
    same = clean_mask(m, CleanupConfig(min_object_size=2), inplace=True)
    assert same is m and m.sum() == 0
    noop = clean_mask(before, CleanupConfig())
    assert np.array_equal(noop, before) and noop is not before
    s = before[0].copy()
    assert clean_mask_slice(s, CleanupConfig(min_object_size=2, per_slice=True), inplace=True) is s


def test_slice_helper_matches_per_slice_volume() -> None:
    rng = np.random.default_rng(1)
    m = (rng.random((4, 30, 30)) > 0.55).astype(np.uint8)
    cfg = CleanupConfig(min_object_size=6, max_hole_size=3, opening_radius=0, closing_radius=1, per_slice=True)
    vol = clean_mask(m, cfg)
    for z in range(4):
        assert np.array_equal(clean_mask_slice(m[z], cfg), vol[z])
    assert not np.array_equal(vol, m)
    with pytest.raises(ConfigError, match="per_slice"):
        clean_mask_slice(m[0], CleanupConfig(min_object_size=6))


def test_bad_masks_are_refused() -> None:
    with pytest.raises(InputDataError, match="0/255"):
        clean_mask(np.full((1, 3, 3), 255, np.uint8), CleanupConfig(min_object_size=2))
    with pytest.raises(InputDataError, match="uint8"):
        clean_mask(np.zeros((1, 3, 3), np.float32), CleanupConfig(min_object_size=2))
    with pytest.raises(InputDataError):
        clean_mask_slice(np.zeros((2, 3, 3), np.uint8), CleanupConfig(per_slice=True))
    assert clean_mask(np.ones((1, 3, 3), bool), CleanupConfig()).dtype == np.uint8
