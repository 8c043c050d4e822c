"""Reduced precision: bf16 on CPUs with bf16 units, verified int8 ONNX models, and how 'auto' chooses."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from emseg_testdata import blob_sample, f1

import fiji_emseg.engine.models.device as device_mod
from fiji_emseg.api import export_trained_model
from fiji_emseg.cli.main import main as cli
from fiji_emseg.engine.data.normalization import apply_normalization, compute_stats
from fiji_emseg.engine.data.volume_io import write_volume
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.device import choose_device, native_cpu_bf16
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import INT8_NAME, read_model_info
from fiji_emseg.engine.models.onnx_metadata import is_verified_int8
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
from fiji_emseg.errors import ConfigError, EmsegWarning
from fiji_emseg.export.quantize import quantize_int8, tiles_from_samples, tiles_from_volume


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model that has really learned (quantisation of random weights proves little)."""
    folder = tmp_path_factory.mktemp("m") / "model"
    sample = blob_sample((8, 96, 96), seed=0)
    cfg = TrainConfig(epochs=3, steps_per_epoch=15, batch_size=4, patch_size=(48, 48), val_steps=2, seed=0,
                      learning_rate=3e-3, val_slices="6-7", bn_recalibration_batches=2)
    train_model([sample], folder, model_config=ModelConfig(classes=("bright",), depth=3, filters=8), config=cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmsegWarning)  # quantisation must succeed and verify
        files = export_trained_model(folder, int8_from=([sample], [sample]))
    assert set(files) == {"onnx", "int8"}
    return folder


def test_training_and_cpu_inference_use_bf16_only_where_the_cpu_has_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_device("cpu").amp_dtype == (torch.bfloat16 if native_cpu_bf16() else None)
    monkeypatch.setattr(device_mod, "native_cpu_bf16", lambda: False)
    assert choose_device("cpu").amp_dtype is None
    assert choose_device("cpu", amp="bf16").amp_dtype == torch.bfloat16  # asked for explicitly
    monkeypatch.setattr(device_mod, "native_cpu_bf16", lambda: True)
    assert choose_device("cpu").amp_dtype == torch.bfloat16
    # channels_last_3d bf16 training on oneDNN intermittently gave NaN: 3D models on CPUs stay NCDHW
    assert choose_device("cpu", dims=2).channels_last and not choose_device("cpu", dims=3).channels_last
    assert choose_device("cpu", channels_last=True, dims=3).channels_last  # asked for explicitly


