"""Pixel metrics: hand-computed scores, slice statistics, annotated region, empty cases, binarisation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fiji_emseg.engine.evaluation.metrics import METRICS, binarize, confusion_per_slice, pixel_metrics, scores
from fiji_emseg.errors import ConfigError, EmsegWarning, InputDataError


def _vol(*slices: list[list[int]]) -> np.ndarray:
    return np.array(slices, dtype=np.uint8)


def test_scores_from_counts_hand_computed() -> None:
    s = scores(3, 1, 2, 4)
    assert s["f1"] == pytest.approx(6 / 9)
    assert s["iou"] == pytest.approx(3 / 6)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 5)
    assert s["accuracy"] == pytest.approx(7 / 10)


def test_pixel_metrics_volume_and_slices_hand_computed() -> None:
    # slice 0: ref 4 px, pred 2 of them + 2 others -> tp 2, fp 2, fn 2, tn 10 (4x4 = 16 px)
    # slice 1: identical 3 px -> perfect
    ref = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    ref[0, 0, :] = 1
    pred[0, 0, :2] = 1
    pred[0, 3, :2] = 1
    ref[1, 1, :3] = 1
    pred[1, 1, :3] = 1
    pm = pixel_metrics(ref, pred)
    # volume: tp 5, fp 2, fn 2, tn 23
    assert pm.counts == {"ref_voxels": 7, "pred_voxels": 7, "tp": 5, "fp": 2, "fn": 2, "tn": 23}
    assert pm.volume["f1"] == pytest.approx(10 / 14)
    assert pm.volume["iou"] == pytest.approx(5 / 9)
    assert pm.volume["precision"] == pytest.approx(5 / 7)
    assert pm.volume["recall"] == pytest.approx(5 / 7)
    assert pm.volume["accuracy"] == pytest.approx(28 / 32)
    f1_slices = [0.5, 1.0]  # slice 0: 2*2 / (4 + 2 + 2)
    assert list(pm.per_slice["f1"]) == pytest.approx(f1_slices)
    assert pm.slice_stats["f1_slice_mean"] == pytest.approx(0.75)
    assert pm.slice_stats["f1_slice_std"] == pytest.approx(0.25)  # population std
    assert pm.slice_stats["f1_slice_min"] == pytest.approx(0.5)
    assert pm.slice_stats["iou_slice_min"] == pytest.approx(2 / 6)
    assert pm.n_slices == 2
    assert list(pm.per_slice["slice"]) == [0, 1]
    assert list(pm.per_slice["tp"]) == [2, 3]
    assert list(pm.per_slice["tn"]) == [10, 13]


def test_annotated_region_ignores_outside_voxels() -> None:
    ref = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros((3, 4, 4), np.uint8)
    ref[0, :2, :2] = 1
    pred[0, :2, :2] = 1
    # errors outside the annotated region: slice 1 (unannotated) and column 3 of slice 0
    pred[1] = 1
    pred[0, :, 3] = 1
    region = np.zeros((3, 4, 4), bool)
    region[0, :, :3] = True  # 12 voxels of slice 0
    region[2] = True  # slice 2 fully annotated, both empty there
    pm = pixel_metrics(ref, pred, region)
    assert pm.volume["f1"] == 1.0
    assert pm.counts["fp"] == 0
    assert pm.counts["tn"] == 12 - 4 + 16
    assert pm.volume["accuracy"] == 1.0
    assert list(pm.per_slice["slice"]) == [0, 2]  # slice 1 holds no annotated voxel
    # without the region the errors count
    assert pixel_metrics(ref, pred).volume["precision"] == pytest.approx(4 / (4 + 4 + 16))


def test_both_empty_is_perfect_and_never_nan() -> None:
    empty = np.zeros((2, 5, 5), np.uint8)
    pm = pixel_metrics(empty, empty)
    for m in METRICS:
        assert pm.volume[m] == 1.0
        assert pm.slice_stats[f"{m}_slice_mean"] == 1.0
    assert not pm.per_slice.isna().any().any()
    assert list(pm.per_slice["both_empty"]) == [1, 1]


def test_empty_prediction_and_empty_reference_conventions() -> None:
    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, 0, 0] = 1
    empty = np.zeros_like(ref)
    missed = pixel_metrics(ref, empty).volume
    assert (missed["precision"], missed["recall"], missed["f1"], missed["iou"]) == (0.0, 0.0, 0.0, 0.0)
    assert missed["accuracy"] == pytest.approx(15 / 16)
    spurious = pixel_metrics(empty, ref).volume
    assert (spurious["precision"], spurious["recall"], spurious["f1"], spurious["iou"]) == (0.0, 0.0, 0.0, 0.0)


def test_skip_empty_slices_changes_slice_statistics_only() -> None:
    ref = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros((3, 4, 4), np.uint8)
    ref[0, 0, :4] = 1
    pred[0, 0, :2] = 1  # f1 = 2*2/(4+0+2) = 2/3 on slice 0; slices 1, 2 both empty
    default = pixel_metrics(ref, pred)
    assert default.slice_stats["f1_slice_mean"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert default.n_slices == 3
    skipped = pixel_metrics(ref, pred, skip_empty_slices=True)
    assert skipped.slice_stats["f1_slice_mean"] == pytest.approx(2 / 3)
    assert skipped.slice_stats["f1_slice_std"] == 0.0
    assert skipped.n_slices == 1
    assert skipped.volume == default.volume
    nothing = pixel_metrics(np.zeros_like(ref), np.zeros_like(ref), skip_empty_slices=True)
    assert nothing.n_slices == 0
    assert nothing.slice_stats["f1_slice_mean"] == 1.0 and nothing.slice_stats["f1_slice_std"] == 0.0


def test_two_dimensional_input_is_one_slice() -> None:
    ref = np.array([[1, 1, 0], [0, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 0], [0, 0, 1]], np.uint8)
    pm = pixel_metrics(ref, pred)
    assert pm.n_slices == 1
    assert pm.volume["f1"] == pytest.approx(2 / 4)
    assert pm.slice_stats["f1_slice_std"] == 0.0


def test_shape_mismatch_and_empty_region_are_errors() -> None:
    with pytest.raises(InputDataError, match="does not match"):
        confusion_per_slice(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(InputDataError, match="annotated region is empty"):
        pixel_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))


# ---------------------------------------------------------------- binarize


def test_probability_map_needs_threshold() -> None:
    prob = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    with pytest.raises(InputDataError) as exc:
        binarize(prob, "prediction.tif")
    msg = str(exc.value)
    assert "prediction.tif is a probability map" in msg and "--threshold 0.5" in msg and "\n" not in msg
    out = binarize(prob, "prediction.tif", threshold=0.5)
    assert out.dtype == np.uint8
    assert np.array_equal(out, (prob > 0.5).astype(np.uint8))


def test_threshold_is_strictly_greater() -> None:
    prob = np.array([[0.2, 0.5, 0.7]], dtype=np.float32)
    assert binarize(prob, threshold=0.5).tolist() == [[[0, 0, 1]]]


def test_binary_inputs_are_accepted_as_they_are() -> None:
    m01 = np.array([[[0, 1, 1]]], np.uint8)
    out = binarize(m01)
    assert np.shares_memory(out, m01)  # no copy for uint8 0/1
    assert binarize(m01 * 255).tolist() == [[[0, 1, 1]]]
    assert binarize(m01.astype(bool)).tolist() == [[[0, 1, 1]]]
    assert binarize(m01.astype(np.float32)).tolist() == [[[0, 1, 1]]]
    # a threshold does not apply to binary data (0/255 with threshold 0.5 stays as it is)
    assert binarize(m01 * 255, threshold=0.5).tolist() == [[[0, 1, 1]]]


def test_grey_integer_image_needs_threshold_and_probability_threshold_is_refused() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(1, 3, 4) * 20
    with pytest.raises(InputDataError, match="not a binary mask"):
        binarize(grey, "pred")
    with pytest.raises(ConfigError, match="probability"):
        binarize(grey, "pred", threshold=0.5)
    assert int(binarize(grey, "pred", threshold=100).sum()) == int((grey > 100).sum())


def test_nan_and_bad_threshold_are_errors() -> None:
    prob = np.array([[0.1, np.nan]], dtype=np.float32)
    with pytest.raises(InputDataError, match="NaN"):
        binarize(prob, threshold=0.5)
    with pytest.raises(ConfigError, match="finite"):
        binarize(np.array([[0.1, 0.7]]), threshold=float("inf"))


def test_threshold_above_every_value_warns() -> None:
    prob = np.array([[0.1, 0.3]], dtype=np.float32)
    with pytest.warns(EmsegWarning, match="empty"):
        out = binarize(prob, "p", threshold=0.5)
    assert out.sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binarize(prob, "p", threshold=0.2)
