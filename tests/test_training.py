"""Training engine: learning, keep-best, resume, interruption, BatchNorm recalibration, every option."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from emseg_testdata import blob_sample, f1
from safetensors.torch import load_file

import fiji_emseg.engine.training.trainer as trainer_mod
from fiji_emseg.engine.callbacks import Callback, EpochReport, StepReport
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.architectures import build_model
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import load_model
from fiji_emseg.engine.training.augment import AugmentConfig
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import CHECKPOINT_NAME, train_model
from fiji_emseg.errors import ConfigError, EmsegWarning, InputDataError, ModelFileError, OutputError

TINY = ModelConfig(classes=("bright",), depth=3, filters=8)


def tiny_cfg(**kw: Any) -> TrainConfig:
    base = dict(epochs=2, steps_per_epoch=8, batch_size=4, patch_size=(32, 32), val_steps=2, seed=3,
                bn_recalibration_batches=2, val_slices="6-7")
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


class Recorder(Callback):
    def __init__(self, stop_after_steps: int | None = None) -> None:
        self.epochs: list[EpochReport] = []
        self.steps: list[StepReport] = []
        self.begin: dict[str, Any] = {}
        self.stop_after = stop_after_steps
        self.end: Any = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.begin = info

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)

    def on_epoch_end(self, report: EpochReport) -> None:
        self.epochs.append(report)

    def on_train_end(self, result: Any) -> None:
        self.end = result

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "weights.safetensors"))


def test_tiny_model_learns_and_writes_everything(tmp_path: Path) -> None:
    sample = blob_sample((8, 96, 96), seed=0)
    rec = Recorder()
    cfg = tiny_cfg(epochs=5, steps_per_epoch=20, patch_size=(48, 48), val_steps=4, learning_rate=3e-3,
                   bn_recalibration_batches=4)
    result = train_model([sample], tmp_path / "m", model_config=TINY, config=cfg, callbacks=[rec])
    assert result.status == "completed" and result.epochs_run == 5
    best_f1 = result.best_metrics["val_f1"]["bright"]
    assert best_f1 > 0.9, result.history
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "weights.safetensors", "checkpoint.pt", "training_log.csv", "training_curves.png"} <= files
    rows = list(csv.DictReader(open(tmp_path / "m" / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {"loss", "val_loss", "val_f1_bright", "lr", "elapsed_s", "best"} <= set(rows[0])
    assert (tmp_path / "m" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["training"]["status"] == "completed" and info["training"]["config"]["seed"] == 3
    assert info["receptive_field"]["radius"] == [0, 22, 22]
    # callbacks saw every step and epoch with loss, validation F1, lr, elapsed time and ETA
    assert len(rec.steps) == 100 and len(rec.epochs) == 5
    last = rec.epochs[-1]
    assert last.val_loss is not None and "bright" in last.val_f1 and last.lr > 0 and last.eta_s == pytest.approx(0, abs=1e-6)
    assert rec.epochs[0].eta_s > 0 and rec.epochs[0].elapsed_s > 0
    # the saved model predicts the held-out slices well through the real predictor
    with Predictor(tmp_path / "m", PredictConfig(device="cpu")) as p:
        pred = p.predict(sample.image[6:8])
    assert f1(pred.masks.values[..., 0], sample.masks[0, 6:8]) > 0.85


def test_keep_best_saves_the_best_epoch_not_the_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[dict[str, torch.Tensor]] = []
    real_save = trainer_mod.save_weights

    def spy(module: torch.nn.Module, path: Path, overwrite: bool = True) -> Path:
        saved.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return real_save(module, path, overwrite)

    monkeypatch.setattr(trainer_mod, "save_weights", spy)
    # a constant, far too large learning rate makes validation loss jump around between epochs
    cfg = tiny_cfg(epochs=6, steps_per_epoch=6, learning_rate=0.3, lr_schedule="constant")
    rec = Recorder()
    result = train_model([blob_sample(seed=1)], tmp_path / "m", model_config=TINY, config=cfg, callbacks=[rec])
    losses = [e.val_loss for e in rec.epochs]
    best = int(np.argmin(losses)) + 1
    assert result.best_epoch == best and rec.epochs[best - 1].is_best
    assert [e.is_best for e in rec.epochs].count(True) == len(saved)  # saved exactly when improving
    final = _state(tmp_path / "m")
    for k in final:
        assert torch.equal(final[k], saved[-1][k]), k
    if best != len(losses):  # the interesting case: the last epoch was worse, and was NOT saved
        cp = torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)["model"]
        assert any(not torch.equal(cp[k], final[k]) for k in final)


def test_threshold_calibration_can_be_turned_off(tmp_path: Path) -> None:
    """(The calibration itself: tests/test_threshold_calibration.py.)"""
    off = train_model([blob_sample()], tmp_path / "n", model_config=TINY, config=tiny_cfg(epochs=1, calibrate_thresholds=False))
    assert "thresholds" not in json.loads((off.model_dir / "config.json").read_text())["training"]
    with Predictor(off.model_dir, PredictConfig(device="cpu")) as p:
        assert p.thresholds() == (0.5,)


def test_keep_best_off_saves_the_last_epoch(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from fiji_emseg.cli.main import main
    from fiji_emseg.engine.models.model_store import read_model_info
    from fiji_emseg.export.bioimageio_package import _readme

    cfg = tiny_cfg(epochs=3, keep_best=False)
    r = train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=cfg)
    assert r.best_epoch == 3 == r.best_metrics["epoch"]  # the epoch the saved weights hold
    assert "(kept epoch 3;" in r.summary()  # not called "best": it is the last
    assert "kept (the last; keep-best off) epoch 3" in _readme(read_model_info(tmp_path / "m"), (0.5,), (1, 64, 64), [])
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "kept epoch:     3 (bright F1" in out and "fit, not generalisation" not in out  # held out: no fit note
    final = _state(tmp_path / "m")
    last = torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)["model"]
    assert all(torch.equal(final[k], last[k]) for k in final)
    # the same folder as a killed run leaves it (config still says "training"): what info reads from disk
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["training"]["status"] = "training"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "3 of 3 epochs done, kept (the last) saved epoch 3" in capsys.readouterr().out


@pytest.mark.parametrize(("ema_decay", "deep_supervision"), [(0.0, 0), (0.9, 0), (0.0, 1)])
def test_resume_after_interruption_continues_to_the_same_model(tmp_path: Path, ema_decay: float,
                                                               deep_supervision: int) -> None:
    sample = blob_sample(seed=2)
    cfg = tiny_cfg(epochs=3, steps_per_epoch=6, ema_decay=ema_decay, deep_supervision=deep_supervision)
    full = train_model([sample], tmp_path / "full", model_config=TINY, config=cfg)
    stopper = Recorder(stop_after_steps=9)  # mid-way through epoch 2
    part = train_model([sample], tmp_path / "part", model_config=TINY, config=cfg, callbacks=[stopper])
    assert part.status == "interrupted" and part.epochs_run == 1
    assert (tmp_path / "part" / "weights.safetensors").exists()
    state = torch.load(tmp_path / "part" / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1 and state["step_in_epoch"] == 3
    assert (state["ema"] is not None) == bool(ema_decay)  # a weight average goes on where it was
    assert (state["deep_supervision"] is not None) == bool(deep_supervision)  # so do the auxiliary heads
    rec = Recorder()
    resumed = train_model([sample], tmp_path / "part", resume=True, callbacks=[rec])
    assert resumed.status == "completed" and resumed.epochs_run == 3
    assert rec.begin["start_step"] == 9 and len(rec.steps) == 18 - 9
    assert [round(h["loss"], 5) for h in resumed.history] == [round(h["loss"], 5) for h in full.history]
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_resume_can_extend_training_and_needs_a_checkpoint(tmp_path: Path) -> None:
    sample = blob_sample()
    train_model([sample], tmp_path / "m", model_config=TINY, config=tiny_cfg(epochs=1))
    more = train_model([sample], tmp_path / "m", resume=True, epochs=2)
    assert more.epochs_run == 2 and len(more.history) == 2
    (tmp_path / "m" / CHECKPOINT_NAME).unlink()
    with pytest.raises(ModelFileError, match="cannot resume"):
        train_model([sample], tmp_path / "m", resume=True, epochs=3)
    with pytest.raises(ModelFileError, match="holds no model"):
        train_model([sample], tmp_path / "nothing", resume=True)


def test_the_weight_average_is_what_is_validated_and_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ema_decay: the saved weights are the moving average of every step's weights, not the live ones."""
    live: list[list[torch.Tensor]] = []
    real_step = trainer_mod._Trainer._train_step

    def recording_step(self: Any, batch: Any) -> float:
        if not live:
            live.append([p.detach().clone() for p in self.model.parameters()])  # the initial weights
        loss = real_step(self, batch)
        live.append([p.detach().clone() for p in self.model.parameters()])
        return loss

    monkeypatch.setattr(trainer_mod._Trainer, "_train_step", recording_step)
    decay = 0.9
    cfg = tiny_cfg(epochs=2, steps_per_epoch=6, learning_rate=0.05, lr_schedule="constant", keep_best=False, ema_decay=decay)
    train_model([blob_sample(seed=1)], tmp_path / "m", model_config=TINY, config=cfg)
    expected = live[0]
    for t, weights in enumerate(live[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights, strict=True)]
    names = [n for n, _ in build_model(TINY).named_parameters()]
    saved = _state(tmp_path / "m")
    checkpoint = torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)
    for name, e, w in zip(names, expected, live[-1], strict=True):
        assert torch.allclose(saved[name].float(), e, atol=1e-5), name
        assert torch.equal(checkpoint["model"][name], w), name  # training went on from the live weights
    assert any(not torch.allclose(e, w, atol=1e-3) for e, w in zip(expected, live[-1], strict=True))
    # BatchNorm statistics were recalibrated for the average, the live ones kept for training
    stats = [k for k in saved if k.endswith("running_mean")]
    assert stats and any(not torch.allclose(saved[k], checkpoint["model"][k]) for k in stats)
    with pytest.raises(ConfigError, match="weight-average decay"):
        tiny_cfg(ema_decay=1.0)


