"""Mask thresholds chosen on validation volumes with the real tiled predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from emseg_testdata import blob_sample, f1
from scipy import ndimage as ndi

from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.training.threshold_calibration import THRESHOLD_GRID, _evaluated_slices, calibrate_thresholds
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model

TINY = ModelConfig(classes=("bright",), depth=3, filters=8)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("thr") / "m"
    cfg = TrainConfig(epochs=3, steps_per_epoch=12, batch_size=4, patch_size=(48, 48), val_steps=2, seed=0,
                      learning_rate=3e-3, val_slices="6-7", bn_recalibration_batches=2)
    train_model([blob_sample((8, 96, 96), seed=0)], folder, model_config=TINY, config=cfg)
    return folder


def _probabilities(model: Path, sample: Sample) -> np.ndarray:
    with Predictor(model, PredictConfig(device="cpu", backend="torch")) as p:
        return p.predict_block(sample.image, (0, sample.shape[0]))[0]


def _best_by_brute_force(probs: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    scores = [f1(probs > t, ref) for t in THRESHOLD_GRID]
    return float(THRESHOLD_GRID[int(np.argmax(scores))]), max(scores), scores[int(np.argmin(np.abs(THRESHOLD_GRID - 0.5)))]


@pytest.mark.parametrize("shift", ["dilated", "eroded"])
def test_threshold_follows_a_reference_that_is_wider_or_narrower(model: Path, shift: str) -> None:
    """A reference wider than what the network learnt needs a lower threshold, a narrower one a higher."""
    val = blob_sample((4, 96, 96), seed=5)
    op = ndi.binary_dilation if shift == "dilated" else ndi.binary_erosion
    moved = np.stack([op(m, structure=np.ones((1, 3, 3)), iterations=2) for m in val.masks > 0]).astype(np.uint8)
    ref = Sample("moved", val.image, moved, val.class_names)
    result = calibrate_thresholds(model, [ref], "cpu", min_gain=0.0, rule="argmax")
    assert result is not None
    t = result.thresholds["bright"]
    assert (t < 0.5) if shift == "dilated" else (t > 0.5)
    # the histogram bookkeeping equals thresholding the probabilities directly
    best_t, best_f1, half_f1 = _best_by_brute_force(_probabilities(model, ref), moved[0] > 0)
    assert t == best_t
    assert result.f1_calibrated["bright"] == pytest.approx(best_f1, abs=1e-4)
    assert result.f1_at_half["bright"] == pytest.approx(half_f1, abs=1e-4)
    assert result.f1_calibrated["bright"] > result.f1_at_half["bright"]
    # a systematic shift seen on every slice is beyond noise: the robust rule moves the same way
    robust = calibrate_thresholds(model, [ref], "cpu")
    assert robust is not None
    assert (robust.thresholds["bright"] < 0.5) if shift == "dilated" else (robust.thresholds["bright"] > 0.5)


def test_only_the_annotated_region_counts(model: Path) -> None:
    val = blob_sample((4, 96, 96), seed=6)
    wrong = val.masks.copy()
    wrong[:, 2:] = 1  # slices 2-3 are garbage, but outside the annotated region
    region = np.zeros(val.shape, bool)
    region[:2] = True
    annotated = Sample("part", val.image, wrong, val.class_names, annotated=region)
    clean = Sample("clean", val.image[:2], val.masks[:, :2], val.class_names)
    a = calibrate_thresholds(model, [annotated], "cpu")
    b = calibrate_thresholds(model, [clean], "cpu")
    assert a is not None and b is not None
    assert a.voxels == 2 * 96 * 96
    assert a.f1_at_half["bright"] == pytest.approx(b.f1_at_half["bright"], abs=0.02) and a.f1_at_half["bright"] > 0.8


def test_small_gains_keep_one_half(model: Path) -> None:
    val = blob_sample((4, 96, 96), seed=5)
    result = calibrate_thresholds(model, [val], "cpu", min_gain=1.0)  # no gain is ever large enough
    assert result is not None and result.thresholds == {"bright": 0.5}
    assert result.f1_calibrated == result.f1_at_half


def test_evaluated_slices_are_the_annotated_ones_within_a_budget() -> None:
    s = blob_sample((10, 32, 32), seed=0)
    region = np.zeros(s.shape, bool)
    region[[2, 3, 7]] = True
    part = Sample("p", s.image, s.masks, s.class_names, annotated=region)
    assert _evaluated_slices(part, 2**20, 2) == [(2, 4), (7, 8)]
    assert _evaluated_slices(s, 2**20, 2) == [(0, 10)]
    assert _evaluated_slices(s, 3 * 32 * 32, 2) == [(0, 1), (4, 5), (9, 10)]  # 2D: spread over the stack
    assert _evaluated_slices(s, 4 * 32 * 32, 3) == [(3, 7)]  # 3D: one central block


def test_training_stores_and_prediction_uses_the_chosen_thresholds(model: Path) -> None:
    info = json.loads((model / "config.json").read_text())["training"]
    t = info["thresholds"]["bright"]
    assert t in THRESHOLD_GRID and info["threshold_calibration_voxels"] == 2 * 96 * 96  # validation slices 6-7
    assert info["f1_calibrated"]["bright"] >= info["f1_at_0.5"]["bright"]
    with Predictor(model, PredictConfig(device="cpu")) as p:
        assert p.thresholds() == (t,)
    with Predictor(model, PredictConfig(device="cpu", thresholds=0.3)) as p:
        assert p.thresholds() == (0.3,)  # a threshold given by the user wins


def test_3d_and_softmax_models(tmp_path: Path) -> None:
    from emseg_testdata import random_model_dir

    mc3 = ModelConfig(classes=("bright",), dims=3, depth=2, filters=4, z_poolings=1)
    folder = random_model_dir(tmp_path / "m3", mc3)
    val = blob_sample((6, 40, 40), seed=1)
    region = np.zeros(val.shape, bool)
    region[1:4] = True
    result = calibrate_thresholds(folder, [Sample("v", val.image, val.masks, val.class_names, annotated=region)], "cpu")
    assert result is not None and result.voxels == 3 * 40 * 40 and result.thresholds["bright"] in THRESHOLD_GRID
    soft = random_model_dir(tmp_path / "soft", ModelConfig(classes=("bright",), depth=2, filters=4, output="softmax"))
    assert calibrate_thresholds(soft, [val], "cpu") is None  # softmax models take the most probable class
