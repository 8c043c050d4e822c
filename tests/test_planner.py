"""The training planner: fingerprints of known data, plans that follow the data, budget and device,
overrides, the measured duration estimate, the saved plan, and the robust threshold rule."""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fiji_emseg.api import TrainRequest, plan_request, warn_before_the_wait
from fiji_emseg.engine.callbacks import Callback, StepReport
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.data.volume_io import Calibration
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.training.fingerprint import DataFingerprint, fingerprint
from fiji_emseg.engine.training.planner import TrainingPlan, plan_training
from fiji_emseg.engine.training.step_probe import probe_step_seconds
from fiji_emseg.engine.training.threshold_calibration import THRESHOLD_GRID, choose_threshold
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
from fiji_emseg.errors import ConfigError, EmsegWarning


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMSEG_CACHE_DIR", str(tmp_path / "cache"))


def discs(shape: tuple[int, int, int], radius: int, z_length: int, voxel: tuple[float, float, float],
          spacing: int = 48, seed: int = 0) -> Sample:
    """Cylinders of a known radius (px) spanning *z_length* slices, on a grid, with a noisy image."""
    z, y, x = shape
    mask = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:y, :x]
    disk = np.zeros((y, x), bool)
    for cy in range(spacing // 2, y - radius, spacing):
        for cx in range(spacing // 2, x - radius, spacing):
            disk |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    for z0 in range(0, z - z_length + 1, z_length + 2):
        mask[z0:z0 + z_length][:, disk] = 1
    rng = np.random.default_rng(seed)
    image = (100 + 80 * mask + rng.normal(0, 5, shape)).clip(0, 255).astype(np.uint8)
    return Sample("discs", image, mask[None], ("mito",), Calibration(voxel, "nm"))


def constant_timer(seconds: float):  # noqa: ANN201 - a test double for the measured step time
    return lambda mc, cfg: seconds


def test_fingerprint_measures_voxel_size_anisotropy_object_sizes_and_annotation() -> None:
    s = discs((20, 160, 160), radius=10, z_length=6, voxel=(50.0, 5.0, 5.0))
    region = np.zeros(s.shape, bool)
    region[0:14, 8:152, 16:144] = True  # cylinders at z 0-5 and 8-13 lie whole inside
    s = Sample(s.name, s.image, s.masks, s.class_names, s.calibration, annotated=region)
    fp = fingerprint([s])
    assert fp.voxel_size == (50.0, 5.0, 5.0) and fp.unit == "nm"
    assert fp.anisotropy == pytest.approx(10.0)
    assert fp.annotated_slices == 14 and fp.longest_annotated_run == 14
    assert fp.annotated_yx == (144, 128)
    assert fp.annotated_voxels == 14 * 144 * 128
    mito = fp.classes[0]
    area = np.pi * 10 ** 2
    assert mito.diameter_median_px == pytest.approx(2 * np.sqrt(area / np.pi), rel=0.06)  # a 10 px disc: 20 px
    assert mito.z_extent_median == 6  # objects span 6 slices
    in_region = s.masks[0][region].mean()
    assert mito.foreground_fraction == pytest.approx(in_region, rel=0.02)
    assert fp.intensity_percentiles["p1"] < fp.intensity_percentiles["p50"] < fp.intensity_percentiles["p99.8"]
    assert DataFingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp


def test_plan_follows_voxel_size_object_size_budget_and_device() -> None:
    classes = ("mito",)
    aniso = fingerprint([discs((20, 160, 160), 10, 6, (50.0, 5.0, 5.0))])
    iso = fingerprint([discs((20, 160, 160), 10, 6, (5.0, 5.0, 5.0))])
    a = plan_training(aniso, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5))
    b = plan_training(iso, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5))
    assert a.model["dims"] == 2 and b.model["dims"] == 3
    raw = discs((20, 160, 160), 10, 6, (1.0, 1.0, 1.0))
    raw.calibration = Calibration((1.0, 1.0, 1.0), "pixel")  # a TIFF without a voxel size
    u = plan_training(fingerprint([raw]), classes=classes, time_limit_minutes=10, device="cpu",
                      step_timer=constant_timer(0.5))
    assert u.model["dims"] == 2 and "no voxel size" in u.reasons[0]
    assert any("anisotropic" in r for r in a.reasons) and any("isotropic" in r for r in b.reasons)
    # 3D patches are no deeper than the annotated run and fit the spatial multiple
    pz, py, px = b.train["patch_size"]
    mult = ModelConfig(classes=classes, **b.model).spatial_multiple
    assert pz <= 20 and pz % mult[0] == 0 and py % mult[1] == 0
    # larger objects -> larger patches (up to the CPU cap); small ones get at least the receptive
    # field (189 px at depth 5 -> 192), or the whole annotated region where that is smaller
    big = fingerprint([discs((8, 320, 320), 40, 3, (50.0, 5.0, 5.0), spacing=100)])
    c = plan_training(big, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5))
    wide = fingerprint([discs((8, 320, 320), 10, 3, (50.0, 5.0, 5.0))])
    w = plan_training(wide, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5))
    assert c.train["patch_size"] == [256, 256] and w.train["patch_size"] == [192, 192]
    assert any("receptive field (189 px" in r for r in w.reasons)
    assert a.train["patch_size"] == [160, 160]  # the 160 px images bound it
    shallow = plan_training(wide, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5),
                            model_overrides={"depth": 3})  # receptive field 45 px: the 128 px floor
    assert shallow.train["patch_size"] == [128, 128]
    # the budget sets the steps; the cosine schedule anneals over it
    d = plan_training(aniso, classes=classes, time_limit_minutes=40, device="cpu", step_timer=constant_timer(0.5))
    steps_a = a.train["epochs"] * a.train["steps_per_epoch"]
    steps_d = d.train["epochs"] * d.train["steps_per_epoch"]
    assert 3.5 < steps_d / steps_a < 4.5
    assert steps_a * 0.5 <= 10 * 60 and d.train["time_limit_minutes"] == 40 and d.train["lr_schedule"] == "cosine"
    assert abs(a.estimated_minutes - 10) < 1.5
    # a GPU gets a wider net and more per step; a slower machine fewer steps
    g = plan_training(aniso, classes=classes, time_limit_minutes=10, device="cuda", step_timer=constant_timer(0.05))
    assert g.device == "cuda" and g.model["filters"] == 32 and a.model["filters"] == 16
    slow = plan_training(aniso, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(2.0))
    assert slow.train["epochs"] * slow.train["steps_per_epoch"] < steps_a
    # error-driven sampling where the budget gives enough epochs for mining to pay, not in short runs
    assert a.train["epochs"] >= 6 and a.train["hard_fraction"] == 0.25
    assert any(r.startswith("error-driven sampling") for r in a.reasons)
    short = plan_training(aniso, classes=classes, time_limit_minutes=2, device="cpu", step_timer=constant_timer(0.5))
    assert short.train["epochs"] < 6 and short.train["hard_fraction"] == 0.0
    for plan in (a, d, short):  # the epochs hold the steps that fit, not whole epochs of 100 past the budget
        fit = int(next(r for r in plan.reasons if " steps fit in " in r).split()[0])
        assert 0 <= plan.train["epochs"] * plan.train["steps_per_epoch"] - fit < plan.train["epochs"], plan.describe()
    assert short.train["steps_per_epoch"] < 100
    assert any(r.startswith("no error-driven sampling") for r in short.reasons)
    assert not any(r.startswith("error-driven sampling") for r in short.reasons)
    off = plan_training(aniso, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5),
                        train_overrides={"hard_fraction": 0.0})
    assert off.train["hard_fraction"] == 0.0 and "hard_fraction" in off.overridden
    # the headline states what will be trained, overrides included
    adamw = plan_training(aniso, classes=classes, time_limit_minutes=10, device="cpu", step_timer=constant_timer(0.5),
                          train_overrides={"optimizer": "adamw", "weight_decay": 0.01})
    assert "AdamW lr 0.002, weight decay 0.01 (cosine)" in adamw.describe().splitlines()[0]
    assert "Adam lr 0.002 (cosine)" in a.describe().splitlines()[0]
    # no budget given: a default one, and the plan says so
    e = plan_training(aniso, classes=classes, device="cpu", step_timer=constant_timer(0.5))
    assert e.budget_minutes == 30 and "no time limit given" in e.reasons[0]


