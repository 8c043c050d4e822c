"""2.5D networks (``ModelConfig.slice_context``): each slice sees its neighbours, the model is
read and written as a 3D one, and it learns what a 2D network cannot see."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from emseg_testdata import blob_volume, f1

from fiji_emseg.engine.data.normalization import NormalizationConfig
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.architectures import build_model
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.receptive_field import measure_config_receptive_field, recommended_tile
from fiji_emseg.engine.models.unet import SliceContextUNet, UNet, set_centre_only
from fiji_emseg.engine.training.augment import AugmentConfig
from fiji_emseg.engine.training.fingerprint import fingerprint
from fiji_emseg.engine.training.planner import plan_training
from fiji_emseg.engine.training.sampling import PatchSampler, TrainingVolume
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
from fiji_emseg.errors import ConfigError

TINY25 = ModelConfig(classes=("prev",), dims=3, depth=2, filters=8, slice_context=1)


def test_config_names_checks_and_round_trip() -> None:
    mc = ModelConfig(classes=("a",), dims=3, filters=16, slice_context=1)
    assert mc.name == "unet2.5d_f16_d5" and ModelConfig(dims=3, slice_context=2).name == "unet2.5d_f32_d5_s2"
    assert mc.spatial_multiple == (1, 16, 16) and mc.z_pool_count == 0  # no Z pooling, any stack depth
    assert ModelConfig.from_dict(json.loads(json.dumps(mc.to_dict()))) == mc
    old = ModelConfig(dims=3).to_dict()
    del old["slice_context"]  # configs written before 2.5D load as plain 3D models
    assert ModelConfig.from_dict(old).slice_context == 0
    for kw, words in (({"dims": 2, "slice_context": 1}, "needs dims=3"), ({"dims": 3, "slice_context": 4}, "between 0 and 3"),
                      ({"dims": 3, "slice_context": 1, "z_poolings": 2}, "z_poolings=0"),
                      ({"dims": 3, "slice_context": 1, "architecture": "x.y:z"}, "built-in")):
        with pytest.raises(ConfigError, match=words):
            ModelConfig(**kw)  # type: ignore[arg-type]
    assert isinstance(build_model(mc), SliceContextUNet) and isinstance(build_model(ModelConfig(dims=3)), UNet)


@pytest.mark.parametrize("context", [1, 2])
def test_each_slice_sees_exactly_its_neighbours(context: int) -> None:
    mc = ModelConfig(classes=("a", "b"), dims=3, depth=2, filters=4, slice_context=context)
    torch.manual_seed(0)
    net = build_model(mc).eval()
    x = torch.randn(2, 1, 7, 32, 32)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 2, 7, 32, 32)
        for z in range(7):
            x2 = x.clone()
            x2[:, :, z] += 3.0
            changed = [k for k in range(7) if (net(x2) - y)[:, :, k].abs().max() > 1e-6]
            assert changed == [k for k in range(7) if abs(k - z) <= context]
        # a single slice and a stack of two run too (the ends repeat the first and last slice)
        assert net(x[:, :, :1]).shape == (2, 2, 1, 32, 32) and net(x[:, :, :2]).shape == (2, 2, 2, 32, 32)
        # slice z is the 2D U-Net on slices z-s..z+s as channels
        z = 3
        flat = x[:, 0, z - context:z + context + 1]
        assert torch.allclose(net.net(flat), y[:, :, z], atol=1e-5)
    assert measure_config_receptive_field(mc).radius[0] == context


def test_prediction_tiles_are_a_few_full_width_slices() -> None:
    mc = ModelConfig(classes=("a",), dims=3, filters=16, slice_context=1)
    rf = measure_config_receptive_field(mc)
    assert recommended_tile(mc, rf) == (8, 1024, 1024)
    plain3d = ModelConfig(dims=3, depth=3)
    assert recommended_tile(plain3d, measure_config_receptive_field(plain3d))[0] >= 32  # 3D tiles stay deep


def neighbour_task(seed: int) -> Sample:
    """Squares that live in one slice each; the target of slice k is the squares of slice k-1.

    Nothing in slice k tells where its target is: only a network that sees the slice before can
    learn it (slice 0's neighbour is itself, the 2.5D network's repeated end slice).
    """
    image, masks = blob_volume((12, 64, 64), n=120, half=5, seed=seed, noise=15.0)
    target = np.concatenate([masks[:, :1], masks[:, :-1]], axis=1)
    return Sample(f"neighbours {seed}", image, target, ("prev",))


def test_learns_what_only_the_neighbouring_slice_shows_and_predicts_the_same_everywhere(tmp_path: Path) -> None:
    train, test = neighbour_task(0), neighbour_task(1)
    cfg = TrainConfig(epochs=4, steps_per_epoch=25, batch_size=8, patch_size=(48, 48), learning_rate=3e-3,
                      loss="dice_ce", label_focus=0.5, val_steps=0, val_slices=None, seed=0, device="cpu",
                      bn_recalibration_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = train_model([train], tmp_path / "m25", model_config=TINY25, config=cfg)
        # the same patches and steps, without neighbours
        train_model([train], tmp_path / "m2", model_config=ModelConfig(classes=("prev",), depth=2, filters=8), config=cfg)
    saved = json.loads((tmp_path / "m25" / "config.json").read_text())
    assert r.status == "completed" and saved["model"]["slice_context"] == 1
    assert saved["training"]["config"]["patch_size"] == [3, 48, 48]  # (Y, X) given: the centre slice and one each side
    ref = test.masks[0] > 0
    scores = {}
    for name in ("m25", "m2"):
        out = Predictor(tmp_path / name, PredictConfig(backend="torch", thresholds=0.5)).predict(test.image)
        scores[name] = f1(np.asarray(out.masks)[..., 0], ref)  # (z, y, x, class)
    assert scores["m25"] > 0.55 and scores["m2"] < 0.15, scores  # (a tiny net, 100 steps)
    # ONNX Runtime, torch, and tiles of any depth (the Z halo is measured) agree (1e-5 torch, 1e-4 ONNX),
    # in fp32 (on CPUs with bf16 units torch would otherwise predict in bf16)
    torch_p = np.asarray(Predictor(tmp_path / "m25", PredictConfig(backend="torch", precision="fp32", outputs=("probabilities",),
                                                                   tile=(12, 64, 64))).predict(test.image).probabilities)
    for backend, tile in (("torch", (3, 48, 48)), ("onnxruntime", (4, 64, 64)), ("onnxruntime", None)):
        p = Predictor(tmp_path / "m25", PredictConfig(backend=backend, precision="fp32", outputs=("probabilities",), tile=tile))
        got = np.asarray(p.predict(test.image).probabilities)
        assert np.abs(got - torch_p).max() < (1e-5 if backend == "torch" else 1e-4), (backend, tile)


def test_the_training_form_is_the_prediction_form_on_each_centre_slice() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(classes=("a",), dims=3, depth=2, filters=4, slice_context=2)).eval()
    x = torch.randn(3, 1, 9, 32, 32)
    with torch.no_grad():
        full = net(x)
        set_centre_only(net, True)
        for z in range(2, 7):
            assert torch.allclose(net(x[:, :, z - 2:z + 3]), full[:, :, z:z + 1], atol=1e-5)
        with pytest.raises(ValueError, match="5 slices"):
            net(x)
        set_centre_only(net, False)
    assert "centre_only" not in "".join(net.state_dict())  # never saved: a loaded model predicts stacks


def test_sampler_gives_each_slice_with_its_neighbours_and_only_its_own_target() -> None:
    image, masks = blob_volume((5, 64, 64), n=40)
    image[:] = np.arange(5, dtype=np.uint8)[:, None, None] * 50  # each slice's value names it
    vol = TrainingVolume.prepare(Sample("s", image, masks, ("bright",)), NormalizationConfig(method="none"), "sigmoid")
    sampler = PatchSampler([vol], (32, 32), 0.5, AugmentConfig.none(), dims=3, slice_context=1)
    assert sampler.patch == (3, 32, 32)
    rng = np.random.default_rng(0)
    centres = set()
    for _ in range(200):
        vi, start = sampler.random_location(rng)
        img, tgt, valid = sampler.extract(vi, start)
        zc, y0, x0 = sampler.target_origin(start)
        centres.add(zc)
        assert img.shape == (3, 32, 32) and tgt.shape == (1, 1, 32, 32) and valid is None
        want = [min(max(z, 0), 4) * 50 for z in (zc - 1, zc, zc + 1)]  # the end slices repeat past the stack
        assert [float(img[k, 0, 0]) for k in range(3)] == want
        assert np.array_equal(tgt[0, 0], masks[0, zc, y0:y0 + 32, x0:x0 + 32])
    assert centres == set(range(5))  # the first and last slices are trained too
    batch = sampler.batch(4, rng)
    assert batch.image.shape == (4, 1, 3, 32, 32) and batch.target.shape == (4, 1, 1, 32, 32)


def stack(slices: int = 12) -> Sample:
    image, masks = blob_volume((slices, 256, 256), n=200, half=6)
    return Sample("stack", image, masks, ("bright",))


def timer(mc: ModelConfig, cfg: TrainConfig) -> float:
    return 0.5


def test_plan_for_2_5d_uses_the_2d_rules_with_a_few_slices_per_patch() -> None:
    sample = stack()
    fp = fingerprint([sample])
    flat = plan_training(fp, classes=("bright",), time_limit_minutes=10, device="cpu", step_timer=timer)
    p = plan_training(fp, classes=("bright",), time_limit_minutes=10, device="cpu", step_timer=timer,
                      model_overrides={"slice_context": 1})
    assert p.model["dims"] == 3 and p.model["slice_context"] == 1 and p.model["depth"] == flat.model["depth"] == 5
    assert p.train["patch_size"] == [3, *flat.train["patch_size"]] and p.train["batch_size"] == flat.train["batch_size"]
    assert any("2.5D" in r for r in p.reasons) and "slice_context" in p.overridden
    two = plan_training(fp, classes=("bright",), time_limit_minutes=10, device="cpu", step_timer=timer,
                        model_overrides={"slice_context": 2})
    assert two.train["patch_size"][0] == 5
    given = plan_training(fp, classes=("bright",), time_limit_minutes=10, device="cpu", step_timer=timer,
                          model_overrides={"slice_context": 1}, train_overrides={"patch_size": (64, 64)})
    assert given.train["patch_size"] == [3, 64, 64]  # an in-plane patch (Fiji's square field)
    with pytest.raises(ConfigError, match="needs dims=3"):
        plan_training(fp, classes=("bright",), time_limit_minutes=10, device="cpu", step_timer=timer,
                      model_overrides={"slice_context": 1, "dims": 2})


def test_cli_plan_and_train_take_slice_context(tmp_path: Path) -> None:
    import tifffile

    sample = stack(slices=6)
    tifffile.imwrite(tmp_path / "img.tif", sample.image)
    tifffile.imwrite(tmp_path / "bright.tif", sample.masks[0] * 255)
    data = ["--image", str(tmp_path / "img.tif"), "--masks", str(tmp_path / "bright.tif")]
    out = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "plan", *data, "--slice-context", "1",
                          "--filters", "4", "--depth", "2", "--time-limit", "1", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["model"]["slice_context"] == 1 and plan["model"]["dims"] == 3 and plan["train"]["patch_size"][0] == 3
    run = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "train", str(tmp_path / "m"), *data, "--plan",
                          "none", "--slice-context", "1", "--filters", "4", "--depth", "2", "--epochs", "1", "--steps", "2",
                          "--batch-size", "2", "--patch-size", "64", "64", "--val-steps", "0", "--no-int8"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert saved["slice_context"] == 1 and saved["dims"] == 3 and (tmp_path / "m" / "model.onnx").exists()