def test_sigint_stops_cleanly_with_a_resumable_checkpoint(tmp_path: Path) -> None:
    class Interrupt(Callback):
        def __init__(self) -> None:
            self.n = 0

        def on_step(self, report: StepReport) -> None:
            self.n += 1
            if self.n == 4:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background (`cmd &`)
    result = train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=tiny_cfg(epochs=3),
                         callbacks=[Interrupt()])
    assert result.status == "interrupted"
    assert torch.load(tmp_path / "m" / CHECKPOINT_NAME, weights_only=True)["step_in_epoch"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored


@pytest.mark.slow
def test_kill_leaves_loadable_files_and_resumes(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from emseg_testdata import blob_sample
        from fiji_emseg.engine.models.model_config import ModelConfig
        from fiji_emseg.engine.training.train_config import TrainConfig
        from fiji_emseg.engine.training.trainer import train_model
        cfg = TrainConfig(epochs=200, steps_per_epoch=5, batch_size=4, patch_size=(32, 32), val_steps=1, seed=0,
                          bn_recalibration_batches=1, val_slices="6-7", checkpoint_minutes=0.0005)
        train_model([blob_sample()], {str(tmp_path / 'm')!r}, model_config=ModelConfig(classes=("bright",), depth=2, filters=4), config=cfg)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "m" / "training_log.csv").exists():
        time.sleep(0.2)
    time.sleep(1.5)  # let it write a few more checkpoints
    proc.kill()
    proc.wait()
    m = tmp_path / "m"
    assert (m / "training_log.csv").exists(), proc.stderr.read() if proc.stderr else ""
    json.loads((m / "config.json").read_text())  # complete JSON
    load_model(m)  # complete weights
    torch.load(m / CHECKPOINT_NAME, weights_only=True)  # complete checkpoint
    resumed = train_model([blob_sample()], m, resume=True, epochs=4)
    assert resumed.status == "completed"
    assert not [p for p in m.iterdir() if ".part" in p.name]  # stale temporary files were cleared


def test_short_training_does_not_collapse_batchnorm(tmp_path: Path) -> None:
    """DeepSCEM's defect: after a short training, BatchNorm running statistics lag behind the
    weights and every eval-mode prediction is empty (F1 0). Here the statistics are re-estimated
    with the final weights before saving, so a short training predicts well; the control shows
    that stale statistics (as left by short training) really do destroy the prediction."""
    sample = blob_sample((8, 96, 96), seed=4)
    cfg = tiny_cfg(epochs=1, steps_per_epoch=25, learning_rate=1e-2, lr_schedule="constant", val_slices=None,
                   val_steps=0, patch_size=(48, 48), bn_recalibration_batches=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        train_model([sample], tmp_path / "m", model_config=TINY, config=cfg)
    loaded = load_model(tmp_path / "m")
    with Predictor(tmp_path / "m", PredictConfig(device="cpu", backend="torch")) as p:
        ok = p.predict(sample.image).masks.values[..., 0]
    assert ok.any(), "prediction collapsed to empty"
    assert f1(ok, sample.masks[0]) > 0.7
    # control: the same weights with statistics as they stand early in training (initial values)
    stale = loaded.module
    for m in stale.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    x = torch.from_numpy(((sample.image.astype(np.float32) - 110) / 100)[:, None])
    with torch.no_grad():
        bad = (torch.sigmoid(stale.eval()(x)) > 0.5).numpy()[:, 0]
    assert f1(bad, sample.masks[0]) < f1(ok, sample.masks[0]) - 0.3


@pytest.mark.parametrize("loss", ["dice", "weighted_dice", "ce", "dice_ce", "focal", "mse"])
@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_every_loss_and_output_mode_trains(tmp_path: Path, loss: str, output: str) -> None:
    sample = blob_sample((8, 64, 64), classes=2)
    mc = ModelConfig(classes=sample.class_names, depth=2, filters=4, output=output)  # type: ignore[arg-type]
    weights = (1.0, 2.0) if loss in ("weighted_dice", "ce", "focal") else None
    r = train_model([sample], tmp_path / "m", model_config=mc,
                    config=tiny_cfg(epochs=1, steps_per_epoch=3, loss=loss, class_weights=weights))
    assert np.isfinite(r.history[0]["loss"]) and set(r.best_metrics["val_f1"]) == {"bright", "dark"}


@pytest.mark.parametrize("changes", [
    {"optimizer": "adamw", "weight_decay": 1e-2},
    {"lr_schedule": "plateau", "lr_patience": 0, "lr_factor": 0.5},
    {"lr_schedule": "poly"},
    {"lr_schedule": "constant", "monitor": "val_f1"},
    {"augment": AugmentConfig.none()},
    {"label_focus": 0.0},
    {"threads": 1, "deterministic": True},
    {"amp": "bf16"},
])
def test_training_options(tmp_path: Path, changes: dict[str, Any]) -> None:
    rec = Recorder()
    r = train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=tiny_cfg(epochs=2, **changes),
                    callbacks=[rec])
    assert r.status == "completed" and len(r.history) == 2
    lrs = [e.lr for e in rec.epochs]
    if changes.get("lr_schedule") == "poly":
        assert lrs[1] < lrs[0]
    if changes.get("lr_schedule") == "constant":
        assert lrs[0] == lrs[1] == 1e-3
    assert r.files["weights"].exists()


def test_norm_layers_and_3d_models_train(tmp_path: Path) -> None:
    for norm in ("group", "instance", "none"):
        mc = ModelConfig(classes=("bright",), depth=2, filters=8, norm=norm)  # type: ignore[arg-type]
        r = train_model([blob_sample()], tmp_path / norm, model_config=mc, config=tiny_cfg(epochs=1, steps_per_epoch=3))
        assert r.status == "completed"
    mc3 = ModelConfig(classes=("bright",), dims=3, depth=2, filters=4, z_poolings=1)
    r3 = train_model([blob_sample((8, 48, 48))], tmp_path / "3d", model_config=mc3,
                     config=tiny_cfg(epochs=1, steps_per_epoch=3, patch_size=(4, 32, 32), val_slices=None,
                                     val_steps=0, bn_recalibration_batches=1))
    assert r3.status == "completed"


def test_time_limit_stops_and_anneals_the_learning_rate(tmp_path: Path) -> None:
    rec = Recorder()
    cfg = tiny_cfg(epochs=1000, steps_per_epoch=5, time_limit_minutes=0.05, lr_schedule="cosine")
    t0 = time.monotonic()
    r = train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=cfg, callbacks=[rec])
    assert r.status == "time-limit" and time.monotonic() - t0 < 60
    assert 1 <= r.epochs_run < 1000 and r.files["weights"].exists()
    assert rec.steps[-1].lr < 0.2 * rec.steps[0].lr  # cosine over the 3-second budget, not over 5000 steps
    assert all(r.eta_s <= 3.0 for r in [*rec.steps, *rec.epochs])  # ETA bounded by the budget, not 1000 epochs