def test_explicit_options_override_the_plan(tmp_path: Path) -> None:
    from fiji_emseg.cli.main import build_parser

    s = discs((10, 128, 128), 10, 4, (50.0, 5.0, 5.0))
    args = build_parser().parse_args([
        "train", str(tmp_path / "m"), "--image", "x.tif", "--masks", "y.tif", "--filters", "4", "--depth", "2",
        "--patch-size", "64", "64", "--batch-size", "2", "--loss", "dice", "--time-limit", "1", "--spatial", "0.3",
        "--no-train-on-validation"])
    request = TrainRequest.from_cli(args)
    assert request.plan == "auto"
    assert request.model_overrides == {"filters": 4, "depth": 2}
    assert request.train_overrides == {"patch_size": (64, 64), "batch_size": 2, "loss": "dice",
                                       "train_on_validation": False}
    plan, cfg, model_kw = plan_request(request, [s])
    assert model_kw["filters"] == 4 and model_kw["depth"] == 2 and model_kw["dims"] == 2
    assert cfg.patch_size == (64, 64) and cfg.batch_size == 2 and cfg.loss == "dice"
    assert cfg.label_focus == 0.5 and cfg.learning_rate == 2e-3  # not given: planned
    assert cfg.augment.p_spatial == 0.3  # augmentation is not planned: the plan keeps what was given
    assert sorted(plan.overridden) == ["batch_size", "depth", "filters", "loss", "patch_size", "train_on_validation"]
    reasons = plan.describe().splitlines()
    # each decision that was given reads as given, then the plan's own choice and why
    assert "  - filters 4, depth 2: your options; the plan's own choice was 16 filters, depth 5: on a CPU" in "\n".join(
        reasons), reasons
    assert any(r.startswith("  - patch_size 64x64: your option; the plan's own choice was patch ") for r in reasons)
    assert any(r.startswith("  - loss dice: your option; the plan's own choice was Dice + cross-entropy") for r in reasons)
    assert not any(r.startswith("  - 16 filters") or r.startswith("  - patch ") for r in reasons), reasons
    # a given patch rescales the planned batch (same voxels per step); a given batch stays
    big = discs((10, 512, 512), 10, 4, (50.0, 5.0, 5.0))
    own = plan_training(fingerprint([big]), classes=("mito",), time_limit_minutes=1, device="cpu",
                        step_timer=constant_timer(0.5))
    given = plan_training(fingerprint([big]), classes=("mito",), time_limit_minutes=1, device="cpu",
                          step_timer=constant_timer(0.5), train_overrides={"patch_size": (256, 256)})
    assert own.train["patch_size"] == [192, 192] and own.train["batch_size"] == 14
    assert given.train["patch_size"] == [256, 256] and given.train["batch_size"] == 8
    both = plan_training(fingerprint([big]), classes=("mito",), time_limit_minutes=1, device="cpu",
                         step_timer=constant_timer(0.5), train_overrides={"patch_size": (256, 256), "batch_size": 3})
    assert both.train["batch_size"] == 3
    assert cfg.train_on_validation is False and cfg.fill_time_limit is True
    seen = TrainRequest.from_cli(build_parser().parse_args([
        "train", "m", "--image", "x.tif", "--masks", "y.tif", "--train-on-validation"]))
    assert plan_request(seen, [s])[1].train_on_validation is True  # given: the plan follows it
    none = TrainRequest.from_cli(build_parser().parse_args(["train", "m", "--image", "x", "--masks", "y", "--plan", "none"]))
    assert none.plan == "none" and none.train == TrainConfig(seed=None) and none.model["filters"] == 32


