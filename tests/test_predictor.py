"""Tiled inference equals whole-image inference; outputs, backends, errors, ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tifffile
import torch
from emseg_testdata import random_model_dir

from fiji_emseg.cli.main import main as cli
from fiji_emseg.engine.data.normalization import apply_normalization, compute_stats
from fiji_emseg.engine.data.volume_io import Calibration, read_volume, write_volume
from fiji_emseg.engine.inference.cleanup import CleanupConfig
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor, predict
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import load_model
from fiji_emseg.engine.models.onnx_metadata import read_onnx_metadata
from fiji_emseg.engine.models.unet import ProbabilityHead
from fiji_emseg.errors import ConfigError, ModelFileError, OutputError
from fiji_emseg.export.onnx_export import export_onnx

CFG2D = ModelConfig(classes=("a", "b"), depth=3, filters=8)
CFG2D_SOFTMAX = ModelConfig(classes=("a", "b"), depth=3, filters=8, output="softmax")
CFG3D = ModelConfig(classes=("a",), dims=3, depth=3, filters=4, z_poolings=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, cfg in (("2d", CFG2D), ("softmax", CFG2D_SOFTMAX), ("3d", CFG3D)):
        d = random_model_dir(root / name, cfg, seed=1)
        export_onnx(d)
        out[name] = d
    return out


_REFERENCE: dict[tuple[str, bytes], np.ndarray] = {}


def whole_image(model_dir: Path, volume: np.ndarray) -> np.ndarray:
    """Reference: the network on the whole (reflect-padded) image in one piece, in PyTorch."""
    key = (str(model_dir), volume.tobytes() + str(volume.shape).encode())
    if key not in _REFERENCE:
        _REFERENCE[key] = _whole_image(model_dir, volume)
    return _REFERENCE[key]


def _whole_image(model_dir: Path, volume: np.ndarray) -> np.ndarray:
    lm = load_model(model_dir)
    mc = lm.config
    net = ProbabilityHead(lm.module, mc.output).eval()
    x = apply_normalization(volume, compute_stats(volume, lm.info.normalization))
    mz, my, mx = mc.spatial_multiple
    z, y, xs = x.shape

    def pad(n: int, m: int) -> int:
        return -(-n // m) * m - n

    with torch.no_grad():
        if mc.dims == 2:
            xp = np.pad(x, ((0, 0), (0, pad(y, my)), (0, pad(xs, mx))), mode="reflect")
            out = net(torch.from_numpy(xp[:, None])).numpy()
            return np.moveaxis(out, 1, 0)[:, :, :y, :xs]
        xp = np.pad(x, ((0, pad(z, mz)), (0, pad(y, my)), (0, pad(xs, mx))), mode="reflect")
        return net(torch.from_numpy(xp[None, None])).numpy()[0][:, :z, :y, :xs]


def _vol(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.mark.parametrize("blend", ["cosine", "gaussian", "constant"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("kind, shape, tile", [
    ("2d", (3, 150, 203), (64, 96)),  # odd sizes, many tiles
    ("2d", (2, 37, 21), None),  # smaller than one tile
    ("softmax", (2, 101, 77), (64, 64)),
    ("3d", (13, 57, 70), (24, 56, 56)),
    ("3d", (5, 19, 30), None),  # smaller than one tile
])
def test_tiled_equals_whole_image(models: dict[str, Path], kind: str, shape: tuple[int, ...],
                                  tile: tuple[int, ...] | None, backend: str, blend: str) -> None:
    vol = _vol(shape)
    ref = whole_image(models[kind], vol)
    p = Predictor(models[kind], PredictConfig(tile=tile, blend=blend, backend=backend, device="cpu", precision="fp32"))
    plan = p.plan(shape)
    if tile is not None:
        assert plan.n_tiles > 1
    out = p.predict_block(vol, (0, shape[0]))
    assert np.abs(out - ref).max() <= 1e-3
    if shape[0] > 2:  # blocks predicted independently join seamlessly
        part = p.predict_block(vol, (1, shape[0] - 1))
        assert np.array_equal(part, out[:, 1:-1])


def test_small_overlap_is_allowed_but_not_exact(models: dict[str, Path]) -> None:
    vol = _vol((1, 200, 200))
    ref = whole_image(models["2d"], vol)
    p = Predictor(models["2d"], PredictConfig(tile=(64, 64), overlap=8, device="cpu", precision="fp32"))
    diff = np.abs(p.predict_block(vol, (0, 1)) - ref).max()
    exact = np.abs(Predictor(models["2d"], PredictConfig(tile=(64, 64), device="cpu", precision="fp32")).predict_block(vol, (0, 1)) - ref).max()
    assert exact < 1e-5 < diff  # only the default overlap makes tiling exact
    with pytest.raises(ConfigError, match="too small for this model's receptive field.*at least"):
        Predictor(models["3d"], PredictConfig(tile=(16, 48, 64), device="cpu")).plan((40, 100, 100))


def test_outputs_on_disk_with_calibration(models: dict[str, Path], tmp_path: Path) -> None:
    vol = _vol((4, 70, 90))
    cal = Calibration((0.05, 0.0046, 0.0046), "micron")
    write_volume(tmp_path / "stack.tif", vol, cal)
    cfg = PredictConfig(device="cpu", precision="fp32", outputs=("masks", "probabilities"), thresholds={"a": 0.3, "b": 0.7},
                        probability_dtype="uint8")
    result = predict(models["2d"], tmp_path / "stack.tif", tmp_path / "out", config=cfg)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["stack_a_mask.tif", "stack_a_prob.tif", "stack_b_mask.tif", "stack_b_prob.tif"]
    probs = whole_image(models["2d"], vol)
    for k, (cls, thr) in enumerate((("a", 0.3), ("b", 0.7))):
        mask, mcal = read_volume(tmp_path / "out" / f"stack_{cls}_mask.tif")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert mcal.voxel_size == pytest.approx(cal.voxel_size) and mcal.unit == "micron"
        agree = (mask > 0) == (probs[k] > thr)
        assert agree.mean() > 0.999  # differences only within float rounding of the threshold
        prob, _ = read_volume(tmp_path / "out" / f"stack_{cls}_prob.tif")
        assert prob.dtype == np.uint8 and np.abs(prob.astype(float) / 255 - probs[k]).max() <= 0.5 / 255 + 1e-4
    with tifffile.TiffFile(tmp_path / "out" / "stack_a_mask.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
    assert result.voxels_per_second > 0 and "ONNX Runtime" in result.backend


def test_softmax_labels_and_in_memory_xarray(models: dict[str, Path]) -> None:
    vol = _vol((3, 50, 60))
    cal = Calibration((2.0, 0.5, 0.5), "nm")
    res = predict(models["softmax"], vol, config=PredictConfig(device="cpu", precision="fp32", outputs=("probabilities", "masks", "labels")),
                  calibration=cal)
    probs = whole_image(models["softmax"], vol)
    labels = res.labels
    assert labels.dims == ("z", "y", "x") and np.array_equal(labels.values, probs.argmax(0))
    masks = res.masks
    assert masks.dims == ("z", "y", "x", "class") and list(masks["class"].values) == ["a", "b"]
    assert np.array_equal(masks.sel({"class": "b"}).values, probs.argmax(0) == 2)
    assert res.probabilities.shape == (3, 50, 60, 2)  # background dropped
    assert float(masks["x"][1]) == pytest.approx(0.5) and float(masks["z"][2]) == pytest.approx(4.0)
    assert masks.attrs["unit"] == "nm"


def test_zarr_output(models: dict[str, Path], tmp_path: Path) -> None:
    import zarr

    vol = _vol((3, 40, 40))
    predict(models["2d"], vol, tmp_path, config=PredictConfig(device="cpu", precision="fp32", storage="zarr", outputs=("masks",)), name="x")
    group = zarr.open_group(str(tmp_path / "x.zarr"), mode="r")
    assert group["masks"].shape == (2, 3, 40, 40) and group.attrs["classes"] == ["a", "b"]
    assert np.array_equal(np.asarray(group["masks"][0]), (whole_image(models["2d"], vol)[0] > 0.5).astype(np.uint8))


@pytest.mark.parametrize("per_slice", [True, False])
def test_cleanup_is_applied(models: dict[str, Path], tmp_path: Path, per_slice: bool) -> None:
    vol = _vol((3, 64, 64), seed=3)
    raw = predict(models["2d"], vol, config=PredictConfig(device="cpu", precision="fp32")).masks.values
    cleanup = CleanupConfig(min_object_size=30, per_slice=per_slice)
    cleaned = predict(models["2d"], vol, config=PredictConfig(device="cpu", precision="fp32", cleanup=cleanup)).masks.values
    assert cleaned.sum() < raw.sum() and not (cleaned & ~raw).any()
    from scipy import ndimage as ndi

    lab, n = ndi.label(cleaned[1, ..., 0]) if per_slice else ndi.label(cleaned[..., 0])
    sizes = np.bincount(lab.ravel())[1:]
    assert n == 0 or sizes.min() >= 30
    out = tmp_path / "new" / "folder"  # created on demand, also for the 3D clean-up's scratch file
    predict(models["2d"], vol, out, config=PredictConfig(device="cpu", precision="fp32", cleanup=cleanup, outputs=("masks",)), name="c")
    on_disk, _ = read_volume(out / "c_a_mask.tif")
    assert np.array_equal(on_disk > 0, cleaned[..., 0].astype(bool))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temporary files removed


def test_tta_is_close_to_plain_and_symmetric(models: dict[str, Path]) -> None:
    vol = _vol((1, 64, 64))
    p_plain = Predictor(models["2d"], PredictConfig(device="cpu", precision="fp32", outputs=("probabilities",)))
    p_tta = Predictor(models["2d"], PredictConfig(device="cpu", precision="fp32", tta=True, outputs=("probabilities",)))
    a = p_plain.predict(vol).probabilities.values
    b = p_tta.predict(vol).probabilities.values
    b_flipped = p_tta.predict(vol[:, ::-1].copy()).probabilities.values[:, ::-1]
    assert not np.allclose(a, b)
    assert np.allclose(b, b_flipped, atol=1e-5)  # the TTA average is flip-invariant


def test_onnx_and_torch_backends_agree(models: dict[str, Path]) -> None:
    vol = _vol((2, 80, 80))
    outs = [Predictor(models["2d"], PredictConfig(device="cpu", precision="fp32", backend=b)).predict_block(vol, (0, 2))
            for b in ("onnxruntime", "torch")]
    assert np.abs(outs[0] - outs[1]).max() < 1e-4


def test_cuda_requested_but_unavailable_is_explained(models: dict[str, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="CUDA was requested"):
        Predictor(models["2d"], PredictConfig(device="cuda"))
    with pytest.raises(ConfigError, match="CUDA was requested"):
        Predictor(models["2d"], PredictConfig(device="cuda", backend="torch"))
    from fiji_emseg.engine.inference.backends import OnnxRuntimeBackend

    with pytest.raises(ConfigError, match="ONNX Runtime fell back to the CPU"):
        OnnxRuntimeBackend(models["2d"] / "model.onnx", "cuda")


def test_corrupt_or_incompatible_models_name_the_file(models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelFileError, match="broken.onnx is not a valid ONNX file"):
        Predictor(bad)
    plain = tmp_path / "plain.onnx"
    m = onnx.load(str(models["2d"] / "model.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(plain))
    with pytest.raises(ModelFileError, match="plain.onnx is an ONNX model without fiji-emseg metadata"):
        Predictor(plain)
    folder = tmp_path / "m"
    random_model_dir(folder, CFG2D)
    (folder / "weights.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="weights.safetensors is damaged"):
        Predictor(folder, PredictConfig(backend="torch", device="cpu"))
    with pytest.raises(ModelFileError, match="neither a fiji-emseg model folder"):
        Predictor(tmp_path)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    with pytest.raises(Exception, match="RGB"):
        predict(models["2d"], rgb, config=PredictConfig(device="cpu", precision="fp32"))


def test_existing_outputs_are_kept_and_nothing_is_half_written(models: dict[str, Path], tmp_path: Path) -> None:
    vol = _vol((2, 40, 40))
    (tmp_path / "x_b_mask.tif").write_bytes(b"user file")
    with pytest.raises(OutputError, match="x_b_mask.tif already exists"):
        predict(models["2d"], vol, tmp_path, config=PredictConfig(device="cpu", precision="fp32"), name="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_b_mask.tif"]  # nothing else was written
    assert (tmp_path / "x_b_mask.tif").read_bytes() == b"user file"
    predict(models["2d"], vol, tmp_path, config=PredictConfig(device="cpu", precision="fp32"), name="x", overwrite=True)
    assert read_volume(tmp_path / "x_b_mask.tif")[0].shape == (2, 40, 40)


def test_model_folder_without_onnx_is_exported_on_the_fly(tmp_path: Path) -> None:
    folder = random_model_dir(tmp_path / "m", ModelConfig(classes=("a",), depth=2, filters=4))
    res = predict(folder, _vol((1, 32, 32)), config=PredictConfig(device="cpu", precision="fp32", backend="onnxruntime"))
    assert res.masks.shape == (1, 32, 32, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]  # left untouched


# ----------------------------------------------------------------------------- export


def test_export_verifies_and_carries_metadata(models: dict[str, Path], tmp_path: Path) -> None:
    report = export_onnx(models["softmax"], tmp_path / "m.onnx", fp16=True)
    assert report.max_abs_diff < 1e-5 and report.fp16_max_abs_diff is not None and report.fp16_max_abs_diff < 2e-2
    assert report.fp16_path == tmp_path / "m.fp16.onnx" and report.fp16_path.exists()
    meta = read_onnx_metadata(tmp_path / "m.onnx")
    assert meta.model == CFG2D_SOFTMAX and meta.normalization.method == "percentile"
    assert meta.receptive_field.halo == (0, 22, 22) and meta.recommended_tile == (1, 1024, 1024)
    assert meta.precision == "fp32" and read_onnx_metadata(report.fp16_path).precision == "fp16"
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["fiji_emseg.classes"]) == ["a", "b"] and props["fiji_emseg.output_mode"] == "softmax"
    assert json.loads(props["fiji_emseg.spatial_multiple"]) == [1, 4, 4]
    # dynamic batch and spatial axes
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 8, 12), (3, 1, 40, 28)):
        assert sess.run(None, {"input": np.zeros(shape, np.float32)})[0].shape == (shape[0], 3, *shape[2:])


def test_export_fails_loudly_and_leaves_no_file(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="export check failed.*differ by up to"):
        export_onnx(models["2d"], tmp_path / "x.onnx", tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="already exists"):
        export_onnx(models["2d"], models["2d"] / "model.onnx")


def test_cli_predict_a_folder_of_stacks(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stacks = tmp_path / "stacks"
    for i in range(3):
        write_volume(stacks / f"s{i}.tif", _vol((2, 40, 50), seed=i))
    code = cli(["predict", str(models["2d"] / "model.onnx"), str(stacks), "-o", str(tmp_path / "out"), "-q",
                "--outputs", "masks", "labels", "--min-size", "5", "--cleanup-2d"])
    assert code == 0
    out = capsys.readouterr().out
    assert "3 stacks" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"s{i}_{k}" for i in range(3) for k in ("a_mask.tif", "b_mask.tif", "labels.tif"))
    assert cli(["predict", str(models["2d"]), str(stacks / "s0.tif"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
