"""Training a segmentation network on annotated EM volumes.

What this does that DeepSCEM does not (FIELD_NOTES §1):

- *BatchNorm is recalibrated.* After a short training, running statistics lag far behind the
  weights and eval-mode predictions collapse (DeepSCEM: F1 0.0). Before every validation and
  therefore before every saved model, the running statistics are re-estimated with the current
  weights over ``bn_recalibration_batches`` training batches (cumulative average, "precise BN").
- *Keep-best keeps the best.* The weights written to ``weights.safetensors`` are those of the
  best validation epoch, and the result says which epoch that was.
- *Seeds are set* for the model initialisation, the patch sequence and the augmentations; a
  run interrupted and resumed produces the same model as an uninterrupted one.
- *Weights can be averaged* (``ema_decay``): an exponential moving average of the weights is
  what is validated, kept and saved, with BatchNorm recalibrated for it; the live weights go on
  training. A short run on a few slices ends on noisy weights, and the average smooths them.
- *Deep supervision* (``deep_supervision``, nnU-Net's): coarser decoder levels get auxiliary
  heads and losses during training only (:mod:`.deep_supervision`); the saved model is unchanged.
- *Validation never crashes*: with no validation data the monitor falls back to the training loss,
  and validation samples are kept apart from training samples whatever their names.

Interruption: Ctrl-C (SIGINT), SIGTERM or a callback's ``should_stop`` end training after the
current step; the best model, the log and a resumable ``checkpoint.pt`` (written atomically at
every epoch end and every ``checkpoint_minutes``) stay on disk. A second Ctrl-C aborts at once,
leaving the last checkpoint.
"""

from __future__ import annotations

import math
import secrets
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, EmsegWarning, InputDataError, ModelFileError, OutputError
from ..callbacks import Callback, CallbackList, EpochReport, StepReport
from ..data.files import announce_removed, atomic_path, ensure_folder, remove_stale_temporaries
from ..data.normalization import NormalizationConfig
from ..data.sample import Sample, check_finite, check_min_size, parse_slice_ranges, validate_dataset
from ..evaluation.metrics import scores
from ..models.architectures import build_model
from ..models.device import DeviceChoice, choose_device
from ..models.formats import is_bioimageio_path, open_model_source
from ..models.model_config import ModelConfig
from ..models.model_store import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelInfo,
    load_weights,
    read_model_info,
    save_weights,
    write_model_info,
)
from ..models.receptive_field import measure_config_receptive_field
from ..models.unet import set_centre_only
from .deep_supervision import DeepSupervision, training_loss
from .losses import SegmentationLoss
from .sampling import Batch, BatchStream, PatchSampler, TrainingVolume
from .step_probe import record_step_seconds
from .train_config import TrainConfig
from .training_log import LOG_NAME, PLOT_NAME, plot_training_curves, write_log_csv
from .training_sources import file_sha256

__all__ = ["TrainResult", "train_model", "CHECKPOINT_NAME", "recalibrate_batchnorm", "split_validation_slices"]

CHECKPOINT_NAME = "checkpoint.pt"
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class TrainResult:
    """What a training run produced and how it ended."""

    model_dir: Path
    status: str  # "completed", "early-stopped", "time-limit", "interrupted"
    epochs_run: int
    best_epoch: int | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    duration_s: float
    device: str
    seed: int
    files: dict[str, Path] = field(default_factory=dict)
    keep_best: bool = True  # False: the weights hold the last epoch, so the summary calls it "kept", not "best"

    def summary(self) -> str:
        word = "best" if self.keep_best else "kept"
        best = f"{word} epoch {self.best_epoch}" if self.best_epoch else "no validated epoch"
        f1 = self.best_metrics.get("val_f1") or {}
        f1s = ", ".join(f"{k} F1 {v:.3f}" for k, v in f1.items())
        return f"training {self.status} after {self.epochs_run} epochs ({best}{'; ' + f1s if f1s else ''}); model in {self.model_dir}"


# ----------------------------------------------------------------------------- helpers


def recalibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor], choice: DeviceChoice) -> bool:
    """Re-estimate BatchNorm running statistics with the current weights (cumulative average).

    Returns False when the model has no BatchNorm layer.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    if not bns or not batches:
        return False
    was_training = model.training
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
        m.train()
    try:
        with torch.no_grad(), choice.autocast():
            for x in batches:
                model(x)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
    return True


def split_validation_slices(samples: Sequence[Sample], spec: str) -> tuple[list[Sample], list[Sample]]:
    """Hold out whole slices of every sample for validation, without copying images.

    The slices leave the training sample's annotated region and form the validation
    sample's region, so 3D patches keep their true z-neighbourhood as input context.
    """
    train, val = [], []
    for s in samples:
        idx = parse_slice_ranges(spec, s.shape[0])
        if not idx:
            raise InputDataError(f"validation slices {spec!r} select nothing; give e.g. '12-15'")
        held = np.zeros(s.shape, dtype=bool)
        held[idx] = True
        base = s.annotated if s.annotated is not None else np.ones(s.shape, dtype=bool)
        tr_region, va_region = base & ~held, base & held
        if not tr_region.any():
            raise InputDataError(f"{s.name}: validation slices {spec!r} leave no annotated slice for training")
        if not va_region.any():
            raise InputDataError(f"{s.name}: validation slices {spec!r} contain no annotated voxel")
        train.append(Sample(s.name, s.image, s.masks, s.class_names, s.calibration, tr_region))
        val.append(Sample(f"{s.name} (validation slices {spec})", s.image, s.masks, s.class_names, s.calibration, va_region))
    return train, val


class _StopFlag:
    """Ctrl-C/SIGTERM set a flag checked between steps; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.reason = "Ctrl-C" if signum == signal.SIGINT else f"signal {signum}"

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _to_device(batch: Batch, choice: DeviceChoice, dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    dev = choice.device
    nb = dev.type == "cuda"
    x = torch.from_numpy(batch.image)
    if nb:
        x = x.pin_memory()
    x = x.to(dev, non_blocking=nb)
    if choice.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    y = torch.from_numpy(batch.target).to(dev, non_blocking=nb)
    v = None if batch.valid is None else torch.from_numpy(batch.valid).to(dev, non_blocking=nb)
    return x, y, v


def _lr_lambda(config: TrainConfig, elapsed: Any) -> Any:
    """LR factor from training progress: the larger of the step fraction and the time fraction.

    With ``fill_time_limit`` the steps are only an estimate, so progress is the time fraction
    alone: the schedule anneals over the budget however many steps it holds.
    (A plain function, not an object, so the scheduler's state_dict does not try to save it.)
    """
    total = max(1, config.total_steps)
    floor = min(config.min_lr / config.learning_rate, 1.0)
    limit = config.time_limit_minutes * 60 if config.time_limit_minutes else None
    by_time_only = bool(limit and config.fill_time_limit)

    def progress(step: int) -> float:
        if by_time_only:
            return min(1.0, elapsed() / limit)
        p = min(step, total) / total
        return min(1.0, max(p, elapsed() / limit)) if limit else p

    if config.lr_schedule == "cosine":
        return lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress(step)))
    if config.lr_schedule == "poly":
        return lambda step: max(floor, (1 - progress(step)) ** config.poly_power)
    return lambda step: 1.0


def _json_safe(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in row.items()} for row in history]


# ----------------------------------------------------------------------------- the trainer