class _StepTimes(Callback):
    def __init__(self) -> None:
        self.t: list[float] = []

    def on_step(self, report: StepReport) -> None:
        self.t.append(time.perf_counter())


def test_duration_estimate_is_within_2x_of_the_measured_step_time(tmp_path: Path) -> None:
    s = discs((6, 96, 96), 8, 3, (50.0, 5.0, 5.0))
    mc = ModelConfig(classes=("mito",), depth=3, filters=8)
    cfg = TrainConfig(epochs=1, steps_per_epoch=24, batch_size=4, patch_size=(64, 64), val_steps=0, seed=0,
                      bn_recalibration_batches=0, calibrate_thresholds=False, device="cpu")
    estimate = probe_step_seconds(mc, cfg, use_cache=False).seconds_per_step
    times = _StepTimes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        train_model([s], tmp_path / "m", model_config=mc, config=cfg, callbacks=[times])
    measured = statistics.median(np.diff(times.t[4:]))
    assert 0.5 <= estimate / measured <= 2.0, (estimate, measured)


def test_a_run_writes_its_step_time_back_and_the_next_plan_starts_from_it(tmp_path: Path) -> None:
    s = discs((6, 96, 96), 8, 3, (50.0, 5.0, 5.0))
    kw = {"classes": ("mito",), "time_limit_minutes": 5, "device": "cpu", "model_overrides": {"depth": 3, "filters": 8},
          "train_overrides": {"patch_size": (64, 64), "batch_size": 4, "steps_per_epoch": 24}}
    first = plan_training(fingerprint([s]), **kw)  # type: ignore[arg-type]
    assert any("(measured on this machine)" in r for r in first.reasons), first.reasons
    assert "s/step (measured) ->" in first.describe().splitlines()[0], first.describe()
    base = TrainConfig(seed=0, device="cpu", val_steps=0, bn_recalibration_batches=0, calibrate_thresholds=False)
    times = _StepTimes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        cfg = first.train_config(base).replace(epochs=1, fill_time_limit=False)  # 24 steps, not 5 minutes
        train_model([s], tmp_path / "m", model_config=first.model_config(("mito",)), config=cfg, callbacks=[times])
    measured = statistics.median(np.diff(times.t))
    recorded = json.loads((tmp_path / "m" / "config.json").read_text())["training"]["median_step_s"]
    assert 0.5 <= recorded / measured <= 2.0, (recorded, measured)
    # a plan of the same network for another class reads the run's pace, and says so
    again = plan_training(fingerprint([s]), **{**kw, "classes": ("er",)})  # type: ignore[arg-type]
    assert again.seconds_per_step == pytest.approx(recorded, abs=1e-4)  # config.json rounds to 0.1 ms
    assert any("the median step of an earlier run" in r for r in again.reasons), again.reasons
    # ... in its headline too, also once saved and read back (emseg info shows the saved plan)
    for shown in (again, TrainingPlan.from_dict(json.loads(json.dumps(again.to_dict())))):
        assert "s/step (median of an earlier run) ->" in shown.describe().splitlines()[0], shown.describe()
    probe = probe_step_seconds(again.model_config(("er",)), again.train_config(base))
    assert probe.cached and probe.source == "run" and "earlier run" in probe.describe()


