"""Training settings, saved in ``config.json`` with the model so a run can be repeated or resumed.

Defaults follow DeepSCEM's published training (Adam 1e-3, batch 8, 256×256 patches, 64 epochs
of 256 steps, Dice loss, flips and rotations) with its defects fixed: label focus is a real
fraction (default 0.8, as in Meyer et al. 2021), keep-best really keeps the best epoch,
seeds are always set (and recorded when chosen at random), and BatchNorm statistics are
recalibrated before every validation and before the weights are saved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ...errors import ConfigError
from .augment import AugmentConfig
from .losses import LOSSES

__all__ = ["TrainConfig", "SCHEDULES", "MONITORS"]

SCHEDULES = ("constant", "plateau", "cosine", "poly")
MONITORS = ("val_loss", "val_f1")


@dataclass(frozen=True)
class TrainConfig:
    """Every training option; see the field comments and ``emseg train --help``."""

    epochs: int = 64
    steps_per_epoch: int = 256
    batch_size: int = 8
    #: (y, x) for 2D models or (z, y, x) for 3D models.
    patch_size: tuple[int, ...] = (256, 256)
    loss: str = "dice"
    class_weights: tuple[float, ...] | None = None
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    #: reduce-on-plateau: epochs without improvement before the LR is multiplied by ``lr_factor``.
    lr_patience: int = 4
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    poly_power: float = 0.9
    #: Validation batches per epoch (fixed patches, drawn once); 0 disables validation.
    val_steps: int = 8
    #: Slices held out of every training sample for validation, e.g. "12-15" (0-based).
    val_slices: str | None = None
    #: Also train on the validation data (validation slices or images), as nnU-Net's fold "all":
    #: with a few tens of annotated slices, the held-out ones are a quarter of what there is to
    #: learn from. Validation still runs each epoch, but on data the network has seen, so it
    #: measures fit, not generalisation: the last epoch is kept (``keep_best`` off) and mask
    #: thresholds stay 0.5 (``calibrate_thresholds`` off). Without validation data it changes nothing.
    train_on_validation: bool = False
    keep_best: bool = True
    monitor: str = "val_loss"
    #: Stop after this many epochs without improvement of ``monitor``; 0 = never.
    early_stopping: int = 0
    #: Fraction of patches centred on a labelled voxel of a random class.
    label_focus: float = 0.8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Random seed; None draws one, which is then recorded with the model.
    seed: int | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    #: Training batches used to re-estimate BatchNorm statistics before each validation.
    bn_recalibration_batches: int = 16
    #: Choose each class's mask threshold on validation data after training (sigmoid models);
    #: prediction then uses it unless a threshold is given.
    calibrate_thresholds: bool = True
    #: Stop after this many minutes of training (the last, partial epoch is validated and kept);
    #: cosine/poly schedules then anneal over the time budget. None = no limit.
    time_limit_minutes: float | None = None
    #: With a time limit: the epochs are an estimate (the planner's, from a step time measured in a
    #: few probe steps), so train until the limit instead: the schedule anneals over the time
    #: alone and epochs are added or dropped as the measured pace of this run says.
    fill_time_limit: bool = False
    #: Minutes between mid-epoch checkpoints (a kill loses at most this much work).
    checkpoint_minutes: float = 10.0
    #: CPU threads for torch (None: torch's default, all cores).
    threads: int | None = None
    #: Use only deterministic kernels (slower on GPU); CPU results are repeatable either way.
    deterministic: bool = False
    #: Error-driven sampling: share of patches centred where the current model is most wrong on
    #: the training data (0 = off), re-mined every ``hard_every`` epochs from ``hard_candidates``
    #: random patches, of which the worst quarter are kept.
    hard_fraction: float = 0.0
    hard_every: int = 2
    hard_candidates: int = 64
    #: Exponential moving average of the weights (0 = off): validated, kept and saved in place of
    #: the live weights. The decay used at step t is min(ema_decay, (1 + t) / (10 + t)), so the
    #: average spans about the last tenth of the steps so far, up to 1 / (1 - ema_decay) steps.
    ema_decay: float = 0.0
    #: Deep supervision (nnU-Net's): this many decoder levels below full resolution also get a
    #: 1×1 head and a loss against the downsampled target, weighted 1, 1/2, 1/4 … (0 = off).
    #: The heads are dropped after training: the saved model is the plain U-Net.
    deep_supervision: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ConfigError(f"patch size must be (y, x) or (z, y, x) positive integers, got {self.patch_size}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use adam or adamw")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning rate must be positive, got {self.learning_rate}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"unknown LR schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"lr_factor must be between 0 and 1, got {self.lr_factor}")
        if self.val_steps < 0:
            raise ConfigError(f"validation steps must be 0 or more, got {self.val_steps}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be val_loss or val_f1, got {self.monitor!r}")
        if self.early_stopping < 0:
            raise ConfigError(f"early-stopping patience must be 0 (off) or more, got {self.early_stopping}")
        if not 0.0 <= self.label_focus <= 1.0:
            raise ConfigError(f"label focus must be a fraction between 0 and 1 (e.g. 0.8), got {self.label_focus}")
        if self.bn_recalibration_batches < 0:
            raise ConfigError("bn_recalibration_batches must be 0 (off) or more")
        if self.time_limit_minutes is not None and self.time_limit_minutes <= 0:
            raise ConfigError(f"time limit must be positive minutes, got {self.time_limit_minutes}")
        if self.fill_time_limit and self.time_limit_minutes is None:
            raise ConfigError("fill_time_limit needs a time limit (time_limit_minutes, --time-limit)")
        if self.checkpoint_minutes <= 0:
            raise ConfigError("checkpoint_minutes must be positive")
        if not 0.0 <= self.hard_fraction < 1.0:
            raise ConfigError(f"hard-example fraction must be in [0, 1) (e.g. 0.25), got {self.hard_fraction}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"weight-average decay must be in [0, 1) (e.g. 0.999; 0 = off), got {self.ema_decay}")
        if self.deep_supervision < 0:
            raise ConfigError(f"deep supervision must be 0 (off) or a number of decoder levels, got {self.deep_supervision}")
        if self.hard_every < 1 or self.hard_candidates < 1:
            raise ConfigError("hard_every and hard_candidates must be at least 1")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["class_weights"] = None if self.class_weights is None else list(self.class_weights)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        if d.get("class_weights") is not None:
            d["class_weights"] = tuple(d["class_weights"])
        if "augment" in d:
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        d = self.to_dict()
        d.update(changes)
        return TrainConfig.from_dict(d)
