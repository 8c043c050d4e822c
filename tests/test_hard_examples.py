"""Error-driven sampling: hard examples are found where the model errs, used by the sampler, and
training with them stays deterministic across an interruption."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from emseg_testdata import blob_sample
from torch import nn

from fiji_emseg.engine.callbacks import Callback, StepReport
from fiji_emseg.engine.data.normalization import NormalizationConfig
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.models.device import choose_device
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.training.augment import AugmentConfig
from fiji_emseg.engine.training.hard_examples import _errors, mine_hard_examples
from fiji_emseg.engine.training.sampling import PatchSampler, TrainingVolume
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import CHECKPOINT_NAME, train_model
from fiji_emseg.errors import EmsegWarning

TINY = ModelConfig(classes=("bright",), depth=3, filters=8)


def _sampler(sample: Sample, patch: tuple[int, int], hard_fraction: float = 0.0) -> PatchSampler:
    vol = TrainingVolume.prepare(sample, NormalizationConfig(), "sigmoid")
    return PatchSampler([vol], patch, 0.5, AugmentConfig.none(), 2, hard_fraction)


def test_mining_finds_the_region_where_the_model_is_wrong() -> None:
    sample = blob_sample((4, 128, 128), seed=3)
    sampler = _sampler(sample, (32, 32))
    truth = sample.masks[0].astype(bool)

    rng = np.random.default_rng(0)
    # record where each candidate patch lies, so the stand-in network can answer from the truth
    locations: list[tuple[int, tuple[int, int, int]]] = []
    original = sampler.random_location

    def recording(r: np.random.Generator) -> tuple[int, tuple[int, int, int]]:
        loc = original(r)
        locations.append(loc)
        return loc

    sampler.random_location = recording  # type: ignore[method-assign]

    class Answer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = []  # right on x < 64, all foreground (false positives) on x >= 64
            for _ in range(x.shape[0]):
                _, (z, y0, x0) = locations[self.n]
                self.n += 1
                ref = truth[z, y0:y0 + 32, x0:x0 + 32].copy()
                xs = np.arange(x0, x0 + 32)[None, :].repeat(32, 0)
                ref[xs >= 64] = True  # false positives everywhere in x >= 64
                logits.append(torch.from_numpy(np.where(ref, 5.0, -5.0).astype(np.float32))[None])
            return torch.stack(logits)

    found = mine_hard_examples(Answer(), sampler, choose_device("cpu", "off", False, 2), "sigmoid",
                               candidates=40, keep_fraction=0.25, batch_size=8, rng=rng)
    assert 0 < len(found.centres) <= 10 and found.error_fraction > 0
    assert (found.centres[:, 3] >= 64 - 16).all()  # every hard centre lies where the errors are
    assert (np.diff(found.weights) <= 0).all()  # worst first


def _square(mask: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    mask[..., y:y + size, x:x + size] = True
    return mask


def test_edge_disagreements_are_not_errors_but_missed_and_invented_objects_are() -> None:
    truth = _square(np.zeros((1, 1, 64, 64), bool), 10, 10, 12)
    truth = _square(truth, 40, 40, 10)  # an object the "model" misses entirely
    pred = np.zeros_like(truth)
    pred[..., 9:23, 11:23] = True  # the first object two pixels taller, shifted a pixel right
    pred = _square(pred, 44, 10, 6)  # an invented object far from any label
    logits = torch.from_numpy(np.where(pred, 4.0, -4.0).astype(np.float32))
    wrong = _errors(logits, truth, None, "sigmoid")[0]
    assert wrong[40:50, 40:50].all() and wrong[44:50, 10:16].all()  # the miss and the invention
    assert wrong.sum() == 100 + 36  # nothing around the first object, though 48 of its voxels disagree
    assert (pred != truth)[0, 0, :30, :30].sum() == 48

    # the same with a softmax label map (0 background, 1 and 2 classes): class 2 predicted as class 1
    labels = np.zeros((1, 64, 64), np.int64)
    labels[0, 10:22, 10:22] = 1
    labels[0, 40:50, 40:50] = 2
    answer = labels.copy()
    answer[0, 9:23, 9:23] = 1  # a pixel wider: forgiven
    answer[0, 40:50, 40:50] = 1  # the right place, the wrong class: counted
    onehot = torch.from_numpy(np.stack([answer == c for c in range(3)], 1).astype(np.float32)) * 8.0
    wrong = _errors(onehot, labels, None, "softmax")[0]
    assert wrong[40:50, 40:50].all() and wrong.sum() == 100


def test_sampler_centres_that_share_of_patches_on_hard_examples() -> None:
    sample = blob_sample((4, 128, 128), seed=3)
    sampler = _sampler(sample, (32, 32), hard_fraction=0.5)
    rng = np.random.default_rng(1)
    before = [sampler.draw(rng) for _ in range(5)]  # no hard examples yet: ordinary patches
    assert len(before) == 5
    sampler.set_hard_examples(np.array([[0, 2, 100, 100]]), np.array([1.0]))
    starts = []
    original = sampler.extract

    def spy(vi: int, start: Any) -> Any:
        starts.append(tuple(start))
        return original(vi, start)

    sampler.extract = spy  # type: ignore[method-assign]
    for _ in range(400):
        sampler.draw(rng)
    near = [s for s in starts if s[0] == 2 and abs(s[1] + 16 - 100) <= 8 + 1 and abs(s[2] + 16 - 100) <= 8 + 1]
    assert 0.4 < len(near) / len(starts) < 0.65  # ~half, plus the odd random patch that lands there


class _Stop(Callback):
    def __init__(self, after: int) -> None:
        self.after, self.n = after, 0

    def on_step(self, report: StepReport) -> None:
        self.n += 1

    def should_stop(self) -> bool:
        return self.n >= self.after


def test_training_with_hard_examples_is_deterministic_across_a_resume(tmp_path: Path) -> None:
    sample = blob_sample(seed=2)
    cfg = TrainConfig(epochs=3, steps_per_epoch=4, batch_size=2, patch_size=(48, 48), val_steps=0, seed=0,
                      bn_recalibration_batches=0, calibrate_thresholds=False, hard_fraction=0.5, hard_every=1,
                      hard_candidates=8, device="cpu")
    messages: list[str] = []

    class Say(Callback):
        def on_message(self, text: str) -> None:
            messages.append(text)

    with warnings.catch_warnings():  # no validation here: keep-best follows the training loss
        warnings.simplefilter("ignore", EmsegWarning)
        full = train_model([sample], tmp_path / "full", model_config=TINY, config=cfg, callbacks=[Say()])
        part = train_model([sample], tmp_path / "part", model_config=TINY, config=cfg, callbacks=[_Stop(6)])
    assert sum("hard examples" in m for m in messages) == 2  # after epochs 1-2, not after the last
    assert part.status == "interrupted"
    state = torch.load(tmp_path / "part" / CHECKPOINT_NAME, weights_only=True)
    assert state["hard_centres"] is not None and state["hard_centres"].shape[1] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmsegWarning)
        resumed = train_model([sample], tmp_path / "part", resume=True)
    assert [round(h["loss"], 5) for h in resumed.history] == [round(h["loss"], 5) for h in full.history]