def test_a_short_run_and_a_broken_cache_leave_the_probe_alone(tmp_path: Path) -> None:
    from fiji_emseg.engine.models.device import choose_device
    from fiji_emseg.engine.training.step_probe import CACHE_NAME, MIN_RUN_STEPS, cache_dir, record_step_seconds

    mc = ModelConfig(classes=("mito",), depth=2, filters=4)
    cfg = TrainConfig(batch_size=2, patch_size=(32, 32), device="cpu")
    choice = choose_device("cpu", cfg.amp, cfg.channels_last, 2)
    assert record_step_seconds(mc, cfg, choice, [0.01] * (MIN_RUN_STEPS - 1)) is None
    assert not (cache_dir() / CACHE_NAME).exists()  # too few steps: nothing written
    probed = probe_step_seconds(mc, cfg)
    assert not probed.cached and probed.source == "probe"
    assert record_step_seconds(mc, cfg, choice, [5.0] * MIN_RUN_STEPS) == 5.0
    assert probe_step_seconds(mc, cfg).seconds_per_step == 5.0
    # an entry that is not a positive number of seconds is measured again, not trusted
    path = cache_dir() / CACHE_NAME
    entries = json.loads(path.read_text())
    path.write_text(json.dumps({k: {"seconds": -1, "source": "run"} for k in entries}))
    again = probe_step_seconds(mc, cfg)
    assert not again.cached and 0 < again.seconds_per_step < 5.0
    # caches of earlier versions hold the probe's seconds alone
    path.write_text(json.dumps(dict.fromkeys(entries, 0.25)))
    old = probe_step_seconds(mc, cfg)
    assert old.cached and old.seconds_per_step == 0.25 and old.source == "probe"


