"""Object-level evaluation: components, detection categories, PQ and AJI on hand-made examples."""

from __future__ import annotations

import numpy as np
import pytest

from fiji_emseg.engine.data import components
from fiji_emseg.engine.data.components import label_components, normalize_connectivity
from fiji_emseg.engine.evaluation import objects as obj
from fiji_emseg.engine.evaluation.objects import (
    aggregated_jaccard_index,
    compute_overlap,
    detection_categories,
    evaluate_objects,
    panoptic_quality,
)
from fiji_emseg.errors import ConfigError


def _overlap(ref: np.ndarray, pred: np.ndarray) -> obj.Overlap:
    rl, nr = label_components(ref)
    pl, npred = label_components(pred)
    return compute_overlap(rl, nr, pl, npred)


@pytest.mark.parametrize(("conn", "ndim", "rank"), [
    (1, 3, 1), (3, 3, 3), (6, 3, 1), (18, 3, 2), (26, 3, 3),
    (1, 2, 1), (2, 2, 2), (3, 2, 2), (4, 2, 1), (8, 2, 2), (6, 2, 1), (26, 2, 2),
])
def test_normalize_connectivity(conn: int, ndim: int, rank: int) -> None:
    assert normalize_connectivity(conn, ndim) == rank


@pytest.mark.parametrize(("conn", "ndim"), [(0, 3), (4, 3), (8, 3), (5, 2), (27, 3)])
def test_bad_connectivity_is_config_error(conn: int, ndim: int) -> None:
    with pytest.raises(ConfigError):
        normalize_connectivity(conn, ndim)


def test_components_3d_vs_2d_and_connectivity() -> None:
    m = np.zeros((2, 5, 5), np.uint8)
    m[0, 1:3, 1:3] = 1
    m[1, 1:3, 1:3] = 1  # same square on two slices: 1 object in 3D, 2 in 2D
    m[0, 3, 3] = 1  # touches (0,2,2) by a corner only
    lab3, n3 = label_components(m, "3d", 1)
    assert n3 == 2
    assert lab3.dtype == np.int32
    _, n3full = label_components(m, "3d", 26)
    assert n3full == 1
    lab2, n2 = label_components(m, "2d", 1)
    assert n2 == 3
    assert set(np.unique(lab2[1])) == {0, 3}  # labels continue across slices
    _, n2full = label_components(m, "2d", 8)
    assert n2full == 2