def test_early_stopping_stops(tmp_path: Path) -> None:
    # with a zero-ish learning rate nothing improves after the first epoch
    r = train_model([blob_sample()], tmp_path / "m", model_config=TINY,
                    config=tiny_cfg(epochs=10, learning_rate=1e-12, lr_schedule="constant", early_stopping=2))
    assert r.status == "early-stopped" and r.epochs_run < 10


def test_seeds_make_runs_reproducible(tmp_path: Path) -> None:
    cfg = tiny_cfg(epochs=1, steps_per_epoch=4)
    for name in ("a", "b"):
        train_model([blob_sample()], tmp_path / name, model_config=TINY, config=cfg)
    train_model([blob_sample()], tmp_path / "c", model_config=TINY, config=cfg.replace(seed=99))
    a, b, c = (_state(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    drawn = train_model([blob_sample()], tmp_path / "d", model_config=TINY, config=cfg.replace(seed=None))
    assert json.loads((tmp_path / "d" / "config.json").read_text())["training"]["config"]["seed"] == drawn.seed


def test_validation_samples_are_used_even_with_the_training_name(tmp_path: Path) -> None:
    """DeepSCEM silently replaced a validation file with the same internal name by the training set."""
    train = blob_sample(seed=0, name="same")
    image, masks = train.image.copy(), np.zeros_like(train.masks)  # validation: no foreground at all
    val = Sample("same", image, masks, train.class_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        r = train_model([train], tmp_path / "m", model_config=TINY, val_samples=[val],
                        config=tiny_cfg(epochs=1, val_slices=None))
    data = json.loads((tmp_path / "m" / "config.json").read_text())["training"]["data"]
    assert data["validation"][0]["shape"] == [8, 96, 96]
    # on an all-background validation set F1 is 1 only if nothing is predicted; on training data it is not
    assert r.best_metrics["val_f1"]["bright"] != pytest.approx(train_model(
        [train], tmp_path / "n", model_config=TINY, config=tiny_cfg(epochs=1)).best_metrics["val_f1"]["bright"])


class Messages(Callback):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_message(self, text: str) -> None:
        self.lines.append(text)


def _labelled_only_in(sample: Sample, z: slice) -> Sample:
    masks = np.zeros_like(sample.masks)
    masks[:, z] = sample.masks[:, z]
    return Sample(sample.name, sample.image, masks, sample.class_names)


def test_training_on_validation_slices_learns_from_them_and_keeps_the_last_epoch(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """nnU-Net's fold "all": the held-out slices are trained on; nothing is chosen on data seen."""
    from fiji_emseg.cli.main import main

    only_val = _labelled_only_in(blob_sample(), slice(6, 8))  # every labelled voxel in validation slices 6-7
    with pytest.raises(InputDataError, match="every class is empty in the training data"):
        train_model([only_val], tmp_path / "held", model_config=TINY, config=tiny_cfg(epochs=1))
    said = Messages()
    r = train_model([only_val], tmp_path / "seen", model_config=TINY, callbacks=[said],
                    config=tiny_cfg(epochs=3, train_on_validation=True))
    training = json.loads((tmp_path / "seen" / "config.json").read_text())["training"]
    assert r.status == "completed" and training["data"]["validation_trained_on"] is True
    assert training["config"]["keep_best"] is False and training["config"]["calibrate_thresholds"] is False
    assert "thresholds" not in training
    assert any("also trained on" in line and "last epoch is kept" in line for line in said.lines)
    assert all(row["val_loss"] is not None for row in r.history)  # the curve is still drawn
    assert r.best_epoch == 3 and [row["best"] for row in r.history] == [1, 1, 1]  # each epoch saved: the last kept
    final, last = _state(tmp_path / "seen"), torch.load(tmp_path / "seen" / CHECKPOINT_NAME, weights_only=True)["model"]
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert main(["info", str(tmp_path / "seen")]) == 0
    assert "kept epoch:     3 (bright F1" in capsys.readouterr().out
    # held out (the default), the same run keeps its best epoch and calibrates on the unseen slices
    plain = json.loads((train_model([blob_sample()], tmp_path / "plain", model_config=TINY,
                                    config=tiny_cfg(epochs=1)).files["config"]).read_text())["training"]
    assert "thresholds" in plain and "validation_trained_on" not in plain["data"]


def test_validation_images_join_the_training_images_when_trained_on(tmp_path: Path) -> None:
    train = _labelled_only_in(blob_sample(), slice(0, 0))  # no labelled voxel in the training image
    val = blob_sample(seed=4, name="val")
    with pytest.raises(InputDataError, match="every class is empty in the training data"):
        train_model([train], tmp_path / "held", model_config=TINY, val_samples=[val], config=tiny_cfg(val_slices=None))
    r = train_model([train], tmp_path / "seen", model_config=TINY, val_samples=[val],
                    config=tiny_cfg(epochs=1, val_slices=None, train_on_validation=True))
    data = json.loads(r.files["config"].read_text())["training"]["data"]
    assert [d["name"] for d in data["train"]] == ["blobs", "val"] and data["validation_trained_on"] is True
    # without validation data the option changes nothing
    with pytest.warns(EmsegWarning, match="validation is off"):
        alone = train_model([blob_sample()], tmp_path / "alone", model_config=TINY,
                            config=tiny_cfg(epochs=1, val_slices=None, val_steps=0, train_on_validation=True))
    assert json.loads(alone.files["config"].read_text())["training"]["config"]["keep_best"] is True


def test_zero_validation_steps_does_not_crash(tmp_path: Path) -> None:
    with pytest.warns(EmsegWarning, match="validation is off"):
        r = train_model([blob_sample()], tmp_path / "m", model_config=TINY,
                        config=tiny_cfg(epochs=2, val_slices=None, val_steps=0))
    assert r.status == "completed" and r.best_epoch is not None and r.history[0]["val_loss"] is None


def test_fine_tuning_reuses_weights_and_replaces_the_head(tmp_path: Path) -> None:
    base = train_model([blob_sample()], tmp_path / "base", model_config=TINY, config=tiny_cfg(epochs=2))
    rec_ft, rec_scratch = Recorder(), Recorder()
    cfg = tiny_cfg(epochs=1, steps_per_epoch=2, learning_rate=1e-6, lr_schedule="constant")
    train_model([blob_sample(seed=5)], tmp_path / "ft", init_from=base.model_dir, config=cfg, callbacks=[rec_ft])
    train_model([blob_sample(seed=5)], tmp_path / "scratch", model_config=TINY, config=cfg, callbacks=[rec_scratch])
    assert rec_ft.steps[0].loss < rec_scratch.steps[0].loss - 0.1  # starts from the trained weights
    two = blob_sample(seed=5, classes=2)
    with pytest.warns(EmsegWarning, match="output layer was re-initialised"):
        r = train_model([two], tmp_path / "ft2", init_from=base.model_dir, config=cfg)
    assert load_model(r.model_dir).config.classes == ("bright", "dark")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"config": tiny_cfg(patch_size=(30, 30))}, ConfigError, r"multiple of \(4, 4\).*--patch-size 28 28"),
    ({"config": tiny_cfg(patch_size=(128, 128))}, InputDataError, "smaller than the training patch.*largest patch that fits: 96"),
    ({"config": tiny_cfg(patch_size=(4, 32, 32))}, ConfigError, "2D model needs a \\(y, x\\) patch"),
    ({"model_config": ModelConfig(classes=("other",), depth=3, filters=8)}, InputDataError, "model is for"),
    ({"config": tiny_cfg(val_slices="40-50")}, InputDataError, "outside the stack"),
])
def test_bad_training_inputs(tmp_path: Path, kwargs: dict[str, Any], error: type, message: str) -> None:
    kwargs.setdefault("model_config", TINY)
    kwargs.setdefault("config", tiny_cfg())
    with pytest.raises(error, match=message):
        train_model([blob_sample()], tmp_path / "m", **kwargs)