class _Trainer:
    def __init__(self, train_samples: Sequence[Sample], model_dir: Path, model_config: ModelConfig,
                 config: TrainConfig, normalization: NormalizationConfig, val_samples: Sequence[Sample] | None,
                 module: nn.Module | None, init_from: Path | None, resume: bool, callbacks: Callback,
                 plan: dict[str, Any] | None = None, sources: dict[str, Any] | None = None,
                 recorded_checkpoint_hashes: Sequence[str] | None = None) -> None:
        self.model_dir = model_dir
        self.plan = plan
        self.mc = model_config
        self.cfg = config
        self.norm = normalization
        self.cb = callbacks
        self.resume = resume
        self.dims = model_config.dims
        self.seed = int(config.seed) if config.seed is not None else secrets.randbelow(2**31)
        self.cfg = config.replace(seed=self.seed)
        self._check_patch()

        if self.cfg.val_slices and val_samples:
            raise ConfigError("give either validation samples or validation slices, not both")
        if self.cfg.val_slices:
            held_out, val_samples = split_validation_slices(train_samples, self.cfg.val_slices)
            if not self.cfg.train_on_validation:  # else the whole samples train, the slices only validate too
                train_samples = held_out
        elif self.cfg.train_on_validation and val_samples:
            train_samples = [*train_samples, *val_samples]
        #: The validation data is also trained on (``train_on_validation``): its curve measures fit.
        self.val_seen = bool(self.cfg.train_on_validation and val_samples)
        if self.val_seen and (self.cfg.keep_best or self.cfg.calibrate_thresholds):
            # choosing an epoch or a threshold on data the network has seen would choose for that data
            self.cfg = self.cfg.replace(keep_best=False, calibrate_thresholds=False)
        classes = validate_dataset(train_samples, "training")
        if tuple(classes) != tuple(model_config.classes):
            raise InputDataError(
                f"the training masks are for classes {list(classes)} but the model is for {list(model_config.classes)}; "
                "give masks for the model's classes in the same order")
        if val_samples:
            vclasses = validate_dataset(val_samples, "validation")
            if tuple(vclasses) != tuple(classes):
                raise InputDataError(
                    f"validation classes {list(vclasses)} differ from training classes {list(classes)}; "
                    "give the same classes in the same order")
        for s in [*train_samples, *(val_samples or [])]:
            # a 2.5D patch repeats the end slices of a short stack, so only its in-plane size must fit
            check_min_size(s, (1, *self._patch3[1:]) if model_config.slice_context else self._patch3,
                           model_config.spatial_multiple)
            check_finite(s.image, s.name)
        self.train_samples = list(train_samples)
        self.val_samples = list(val_samples or [])
        self.has_val = bool(self.val_samples) and self.cfg.val_steps > 0
        if not self.has_val:
            why = "validation is off (0 validation steps)" if self.cfg.val_steps == 0 else \
                "no validation data (give validation slices or validation images)"
            warnings.warn(f"{why}; keep-best and early stopping will follow the training loss instead",
                          EmsegWarning, stacklevel=3)
            self.monitor = "loss"
        else:
            self.monitor = self.cfg.monitor

        if config.threads:
            torch.set_num_threads(int(config.threads))
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.choice = choose_device(config.device, config.amp, config.channels_last, self.dims)
        torch.manual_seed(self.seed)
        self.model = module if module is not None else build_model(model_config)
        set_centre_only(self.model, True)  # training patches: a slice and its neighbours in, the slice out
        if init_from is not None:
            self._init_from(init_from)
        self.model.to(self.choice.device)
        if self.choice.channels_last:
            self.model.to(memory_format=torch.channels_last if self.dims == 2 else torch.channels_last_3d)
        self.loss_fn = SegmentationLoss(self.cfg.loss, model_config.output, model_config.n_classes,
                                        self.cfg.class_weights).to(self.choice.device)
        #: Auxiliary heads on coarser decoder levels (``deep_supervision``), trained but never saved.
        self.deep_sup: DeepSupervision | None = None
        if self.cfg.deep_supervision:
            self.deep_sup = DeepSupervision(self.model, self.cfg.deep_supervision, model_config.out_channels)
            self.deep_sup.to(self.choice.device)
        params = [*self.model.parameters(), *(self.deep_sup.parameters() if self.deep_sup is not None else ())]
        if self.cfg.optimizer == "adamw":
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        if self.cfg.lr_schedule == "plateau":
            self.sched: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, mode="min" if self.monitor != "val_f1" else "max", factor=self.cfg.lr_factor,
                patience=self.cfg.lr_patience, min_lr=self.cfg.min_lr)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.cfg, self.elapsed))
        self.scaler = torch.amp.GradScaler("cuda") if self.choice.uses_scaler else None
        #: The moving average of the parameters (``ema_decay``), None when off.
        self.ema: list[torch.Tensor] | None = (
            [p.detach().clone() for p in self.model.parameters()] if self.cfg.ema_decay else None)

        self.train_volumes = [TrainingVolume.prepare(s, normalization, model_config.output) for s in self.train_samples]
        self.sampler = PatchSampler(self.train_volumes, self.cfg.patch_size, self.cfg.label_focus, self.cfg.augment, self.dims,
                                    self.cfg.hard_fraction, slice_context=model_config.slice_context)
        if not self.sampler.labelled_classes:
            raise InputDataError("every class is empty in the training data; there is nothing to learn — check the masks")
        self.val_batches: list[Batch] = []
        if self.has_val:
            vvols = [TrainingVolume.prepare(s, normalization, model_config.output) for s in self.val_samples]
            vs = PatchSampler(vvols, self.cfg.patch_size, self.cfg.label_focus, self.cfg.augment, self.dims,
                              slice_context=model_config.slice_context)
            vrng = np.random.default_rng([self.seed, 1])
            self.val_batches = [vs.batch(self.cfg.batch_size, vrng, augment=False) for _ in range(self.cfg.val_steps)]
        self.has_bn = any(isinstance(m, _BN_TYPES) for m in self.model.modules())
        #: wall-clock seconds of this run's steps (batch wait included), written back to the step-time
        #: cache so the next plan of this network starts from a measured pace; not for a module brought in
        self.step_seconds: list[float] | None = [] if module is None else None

        # state that a checkpoint carries
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.epoch_loss_sum = 0.0
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] = {}
        self.bad_epochs = 0
        self.elapsed_before = 0.0
        #: (training seconds, steps) when this run (or resumption) began: its own pace is measured from there
        self.run_start: tuple[float, int] = (0.0, 0)
        self.rng_state: dict[str, Any] = np.random.default_rng([self.seed, 0]).bit_generator.state
        #: SHA-256 of the current (and the previous) checkpoint.pt, as recorded in config.json.
        self.checkpoint_hashes: list[str] = list(recorded_checkpoint_hashes or [])
        #: The files the data came from, with checksums, so that '--resume' alone can reload them.
        self.sources = sources

    def elapsed(self) -> float:
        """Training seconds so far, across resumptions."""
        t0 = getattr(self, "t0", None)  # the scheduler asks before training starts
        return getattr(self, "elapsed_before", 0.0) + (time.monotonic() - t0 if t0 is not None else 0.0)

    # ------------------------------------------------------------------ setup helpers

    @property
    def _patch3(self) -> tuple[int, int, int]:
        p = self.cfg.patch_size
        return (1, *p) if len(p) == 2 else p  # type: ignore[return-value]

    def _check_patch(self) -> None:
        p = self.cfg.patch_size
        if self.dims == 2 and len(p) != 2:
            if len(p) == 3 and p[0] == 1:
                self.cfg = self.cfg.replace(patch_size=list(p[1:]))
            else:
                raise ConfigError(f"a 2D model needs a (y, x) patch size, got {p}; e.g. 256 256 (--patch-size 256 256)")
        context = self.mc.slice_context
        if context:  # 2.5D: the loss is on each patch's centre slice, its neighbours are its input
            depth = 2 * context + 1
            if len(p) == 2:
                self.cfg = self.cfg.replace(patch_size=[depth, *p])
            elif p[0] != depth:
                raise ConfigError(f"a 2.5D model with {context} neighbouring slice(s) per side trains on patches of "
                                  f"{depth} slices, got {tuple(p)}; give the in-plane size only (--patch-size {p[-2]} {p[-1]})")
            p = self.cfg.patch_size
        if self.dims == 3 and len(p) != 3:
            raise ConfigError(f"a 3D model needs a (z, y, x) patch size, got {p}; e.g. 32 128 128 (--patch-size 32 128 128)")
        mult = self.mc.spatial_multiple if self.dims == 3 else self.mc.spatial_multiple[1:]
        bad = [(s, m) for s, m in zip(self.cfg.patch_size, mult, strict=True) if s % m]
        if bad:
            fix = " ".join(str(max(m, (s // m) * m)) for s, m in zip(self.cfg.patch_size, mult, strict=True))
            raise ConfigError(
                f"patch size {tuple(self.cfg.patch_size)} must be a multiple of {tuple(mult)} for a depth-{self.mc.depth} "
                f"model ({self.mc.poolings} poolings); use e.g. {fix} (--patch-size {fix})")

    def _init_from(self, path: Path) -> None:
        info = read_model_info(path)
        if info.model.architecture != self.mc.architecture or info.model.dims != self.mc.dims:
            raise ModelFileError(f"{path} is a {info.model.name} model and cannot initialise a {self.mc.name} model")
        folder = path if path.is_dir() else path.parent
        mismatched = load_weights(self.model, folder / WEIGHTS_NAME, strict=False)
        if mismatched:
            head = [k for k in mismatched if k.startswith("head")]
            other = [k for k in mismatched if not k.startswith("head")]
            if other:
                raise ModelFileError(
                    f"{path} does not fit this architecture ({len(other)} layers differ, e.g. {other[0]}); "
                    "fine-tune with the same depth, filters and blocks as the base model")
            if head:
                warnings.warn(
                    f"the base model has classes {list(info.model.classes)}; the output layer was re-initialised "
                    f"for {list(self.mc.classes)}", EmsegWarning, stacklevel=3)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_state(self, rng_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": "fiji-emseg-checkpoint",
            "version": 1,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_loss_sum": self.epoch_loss_sum,
            "history": _json_safe(self.history),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "bad_epochs": self.bad_epochs,
            "elapsed": self.elapsed(),
            "sampler_rng": rng_state,
            "ema": self.ema,
            "deep_supervision": None if self.deep_sup is None else self.deep_sup.state_dict(),
            "hard_centres": None if self.sampler.hard_centres is None else torch.from_numpy(self.sampler.hard_centres),
            "hard_weights": None if self.sampler.hard_weights is None else torch.from_numpy(self.sampler.hard_weights),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.choice.device.type == "cuda" else [],
            "seed": self.seed,
        }

    def save_checkpoint(self, rng_state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` and record its SHA-256 in ``config.json``.

        The hash goes into config.json (with the previous one) *before* the new checkpoint is
        moved into place, so whichever of the two a kill leaves on disk is still recognised.
        """
        state = self._checkpoint_state(rng_state)
        with atomic_path(self.model_dir / CHECKPOINT_NAME, overwrite=True) as tmp:
            torch.save(state, tmp)
            digest = file_sha256(tmp)
            self.checkpoint_hashes = [digest, *self.checkpoint_hashes[:1]]
            write_model_info(self.model_dir, self._info("training"))
        self.last_checkpoint = time.monotonic()

    def load_checkpoint(self) -> None:
        """Continue from ``checkpoint.pt``, only if it is the file this folder's training wrote.

        ``torch.load(weights_only=True)`` refuses to run code, but its unpickler is still exposed
        to whatever file it is given; a checkpoint whose hash config.json does not record is
        therefore never opened at all.
        """
        path = self.model_dir / CHECKPOINT_NAME
        if not path.is_file():
            raise ModelFileError(f"cannot resume: {path} does not exist (training had not finished its first checkpoint)")
        recorded = self.checkpoint_hashes
        if not recorded:
            raise ModelFileError(
                f"cannot resume: {CONFIG_NAME} records no checksum for {path.name}, so it cannot be verified as written "
                "by this training (it may come from elsewhere or an older fiji-emseg); start a new training")
        if file_sha256(path) not in recorded:
            raise ModelFileError(
                f"cannot resume: {path} is not the checkpoint this training wrote (its checksum differs from the one "
                f"in {CONFIG_NAME}), so it was not opened; start a new training, or copy the whole model folder again")
        try:
            state = torch.load(path, map_location=self.choice.device, weights_only=True)
        except Exception:  # the library's own text may advise unsafe loading: never relay it
            raise ModelFileError(
                f"cannot resume: {path} cannot be read as a fiji-emseg checkpoint (damaged, or holds more than "
                "tensors and numbers); start a new training") from None
        if not isinstance(state, dict) or state.get("format") != "fiji-emseg-checkpoint":
            raise ModelFileError(f"cannot resume: {path} is not a fiji-emseg checkpoint")
        try:
            self.model.load_state_dict(state["model"])
            if self.deep_sup is not None:
                if state.get("deep_supervision") is None:
                    raise KeyError("no deep-supervision heads")
                self.deep_sup.load_state_dict(state["deep_supervision"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"cannot resume: {path} does not match the model in {CONFIG_NAME} ({exc})") from exc
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            saved = state.get("ema")
            if saved is None or len(saved) != len(self.ema):
                raise ModelFileError(f"cannot resume: {path} holds no weight average for this model; start a new training")
            with torch.no_grad():
                for e, v in zip(self.ema, saved, strict=True):
                    e.copy_(v)
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.epoch_loss_sum = float(state["epoch_loss_sum"])
        self.history = list(state["history"])
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_metrics = dict(state["best_metrics"])
        self.bad_epochs = int(state["bad_epochs"])
        self.elapsed_before = float(state["elapsed"])
        self.rng_state = state["sampler_rng"]
        if state.get("hard_centres") is not None:
            self.sampler.set_hard_examples(state["hard_centres"].numpy(), state["hard_weights"].numpy())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.choice.device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda_rng"]])

    # ------------------------------------------------------------------ model description

    def _info(self, status: str, extra: dict[str, Any] | None = None) -> ModelInfo:
        training = {
            "status": status,
            "config": self.cfg.to_dict(),
            "device": self.choice.describe(),
            "epochs_run": self.epoch,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "monitor": self.monitor,
            "data": {
                "train": [{"name": s.name, "shape": list(s.shape)} for s in self.train_samples],
                "validation": [{"name": s.name, "shape": list(s.shape)} for s in self.val_samples],
                **({"validation_trained_on": True} if self.val_seen else {}),
                "calibration": self.train_samples[0].calibration.to_dict(),
                **({"sources": self.sources} if self.sources else {}),
            },
            "checkpoint_sha256": list(self.checkpoint_hashes),
        }
        if self.plan is not None:
            training["plan"] = self.plan
        training.update(extra or {})
        return ModelInfo(model=self.mc, normalization=self.norm, training=training)

    # ------------------------------------------------------------------ validation

    def _bn_batches(self) -> list[torch.Tensor]:
        if not self.has_bn or self.cfg.bn_recalibration_batches == 0:
            return []
        rng = np.random.default_rng([self.seed, 2, self.epoch])
        out = []
        for _ in range(self.cfg.bn_recalibration_batches):
            b = self.sampler.batch(self.cfg.batch_size, rng)
            out.append(_to_device(b, self.choice, self.dims)[0])
        return out

    def validate(self) -> tuple[float | None, dict[str, float]]:
        recalibrate_batchnorm(self.model, self._bn_batches(), self.choice)
        if not self.has_val:
            return None, {}
        self.model.eval()
        n = self.mc.n_classes
        tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
        losses = []
        with torch.no_grad():
            for b in self.val_batches:
                x, y, v = _to_device(b, self.choice, self.dims)
                with self.choice.autocast():
                    logits = self.model(x)
                losses.append(float(self.loss_fn(logits, y, v)))
                if self.mc.output == "softmax":
                    pred_lab = logits.argmax(1)
                    pred = torch.stack([pred_lab == c + 1 for c in range(n)], 1)
                    ref = torch.stack([y == c + 1 for c in range(n)], 1)
                else:
                    pred = logits > 0
                    ref = y.bool()
                if v is not None:
                    vv = v.unsqueeze(1)
                    pred, ref = pred & vv, ref & vv
                dims = [0, *range(2, pred.ndim)]
                tp += (pred & ref).sum(dims).cpu().numpy()
                fp += (pred & ~ref).sum(dims).cpu().numpy()
                fn += (~pred & ref).sum(dims).cpu().numpy()
        self.model.train()
        f1 = scores(tp, fp, fn, 0)["f1"]  # both empty: perfect agreement (1.0)
        return float(np.mean(losses)), {c: float(f) for c, f in zip(self.mc.classes, f1, strict=True)}

    # ------------------------------------------------------------------ main loop

    def run(self) -> TrainResult:
        self.t0 = time.monotonic()
        self.last_checkpoint = self.t0
        if self.resume:
            self.load_checkpoint()
        ensure_folder(self.model_dir, "model folder")
        write_model_info(self.model_dir, self._info("training"))
        cfg = self.cfg
        steps = cfg.steps_per_epoch
        total = cfg.total_steps
        start_step = self.epoch * steps + self.step_in_epoch
        self.run_start = (self.elapsed_before, start_step)
        self.cb.on_train_begin({
            "total_steps": total, "start_step": start_step, "epochs": cfg.epochs, "steps_per_epoch": steps,
            "device": self.choice.describe(), "model": self.mc.name, "seed": self.seed, "model_dir": str(self.model_dir),
            "train_samples": len(self.train_samples), "val_batches": len(self.val_batches)})
        self.cb.on_message(
            f"training {self.mc.name} ({sum(p.numel() for p in self.model.parameters()):,} parameters) on "
            f"{self.choice.describe()}; seed {self.seed}; model folder {self.model_dir}"
            + (f"; deep supervision of {cfg.deep_supervision} coarser levels" if self.deep_sup is not None else ""))
        if self.val_seen:
            self.cb.on_message("the validation data is also trained on: its loss and F1 below measure fit, not "
                               "generalisation; the last epoch is kept and mask thresholds stay 0.5")
        rng = np.random.default_rng()
        rng.bit_generator.state = self.rng_state
        status = "completed"
        self.model.train()
        stop = _StopFlag()
        stream = BatchStream(self.sampler, cfg.batch_size, rng)
        try:
            with stop:
                limit = cfg.time_limit_minutes * 60 if cfg.time_limit_minutes else None
                while self.epoch < self.cfg.epochs:  # a filled time limit moves the end (_end_epoch)
                    out_of_time = False
                    total = self.cfg.total_steps
                    while self.step_in_epoch < steps:
                        if stop.requested or self.cb.should_stop():
                            raise _Stop(stop.reason or "cancelled")
                        t_step = time.perf_counter()
                        loss = self._train_step(stream.next())  # float(): waits for the device
                        if self.step_seconds is not None:
                            self.step_seconds.append(time.perf_counter() - t_step)
                        self.step_in_epoch += 1
                        self.epoch_loss_sum += loss
                        done = self.epoch * steps + self.step_in_epoch
                        elapsed = self.elapsed()
                        self.cb.on_step(StepReport(self.epoch + 1, self.cfg.epochs, self.step_in_epoch, steps, loss,
                                                   self._lr(), elapsed, self._eta(self._seconds_per_step() * (total - done))))
                        if time.monotonic() - self.last_checkpoint > cfg.checkpoint_minutes * 60:
                            self.save_checkpoint(stream.resume_state)
                        if limit is not None and self.elapsed() >= limit:
                            out_of_time = True
                            break
                    if (cfg.hard_fraction > 0 and not out_of_time and (self.epoch + 1) % cfg.hard_every == 0
                            and self.epoch + 1 < self.cfg.epochs):
                        # re-mine between epochs with the stream stopped, so the switch to the new
                        # centres happens at the same batch in every run (and after a resume)
                        state = stream.resume_state
                        stream.close()
                        self._mine_hard_examples()
                        rng = np.random.default_rng()
                        rng.bit_generator.state = state
                        stream = BatchStream(self.sampler, cfg.batch_size, rng)
                    stop_early = self._end_epoch(stream.resume_state)
                    if out_of_time:
                        status = "time-limit"
                        self.cb.on_message(f"time limit of {cfg.time_limit_minutes:g} minutes reached")
                        break
                    if stop_early:
                        status = "early-stopped"
                        break
        except _Stop as s:
            status = "interrupted"
            self.cb.on_message(f"training stopped ({s}); saving a resumable checkpoint")
            self.save_checkpoint(stream.resume_state)
        finally:
            stream.close()
            if self.deep_sup is not None:
                self.deep_sup.remove()  # the model leaves training as it came: no hooks on its decoders
        return self._finish(status)

    def _seconds_per_step(self) -> float:
        """This run's pace so far (training, validation and mining together); 0 before the first step."""
        elapsed0, step0 = self.run_start
        done = self.epoch * self.cfg.steps_per_epoch + self.step_in_epoch - step0
        return (self.elapsed() - elapsed0) / done if done > 0 else 0.0

    def _fill_time_limit(self) -> None:
        """Set the epochs to what fits the time left at this run's pace (``fill_time_limit``).

        The plan's epochs come from a step time measured in a few probe steps; one slow probe step
        (another program busy, a cold cache) would otherwise end a run early with budget unused,
        one fast one would leave the cosine schedule cut short by the time limit.
        """
        cfg = self.cfg
        if not (cfg.fill_time_limit and cfg.time_limit_minutes):
            return
        left = cfg.time_limit_minutes * 60 - self.elapsed()
        pace = self._seconds_per_step()
        if left <= 0:
            epochs = self.epoch  # the budget is spent: this was the last epoch, as config.json records
        elif pace > 0:
            epochs = self.epoch + max(1, math.ceil(left / pace / cfg.steps_per_epoch))
        else:
            return
        if epochs != cfg.epochs:
            self.cfg = cfg.replace(epochs=epochs)

    def _eta(self, by_steps: float) -> float:
        """Time to the end: the steps left, or the time budget left if that ends first."""
        if self.cfg.time_limit_minutes:
            return max(0.0, min(by_steps, self.cfg.time_limit_minutes * 60 - self.elapsed()))
        return by_steps

    def _lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _train_step(self, batch: Batch) -> float:
        x, y, v = _to_device(batch, self.choice, self.dims)
        loss = training_loss(self.model, x, y, v, self.loss_fn, self.choice.autocast, self.deep_sup)
        if not torch.isfinite(loss):
            raise OutputError(
                f"training diverged (loss is {float(loss.detach())}) at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}; "
                "lower the learning rate (e.g. 1e-4, --lr) or check the images for extreme values")
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        if not isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step()
        if self.ema is not None:
            self._update_ema()
        return float(loss.detach())

    def _update_ema(self) -> None:
        """Move the weight average towards the weights of the step just taken."""
        assert self.ema is not None
        step = self.epoch * self.cfg.steps_per_epoch + self.step_in_epoch + 1  # counts steps across resumptions
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():  # one fused update: a loop of per-tensor lerps cost ~0.06 s a step on 2 busy cores
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    @contextmanager
    def _kept_weights(self) -> Iterator[None]:
        """Within this, the model holds the weights to validate and save: the average when there is one.

        The live weights and BatchNorm statistics come back afterwards, so training goes on from
        where it was; without an average the model is left as it is (recalibrated statistics included).
        """
        if self.ema is None:
            yield
            return
        params = list(self.model.parameters())
        live = [p.detach().clone() for p in params]
        buffers = [b.detach().clone() for b in self.model.buffers()]
        with torch.no_grad():
            for p, e in zip(params, self.ema, strict=True):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(params, live, strict=True):
                    p.copy_(w)
                for b, v in zip(self.model.buffers(), buffers, strict=True):
                    b.copy_(v)

    def _mine_hard_examples(self) -> None:
        from .hard_examples import mine_hard_examples

        found = mine_hard_examples(self.model, self.sampler, self.choice, self.mc.output,
                                   candidates=self.cfg.hard_candidates, keep_fraction=0.25,
                                   batch_size=self.cfg.batch_size, rng=np.random.default_rng([self.seed, 3, self.epoch]))
        self.sampler.set_hard_examples(found.centres, found.weights)
        self.cb.on_message(found.describe())

    def _end_epoch(self, rng_state: dict[str, Any]) -> bool:
        cfg = self.cfg
        lr = self._lr()
        train_loss = self.epoch_loss_sum / max(1, self.step_in_epoch)  # partial when the time ran out
        with self._kept_weights():
            val_loss, val_f1 = self.validate()
            self.epoch += 1
            self.step_in_epoch = 0
            self.epoch_loss_sum = 0.0
            if self.monitor == "val_f1":
                value, better = float(np.mean(list(val_f1.values()))), (lambda a, b: a > b)
            elif self.monitor == "val_loss":
                value, better = float(val_loss), (lambda a, b: a < b)  # type: ignore[arg-type]
            else:
                value, better = train_loss, (lambda a, b: a < b)
            improved = self.best_value is None or better(value, self.best_value)
            if improved:
                self.best_value, self.bad_epochs = value, 0
            else:
                self.bad_epochs += 1
            # the "best" epoch is the one whose weights are saved: without keep-best, every epoch,
            # so the log, `emseg info` and a package's README name the epoch the weights hold
            is_best = improved or not cfg.keep_best
            if is_best:
                self.best_epoch = self.epoch
                self.best_metrics = {"epoch": self.epoch, "loss": train_loss, "val_loss": val_loss, "val_f1": val_f1}
                save_weights(self.model, self.model_dir / WEIGHTS_NAME)
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(value)
        self._fill_time_limit()
        cfg = self.cfg
        elapsed = self.elapsed()
        eta = self._eta(self._seconds_per_step() * (cfg.total_steps - self.epoch * cfg.steps_per_epoch))
        row: dict[str, Any] = {"epoch": self.epoch, "loss": train_loss, "val_loss": val_loss}
        for c, f in val_f1.items():
            row[f"val_f1_{c}"] = f
        if val_f1:
            row["val_f1_mean"] = float(np.mean(list(val_f1.values())))
        row.update({"lr": lr, "elapsed_s": elapsed, "best": int(is_best)})
        self.history.append(row)
        write_log_csv(self.model_dir / LOG_NAME, self.history)
        try:
            plot_training_curves(self.model_dir / PLOT_NAME, self.history, f"{self.mc.name} — {', '.join(self.mc.classes)}")
        except OutputError:
            raise
        except Exception as exc:  # a plotting problem must never lose a training run
            warnings.warn(f"could not draw the training plot ({exc})", EmsegWarning, stacklevel=2)
        self.save_checkpoint(rng_state)
        self.cb.on_epoch_end(EpochReport(self.epoch, cfg.epochs, train_loss, val_loss, val_f1, lr, elapsed, eta,
                                         is_best, self.best_epoch))
        return bool(cfg.early_stopping and self.bad_epochs >= cfg.early_stopping)

    def calibrate_thresholds(self) -> dict[str, Any]:
        """Per-class mask thresholds chosen on the validation volumes with the saved (best) weights."""
        if not (self.has_val and self.cfg.calibrate_thresholds and self.mc.output == "sigmoid"):
            return {}
        from .threshold_calibration import calibrate_thresholds

        device = str(self.choice.device) if self.choice.device.type == "cuda" else "cpu"
        try:
            result = calibrate_thresholds(self.model_dir, self.val_samples, device,
                                          trust_custom_code=self.mc.architecture != "unet", log=self.cb.on_message)
        except Exception as exc:  # an optimisation of the masks: the model is complete without it
            warnings.warn(f"could not choose mask thresholds on the validation data ({exc}); prediction uses 0.5",
                          EmsegWarning, stacklevel=2)
            return {}
        return result.as_info() if result is not None else {}

    def _finish(self, status: str) -> TrainResult:
        weights = self.model_dir / WEIGHTS_NAME
        if not weights.exists():  # stopped before the first epoch ended: keep what there is
            with self._kept_weights():
                recalibrate_batchnorm(self.model, self._bn_batches(), self.choice)
                save_weights(self.model, weights)
        rf = measure_config_receptive_field(self.mc) if self.mc.architecture == "unet" else None
        elapsed = self.elapsed()
        pace = record_step_seconds(self.mc, self.cfg, self.choice, self.step_seconds) if self.step_seconds else None
        info = self._info(status, {"duration_s": round(elapsed, 1),
                                   **({"median_step_s": round(pace, 4)} if pace is not None else {})})
        info.receptive_field = rf
        write_model_info(self.model_dir, info)  # complete and loadable before thresholds are chosen with it
        calibration = self.calibrate_thresholds() if status != "interrupted" else {}
        if calibration:
            info.training.update(calibration)
            write_model_info(self.model_dir, info)
        result = TrainResult(
            model_dir=self.model_dir, status=status, epochs_run=self.epoch, best_epoch=self.best_epoch,
            best_metrics=self.best_metrics, history=self.history, duration_s=elapsed, device=self.choice.describe(),
            seed=self.seed, keep_best=self.cfg.keep_best,
            files={"config": self.model_dir / CONFIG_NAME, "weights": weights, "log": self.model_dir / LOG_NAME,
                   "plot": self.model_dir / PLOT_NAME, "checkpoint": self.model_dir / CHECKPOINT_NAME})
        self.cb.on_train_end(result)
        return result


class _Stop(Exception):
    pass


_OUR_FILES = (CONFIG_NAME, WEIGHTS_NAME, CHECKPOINT_NAME, LOG_NAME, PLOT_NAME, "model.onnx")


def _prepare_model_dir(model_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (model_dir / CONFIG_NAME).is_file():
            raise ModelFileError(f"cannot resume: {model_dir} holds no model (no {CONFIG_NAME}); check the folder")
        announce_removed(remove_stale_temporaries(model_dir), model_dir)  # left by a run killed mid-write
        return
    if model_dir.exists() and not model_dir.is_dir():
        raise OutputError(f"{model_dir} is a file; give a folder name for the model")
    blocker = next((p for p in model_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{blocker} is a file where a folder is needed for {model_dir}; give another model folder")
    if model_dir.is_dir():
        announce_removed(remove_stale_temporaries(model_dir), model_dir)
        existing = [p.name for p in model_dir.iterdir() if p.name in _OUR_FILES]
        if existing and not overwrite:
            raise OutputError(
                f"{model_dir} already holds a model ({', '.join(sorted(existing))}); choose another folder, "
                "resume it (--resume), or replace it (--overwrite)")
        if overwrite:
            for name in existing:
                (model_dir / name).unlink()


def train_model(train_samples: Sequence[Sample], model_dir: str | Path, *,
                model_config: ModelConfig | None = None,
                config: TrainConfig | None = None,
                normalization: NormalizationConfig | None = None,
                val_samples: Sequence[Sample] | None = None,
                module: nn.Module | None = None,
                init_from: str | Path | None = None,
                resume: bool = False,
                overwrite: bool = False,
                epochs: int | None = None,
                callbacks: Sequence[Callback] = (),
                plan: dict[str, Any] | None = None,
                sources: dict[str, Any] | None = None) -> TrainResult:
    """Train a network on *train_samples* and save it in *model_dir*.

    ``model_config`` defaults to DeepSCEM's default U-Net for the samples' classes. ``module``
    lets you train your own network (it must match ``model_config``'s classes and output mode).
    ``init_from`` fine-tunes an existing model (its architecture and normalisation are reused).
    ``resume`` continues an interrupted run in ``model_dir`` from its checkpoint, with the
    settings saved there; ``epochs`` may extend it. ``plan`` (a ``TrainingPlan.to_dict()``) is
    saved in config.json beside the settings it produced. ``sources`` records where the data came
    from (see :mod:`fiji_emseg.engine.training.training_sources`) so that a later resume can find it again.
    """
    model_dir = Path(model_dir)
    init_path = Path(init_from) if init_from is not None else None
    package = None
    if init_path is not None and not resume and is_bioimageio_path(init_path):
        package = open_model_source(init_path)  # unpacked; its state dict becomes a model folder
        if package.root is None or not (package.root / WEIGHTS_NAME).is_file():
            package.close()
            raise ModelFileError(f"{init_path.name} carries no pytorch_state_dict that fiji-emseg's model factory builds; "
                                 "fine-tuning needs one (packages written by 'emseg package' have it)")
        init_path = package.root
    try:
        _prepare_model_dir(model_dir, resume, overwrite)
        if not train_samples:
            raise InputDataError("no training samples given; give at least one image with its masks")
        cfg = config or TrainConfig()
        norm = normalization or NormalizationConfig()
        return _train(train_samples, model_dir, model_config, cfg, norm, normalization, val_samples, module, init_path,
                      resume, epochs, callbacks, plan, sources)
    finally:
        if package is not None:
            package.close()


def _train(train_samples: Sequence[Sample], model_dir: Path, model_config: ModelConfig | None, cfg: TrainConfig,
           norm: NormalizationConfig, normalization: NormalizationConfig | None, val_samples: Sequence[Sample] | None,
           module: nn.Module | None, init_path: Path | None, resume: bool, epochs: int | None,
           callbacks: Sequence[Callback], plan: dict[str, Any] | None,
           sources: dict[str, Any] | None) -> TrainResult:
    classes = train_samples[0].class_names
    hashes: list[str] = []
    if resume:
        info = read_model_info(model_dir)
        hashes = [str(h) for h in (info.training.get("checkpoint_sha256") or [])]
        sources = sources or (info.training.get("data") or {}).get("sources")
        saved = info.training.get("config")
        if not saved:
            raise ModelFileError(f"cannot resume: {model_dir / CONFIG_NAME} records no training settings")
        cfg = TrainConfig.from_dict(saved)
        model_config, norm = info.model, info.normalization
        plan = info.training.get("plan")
    elif init_path is not None:
        base = read_model_info(init_path)
        model_config = model_config or base.model.with_classes(classes)
        norm = normalization or base.normalization
    if epochs is not None:  # a number of epochs given now is kept, not refitted to the time limit
        cfg = cfg.replace(epochs=int(epochs), fill_time_limit=False)
    mc = model_config or ModelConfig(classes=tuple(classes))
    if module is not None and mc.architecture == "unet" and model_config is None:
        raise ConfigError("when you bring your own module, also give the ModelConfig that describes it (classes, dims, output)")
    trainer = _Trainer(train_samples, model_dir, mc, cfg, norm, val_samples, module, init_path, resume,
                       CallbackList(callbacks), plan, sources, hashes)
    return trainer.run()