def _lines(cover: list[int], length: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One reference segment of `length` voxels per row (rows 0, 2, 4 …); the prediction
    covers the first `cover[i]` voxels of segment i."""
    ref = np.zeros((1, 2 * len(cover) + 2, length + 4), np.uint8)
    pred = np.zeros_like(ref)
    for i, c in enumerate(cover):
        ref[0, 2 * i, :length] = 1
        pred[0, 2 * i, :c] = 1
    return ref, pred


def test_detection_categories_on_constructed_objects() -> None:
    # recalls 1.0, 0.9, 0.8, 0.5, 0.1, 0.05 (of 20), 0.0
    ref, pred = _lines([20, 18, 16, 10, 2, 1, 0], length=20)
    pred[0, -1, -2:] = 1  # a false positive far from every reference object
    res = evaluate_objects(ref, pred, components="2d")
    s = res.summary
    assert (s["ref_objects"], s["pred_objects"]) == (7, 7)
    assert (s["detected"], s["under_detected"], s["missed"], s["false_positives"]) == (2, 3, 2, 1)
    assert s["detected_frac"] == pytest.approx(2 / 7)
    assert s["missed_frac"] == pytest.approx(2 / 7)
    assert s["false_positive_frac"] == pytest.approx(1 / 7)
    refs = res.table[res.table["source"] == "reference"]
    assert list(refs["category"]) == ["detected", "detected", "under_detected", "under_detected",
                                      "under_detected", "missed", "missed"]
    assert list(refs["coverage"]) == pytest.approx([1.0, 0.9, 0.8, 0.5, 0.1, 0.05, 0.0])
    preds = res.table[res.table["source"] == "prediction"]
    assert list(preds["category"]).count("false_positive") == 1
    fp = preds[preds["category"] == "false_positive"].iloc[0]
    assert (fp["y_min"], fp["x_min"], fp["x_max"], fp["voxels"]) == (15, 22, 23, 2)
    # thresholds are settable
    strict = evaluate_objects(ref, pred, detected_above=0.95, missed_below=0.5)
    assert (strict.summary["detected"], strict.summary["under_detected"], strict.summary["missed"]) == (1, 3, 3)


def test_detection_categories_function_and_threshold_check() -> None:
    cats = detection_categories(np.array([0.81, 0.8, 0.1, 0.099]))
    assert list(cats) == ["detected", "under_detected", "under_detected", "missed"]
    with pytest.raises(ConfigError):
        detection_categories(np.array([0.5]), detected_above=0.1, missed_below=0.5)


def _pq_example() -> tuple[np.ndarray, np.ndarray]:
    """ref A (10 voxels), B (10), C (4); pred A' = A + 2 voxels, B' = half of B, D' (3 voxels, FP)."""
    ref = np.zeros((1, 12, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, 0:10] = 1  # A
    pred[0, 0, 0:12] = 1  # A': IoU 10/12
    ref[0, 3, 0:10] = 1  # B
    pred[0, 3, 0:5] = 1  # B': IoU 5/10 = 0.5, not a PQ match
    ref[0, 6, 0:4] = 1  # C: missed
    pred[0, 9, 0:3] = 1  # D': false positive
    return ref, pred


def test_panoptic_quality_hand_computed() -> None:
    ref, pred = _pq_example()
    pq = panoptic_quality(_overlap(ref, pred))
    assert (pq.tp, pq.fp, pq.fn) == (1, 2, 2)
    assert pq.sq == pytest.approx(10 / 12)
    assert pq.rq == pytest.approx(1 / (1 + 1 + 1))
    assert pq.pq == pytest.approx(10 / 12 / 3)
    with pytest.raises(ConfigError):
        panoptic_quality(_overlap(ref, pred), iou_threshold=0.4)


def test_aji_hand_computed() -> None:
    ref, pred = _pq_example()
    # C = 10 + 5; U = 12 + 10 + |C| 4 (no overlap) + |D'| 3 (unused prediction)
    assert aggregated_jaccard_index(_overlap(ref, pred)) == pytest.approx(15 / 29)


def test_aji_counts_a_merging_prediction_once_per_reference_object() -> None:
    ref = np.zeros((1, 1, 12), np.uint8)
    ref[0, 0, 0:4] = 1
    ref[0, 0, 6:10] = 1
    pred = np.zeros_like(ref)
    pred[0, 0, 0:10] = 1  # one object covering both (size 10)
    # each reference object pairs with it: C = 4 + 4, U = 10 + 10 (Kumar et al.)
    assert aggregated_jaccard_index(_overlap(ref, pred)) == pytest.approx(8 / 20)
    pq = panoptic_quality(_overlap(ref, pred))
    assert (pq.tp, pq.pq) == (0, 0.0)


def test_best_match_ties_pick_smallest_label() -> None:
    ref = np.zeros((1, 1, 9), np.uint8)
    ref[0, 0, 2:7] = 1
    pred = np.zeros_like(ref)
    pred[0, 0, 0:4] = 1  # label 1: inter 2, union 7
    pred[0, 0, 5:9] = 1  # label 2: inter 2, union 7
    best, iou = _overlap(ref, pred).best_match("ref")
    assert (best[1], iou[1]) == (1, pytest.approx(2 / 7))


def test_empty_cases() -> None:
    empty = np.zeros((2, 6, 6), np.uint8)
    both = evaluate_objects(empty, empty).summary
    assert (both["pq"], both["sq"], both["rq"], both["aji"]) == (1.0, 1.0, 1.0, 1.0)
    assert both["detected_frac"] == 0.0 and both["false_positive_frac"] == 0.0
    some = empty.copy()
    some[0, 1:3, 1:3] = 1
    only_pred = evaluate_objects(empty, some).summary
    assert (only_pred["pq"], only_pred["aji"], only_pred["false_positives"], only_pred["false_positive_frac"]) == (
        0.0, 0.0, 1, 1.0)
    only_ref = evaluate_objects(some, empty).summary
    assert (only_ref["missed"], only_ref["missed_frac"], only_ref["pq"], only_ref["aji"]) == (1, 1.0, 0.0, 0.0)
    assert not evaluate_objects(some, empty).table.isna().any().any()


def test_sparse_and_dense_pair_counting_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    ref = (rng.random((4, 40, 40)) > 0.6).astype(np.uint8)
    pred = (rng.random((4, 40, 40)) > 0.6).astype(np.uint8)
    rl, nr = label_components(ref)
    pl, npred = label_components(pred)
    dense = compute_overlap(rl, nr, pl, npred)
    monkeypatch.setattr(obj, "_DENSE_KEYS", 0)
    monkeypatch.setattr(components, "_BLOCK_VOXELS", 1000)  # several blocks, merged afterwards
    sparse = compute_overlap(rl, nr, pl, npred)
    for field in ("ref_ids", "pred_ids", "intersections", "ref_sizes", "pred_sizes"):
        assert np.array_equal(getattr(dense, field), getattr(sparse, field)), field
    # brute force check of a few pairs
    for k in range(0, len(dense.ref_ids), max(1, len(dense.ref_ids) // 7)):
        r, p = dense.ref_ids[k], dense.pred_ids[k]
        assert dense.intersections[k] == np.count_nonzero((rl == r) & (pl == p))