def test_deep_supervision_and_weight_averaging_are_probed_apart_from_plain_steps() -> None:
    from fiji_emseg.engine.models.device import choose_device
    from fiji_emseg.engine.training.step_probe import MIN_RUN_STEPS, record_step_seconds

    mc = ModelConfig(classes=("mito",), depth=3, filters=4)
    cfg = TrainConfig(batch_size=2, patch_size=(32, 32), device="cpu")
    choice = choose_device("cpu", cfg.amp, cfg.channels_last, 2)
    assert record_step_seconds(mc, cfg, choice, [5.0] * MIN_RUN_STEPS) == 5.0  # a plain run's pace
    for extra in ({"deep_supervision": 1}, {"ema_decay": 0.99}):
        other = probe_step_seconds(mc, cfg.replace(**extra))
        assert not other.cached and other.seconds_per_step < 5.0, extra  # measured, not the plain run's pace
        assert probe_step_seconds(mc, cfg.replace(**extra)).cached  # and kept under its own key
    assert probe_step_seconds(mc, cfg).seconds_per_step == 5.0  # the plain entry is untouched
    # the probe builds the heads as the trainer does: a level the network lacks is refused
    with pytest.raises(ConfigError, match="has 1 decoder levels below full resolution"):
        probe_step_seconds(ModelConfig(classes=("mito",), depth=3, filters=4), cfg.replace(deep_supervision=2))