def test_int8_model_is_verified_and_carries_its_agreement(trained: Path) -> None:
    path = trained / INT8_NAME
    assert is_verified_int8(path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    agreement = json.loads(props["fiji_emseg.int8_agreement"])
    assert agreement["bright"] >= 0.99 and props["fiji_emseg.precision"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


def test_auto_prefers_verified_int8_then_bf16_then_fp32(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Predictor(trained, PredictConfig(device="cpu")) as p:
        assert p.backend.name == "onnxruntime" and p.backend.path.name == INT8_NAME
    import fiji_emseg.engine.models.device as dev

    monkeypatch.setattr(dev, "native_cpu_bf16", lambda: True)
    with Predictor(trained, PredictConfig(device="cpu", precision="bf16")) as p:
        assert p.backend.name == "torch" and p.backend.precision == "bf16"
    with Predictor(trained, PredictConfig(device="cpu", precision="fp32")) as p:
        assert p.backend.name == "onnxruntime" and p.backend.path.name == "model.onnx"
    with Predictor(trained, PredictConfig(device="cpu", precision="fp32", backend="onnxruntime")) as p:
        assert p.backend.path.name == "model.onnx"
    monkeypatch.setattr(dev, "native_cpu_bf16", lambda: False)
    (trained / INT8_NAME).rename(trained / "hidden.onnx")
    try:
        with Predictor(trained, PredictConfig(device="cpu")) as p:
            assert p.backend.name == "onnxruntime" and p.backend.path.name == "model.onnx"
        with pytest.raises(ConfigError, match="no verified int8 model.*--int8 --calibration"):
            Predictor(trained, PredictConfig(device="cpu", precision="int8"))
    finally:
        (trained / "hidden.onnx").rename(trained / INT8_NAME)
    with pytest.raises(ConfigError, match="ONNX Runtime has no bf16"):
        Predictor(trained, PredictConfig(device="cpu", backend="onnxruntime", precision="bf16"))
    with Predictor(trained / INT8_NAME) as p:  # an int8 .onnx file runs as it is
        assert p.backend.path.name == INT8_NAME


def test_int8_and_bf16_masks_agree_with_fp32(trained: Path) -> None:
    sample = blob_sample((6, 120, 100), seed=9)
    masks = {}
    for precision, backend in (("fp32", "onnxruntime"), ("int8", "onnxruntime"), ("bf16", "torch")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmsegWarning)  # bf16 on a CPU without bf16 units warns
            with Predictor(trained, PredictConfig(device="cpu", precision=precision, backend=backend)) as p:
                masks[precision] = p.predict(sample.image).masks.values[..., 0]
    assert f1(masks["fp32"], sample.masks[0]) > 0.85
    assert f1(masks["int8"], masks["fp32"]) > 0.98
    assert f1(masks["bf16"], masks["fp32"]) > 0.98


def test_tiled_int8_equals_whole_image_int8(trained: Path) -> None:
    """Static quantisation keeps every operation local, so the tiling guarantee still holds."""
    vol = (np.random.default_rng(3).random((1, 150, 170)) * 255).astype(np.uint8)
    info = read_model_info(trained)
    x = apply_normalization(vol, compute_stats(vol, info.normalization))
    xp = np.pad(x, ((0, 0), (0, 2), (0, 2)), mode="reflect")  # to multiples of 4
    sess = ort.InferenceSession(str(trained / INT8_NAME), providers=["CPUExecutionProvider"])
    whole = sess.run(None, {"input": xp[:, None]})[0][:, :, :150, :170]
    with Predictor(trained, PredictConfig(device="cpu", precision="int8", tile=(64, 64))) as p:
        assert p.plan(vol.shape).n_tiles > 4
        tiled = p.predict_block(vol, (0, 1))
    assert np.abs(tiled - np.moveaxis(whole, 1, 0)).max() <= 1e-3


def test_quantisation_that_disagrees_is_not_used(trained: Path, tmp_path: Path) -> None:
    info = read_model_info(trained)
    sample = blob_sample((8, 96, 96), seed=0)
    calib = tiles_from_samples([sample], info, (48, 48), 4, seed=0)
    report = quantize_int8(trained, calib, calib, output=tmp_path / "strict.int8.onnx", min_agreement=1.01)
    assert not report.verified and "NOT verified" in report.summary()
    assert not is_verified_int8(tmp_path / "strict.int8.onnx")


def test_export_int8_from_a_calibration_stack(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = tmp_path / "stack.tif"
    write_volume(stack, blob_sample((4, 96, 96), seed=4).image)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (copy / INT8_NAME).unlink()
    assert cli(["export", str(copy), "--int8"]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    assert cli(["export", str(copy), "--int8", "--calibration", str(stack)]) == 0
    out = capsys.readouterr().out
    assert "is up to date" in out and "mask agreement with fp32" in out
    assert is_verified_int8(copy / INT8_NAME)
    tiles = tiles_from_volume(stack, read_model_info(copy), (1, 64, 64), 3, seed=0)
    assert [t.shape for t in tiles] == [(1, 1, 64, 64)] * 3 and all(t.dtype == np.float32 for t in tiles)


def test_int8_agreement_is_judged_at_the_thresholds_prediction_uses() -> None:
    from fiji_emseg.export.quantize import _masks

    probs = np.array([0.3, 0.6, 0.8], np.float32).reshape(1, 1, 1, 3)  # (N, K, Y, X)
    assert _masks(probs, "sigmoid", [0.5]).tolist() == [[[[False, True, True]]]]
    assert _masks(probs, "sigmoid", [0.7]).tolist() == [[[[False, False, True]]]]
    two = np.concatenate([probs, probs], axis=1)
    assert _masks(two, "sigmoid", [0.25, 0.7]).reshape(2, 3).tolist() == [[True, True, True], [False, False, True]]