def test_sample_level_errors(tmp_path: Path) -> None:
    a, b = blob_sample(), blob_sample(classes=2)
    with pytest.raises(InputDataError, match="different class counts"):
        train_model([a, b], tmp_path / "m", model_config=TINY, config=tiny_cfg())
    empty = Sample("empty", a.image, np.zeros_like(a.masks), a.class_names)
    with pytest.warns(EmsegWarning, match="empty in every training sample"), \
            pytest.raises(InputDataError, match="every class is empty"):
        train_model([empty], tmp_path / "m2", model_config=TINY, config=tiny_cfg())


def test_existing_model_is_not_overwritten_without_asking(tmp_path: Path) -> None:
    train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=tiny_cfg(epochs=1))
    before = (tmp_path / "m" / "weights.safetensors").read_bytes()
    with pytest.raises(OutputError, match="already holds a model.*--overwrite"):
        train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=tiny_cfg(epochs=1))
    assert (tmp_path / "m" / "weights.safetensors").read_bytes() == before
    (tmp_path / "m" / "notes.txt").write_text("mine")
    train_model([blob_sample()], tmp_path / "m", model_config=TINY, config=tiny_cfg(epochs=1, seed=8), overwrite=True)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"  # only our own files are replaced
    assert (tmp_path / "m" / "weights.safetensors").read_bytes() != before


def test_non_finite_images_are_refused(tmp_path: Path) -> None:
    s = blob_sample()
    image = s.image.astype(np.float32)
    image[3, 10, 10] = np.inf
    with pytest.raises(InputDataError, match="NaN or infinite.*slice 3"):
        train_model([Sample("bad", image, s.masks, s.class_names)], tmp_path / "m", model_config=TINY, config=tiny_cfg())