def test_a_planned_run_fills_its_time_limit_at_its_own_pace_and_given_epochs_are_kept(tmp_path: Path) -> None:
    s = discs((6, 64, 64), 8, 3, (50.0, 5.0, 5.0))
    small = {"model_overrides": {"depth": 2, "filters": 4},
             "train_overrides": {"patch_size": (32, 32), "batch_size": 2, "steps_per_epoch": 5}}
    # a probe that measured steps 100x too slow (a busy machine): the plan holds a single epoch ...
    plan = plan_training(fingerprint([s]), classes=("mito",), time_limit_minutes=0.1, device="cpu",
                         step_timer=constant_timer(30.0), **small)  # type: ignore[arg-type]
    assert plan.train["epochs"] == 1 and plan.train["fill_time_limit"] is True
    assert any("fills the 0.1 min" in r for r in plan.reasons)
    # the validation data stays held out unless asked (measured within a seed's spread: not planned)
    assert "train_on_validation" not in plan.train and plan.train_config(TrainConfig()).train_on_validation is False
    base = TrainConfig(seed=0, device="cpu", val_steps=0, bn_recalibration_batches=0, calibrate_thresholds=False)
    cfg = plan.train_config(base)
    mc = plan.model_config(("mito",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        r = train_model([s], tmp_path / "fill", model_config=mc, config=cfg)
        # ... yet the run trains to the end of its 6 s, annealed over the time, and records the epochs it ran
        assert r.status == "time-limit" and r.epochs_run > 2, (r.status, r.epochs_run)
        assert r.duration_s >= 6.0 and r.history[-1]["lr"] < 0.05 * cfg.learning_rate
        saved = json.loads((tmp_path / "fill" / "config.json").read_text())["training"]["config"]
        assert saved["epochs"] == r.epochs_run and saved["fill_time_limit"] is True
        # epochs the user gives are kept: the plan does not fill, and the run ends with its one epoch
        given = plan_training(fingerprint([s]), classes=("mito",), time_limit_minutes=0.1, device="cpu",
                              step_timer=constant_timer(30.0), model_overrides=small["model_overrides"],
                              train_overrides={**small["train_overrides"], "epochs": 1})
        assert "fill_time_limit" not in given.train and given.train_config(base).fill_time_limit is False
        r1 = train_model([s], tmp_path / "given", model_config=mc, config=given.train_config(base))
    assert r1.status == "completed" and r1.epochs_run == 1 and r1.duration_s < 6.0
    with pytest.raises(ConfigError, match="needs a time limit"):
        TrainConfig(fill_time_limit=True)


def test_a_long_cpu_schedule_without_a_budget_is_announced_and_warned() -> None:
    mc = ModelConfig(classes=("mito",), depth=2, filters=4)
    long = TrainConfig(epochs=100_000, steps_per_epoch=256, batch_size=2, patch_size=(32, 32), device="cpu")  # > 2 h at 0.3 ms/step
    said: list[str] = []

    class Say(Callback):
        def on_message(self, text: str) -> None:
            said.append(text)

    with pytest.warns(EmsegWarning, match="--time-limit 30"):
        minutes = warn_before_the_wait(mc, long, Say())
    assert minutes > 120 and "expected training time" in said[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmsegWarning)  # with a budget: announced, not warned
        warn_before_the_wait(mc, long.replace(time_limit_minutes=30), Say())


def test_plan_is_saved_in_config_json_reloaded_identically_and_shown_by_info(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from fiji_emseg.api import train
    from fiji_emseg.cli.main import main

    s = discs((8, 96, 96), 8, 3, (50.0, 5.0, 5.0))
    request = TrainRequest(tmp_path / "m", images=[s.image], masks=[[s.masks[0]]], class_names=["mito"],
                           plan="auto", export_onnx=False,
                           model_overrides={"depth": 2, "filters": 4},
                           train_overrides={"patch_size": (64, 64), "batch_size": 2, "steps_per_epoch": 5, "epochs": 2,
                                            "val_steps": 1},
                           train=TrainConfig(time_limit_minutes=1, seed=0, device="cpu", bn_recalibration_batches=1,
                                             val_slices="6-7"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        train(request)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    plan = TrainingPlan.from_dict(saved["plan"])
    assert TrainingPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert saved["config"]["loss"] == plan.train["loss"] == "dice_ce"
    assert saved["config"]["epochs"] == 2 and saved["config"]["patch_size"] == [64, 64]
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "plan:" in capsys.readouterr().out


def test_robust_threshold_rule_moves_only_for_consistent_gains() -> None:
    t = len(THRESHOLD_GRID)
    half = int(np.argmin(np.abs(THRESHOLD_GRID - 0.5)))
    base = 0.9 - 0.001 * np.abs(np.arange(t) - half)
    # every slice gains ~0.03 at 0.3: a real shift -> moves down
    consistent = np.stack([base + 0.03 * np.exp(-((np.arange(t) - half + 4) ** 2) / 4) + 0.001 * k for k in range(6)])
    pooled = consistent.mean(axis=0)
    i = choose_threshold(pooled, consistent, half)
    assert THRESHOLD_GRID[i] < 0.5
    # one slice gains a lot at 0.8, the others lose: noise -> stays at 0.5 (argmax would move)
    noisy = np.stack([base.copy() for _ in range(6)])
    bump = np.exp(-((np.arange(t) - half - 6) ** 2) / 2)
    noisy[0] += 0.2 * bump
    noisy[1:] -= 0.02 * bump
    pooled = noisy.mean(axis=0)
    assert THRESHOLD_GRID[choose_threshold(pooled, noisy, half, "argmax")] > 0.5
    assert choose_threshold(pooled, noisy, half) == half
    # a flat plateau of equal gain from 0.25 to 0.45: its centre, not its edge
    flat = np.stack([base.copy() for _ in range(5)])
    plateau = (THRESHOLD_GRID >= 0.25) & (THRESHOLD_GRID <= 0.45)
    flat[:, plateau] = 0.95 + 0.0005 * np.arange(5)[:, None]
    flat[:, np.flatnonzero(plateau)[0]] += 1e-4  # the arg-max sits at the edge
    chosen = THRESHOLD_GRID[choose_threshold(flat.mean(axis=0), flat, half)]
    assert chosen == pytest.approx(0.35)
    # a single slice gives no measure of noise: stay
    assert choose_threshold(consistent[0], consistent[:1], half) == half
