"""A training plan chosen from the data's fingerprint, the hardware and the time budget.

nnU-Net's lesson: separate *planning* (decide the configuration from the data and the machine,
save it as JSON) from *training* (follow the plan). Our planner is for EM and for a time budget:
a biologist says "30 minutes" and gets the best schedule that fits, with every decision and its
reason written down, and every explicit option still overriding the plan.

What it decides, and why:

- **2D or 3D**: 3D only where the voxels are known to be near-isotropic (anisotropy <= 2,
  FIB-SEM) *and* enough consecutive slices are annotated to fill a 3D patch; anisotropic
  ssTEM/SBF-SEM sections (5-12x thicker than a pixel), stacks without a voxel size and sparsely
  annotated slices train 2D.
- **2.5D** (``slice_context``, only when given): a 2D U-Net that sees each slice with its
  neighbours, planned with the 2D rules below (patch, depth, batch), its patches holding each
  trained slice's neighbours. Not chosen by the planner: on vnc it lost to 2D (mito F1 0.855 vs
  0.890 in 30 min, membrane 0.868 vs 0.872 in 20).
- **Patch size**: four times the 90th-percentile object diameter (an object plus a ring of
  context on each side), and in 2D at least the network's measured receptive field (189 px at
  depth 5: a smaller patch trains every voxel with zero padding in its view); at least 128 px,
  at most 256 px on a CPU (512 on a GPU), never larger than the annotated region, a multiple of
  the network's spatial multiple.
- **Width and depth**: 16 filters on a CPU (the tuned CPU recipe: ~4x cheaper per step than 32,
  so ~4x more steps fit), 32 on a GPU; depth 5 in 2D (receptive field ~190 px), 4 in 3D. Even
  where AMX makes 32 filters only ~3x dearer, 32 gave no gain (vnc membrane 0.877 vs 0.878 in 20 min).
  With bf16 on AMX, widths off a multiple of 16 are dear: 12 or 24 filters took ~2x the step of 16
  (0.88 and 0.89 s against 0.44 s for batch 14 of 192²), and 8 filters took as long as 16 (0.46 s):
  narrower than 16 buys no steps on such a CPU.
- **Batch**: 8 patches of 256² on a CPU (16 on a GPU), scaled to keep the voxels per step (of the
  patch that will be trained: a given patch size rescales the planned batch).
- **Loss and label focus**: Dice + cross-entropy with half of the patches centred on labelled
  voxels: DeepSCEM's Dice with 80 % focus over-segmented on vnc (the network rarely sees hard
  background); Adam at 2e-3 with cosine annealing over the budget.
- **Error-driven sampling**: when the budget gives at least ``MIN_HARD_EPOCHS`` epochs, a
  quarter of the patches are centred where the current model is most wrong on the training data,
  re-mined every two epochs (:mod:`.hard_examples`): rare hard background (myelin, dark debris,
  membranes that look like organelles) is then seen within the budget. Shorter runs do without:
  the first mining needs a model that has learned the easy cases, so it would come too late to pay.
- **No weight averaging** (``ema_decay`` stays 0 unless given): on vnc it reached the same
  validation plateau sooner but no higher (mito F1 0.896 vs 0.894, membrane 0.878 vs 0.878).
- **No deep supervision** (``deep_supervision`` stays 0 unless given): two auxiliary levels gave
  vnc mito 0.892 vs 0.894, membrane 0.878 vs 0.876 and isbi2012 0.804 / 0.812 vs 0.817 / 0.812
  (seeds 0 / 1; the vnc runs seed 0).
- **No weight decay** (Adam, ``weight_decay`` 0 unless given): vnc mito overfits after half the
  budget (validation loss lowest near epoch 18 of ~30), but AdamW with decay 0.05 moved neither
  that epoch nor the F1 (0.887 vs 0.894, seed 0).
- **Validation data held out** (``train_on_validation`` stays off unless given): training on
  the validation slices too (nnU-Net's fold "all", the last epoch kept, thresholds 0.5) gave vnc
  membrane 0.881 vs 0.876-0.879, vnc mito 0.902 vs 0.894-0.906, isbi2012 0.813 vs 0.817 (seed 0;
  there the held-out slices' calibrated threshold had paid): within a seed's spread, and the
  held-out slices keep an honest curve, best epoch and threshold.
- **Steps**: the measured seconds per step on this machine (:mod:`.step_probe`) into the budget,
  less 10 % for validation and saving. That count is an estimate from a few probe steps (or from
  the median step of the last run of the same network on this machine, which each run writes
  back), so the run fills the budget (``fill_time_limit``): the cosine anneals over the time and the trainer
  adds or drops epochs at the pace it measures itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError
from ..models.device import choose_device
from ..models.model_config import ModelConfig
from ..models.receptive_field import measure_config_receptive_field
from .fingerprint import DataFingerprint
from .step_probe import probe_step_seconds
from .train_config import TrainConfig

__all__ = ["DEFAULT_BUDGET_MINUTES", "TrainingPlan", "estimate_minutes", "plan_training"]

#: Budget when the user gives none (minutes): a coffee break on a CPU, a short wait on a GPU.
DEFAULT_BUDGET_MINUTES = {"cpu": 30.0, "cuda": 15.0, "mps": 30.0}
#: Share of the budget left for validation, BatchNorm recalibration and saving.
OVERHEAD = 0.10
#: Anisotropy (z spacing / xy pixel) up to which 3D networks are planned.
ISOTROPIC = 2.0
#: Consecutive annotated slices a 3D plan needs (its patch depth).
MIN_3D_RUN = 16
#: Share of patches at mined hard examples, and the fewest planned epochs that turn it on.
HARD_FRACTION = 0.25
MIN_HARD_EPOCHS = 6

#: How the headline names where the seconds per step came from.
STEP_SOURCES = {"probe": "measured", "run": "median of an earlier run"}

StepTimer = Callable[[ModelConfig, TrainConfig], float]


@dataclass(frozen=True)
class TrainingPlan:
    """The chosen settings (``model``: ModelConfig fields, ``train``: TrainConfig fields) and why."""

    model: dict[str, Any]
    train: dict[str, Any]
    budget_minutes: float
    seconds_per_step: float
    estimated_minutes: float
    device: str
    reasons: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: Where ``seconds_per_step`` came from: ``"probe"`` (timed now, or a cached probe) or ``"run"``
    #: (the median step an earlier training run of this network recorded on this machine).
    step_source: str = "probe"

    def model_config(self, classes: tuple[str, ...]) -> ModelConfig:
        return ModelConfig(classes=classes, **self.model)

    def train_config(self, base: TrainConfig | None = None) -> TrainConfig:
        return (base or TrainConfig()).replace(**self.train)

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "train": dict(self.train), "budget_minutes": self.budget_minutes,
                "seconds_per_step": self.seconds_per_step, "estimated_minutes": self.estimated_minutes,
                "device": self.device, "reasons": list(self.reasons), "overridden": list(self.overridden),
                "fingerprint": dict(self.fingerprint), "step_source": self.step_source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingPlan:
        return cls(model=dict(d["model"]), train=dict(d["train"]), budget_minutes=float(d["budget_minutes"]),
                   seconds_per_step=float(d["seconds_per_step"]), estimated_minutes=float(d["estimated_minutes"]),
                   device=str(d["device"]), reasons=tuple(d.get("reasons", ())), overridden=tuple(d.get("overridden", ())),
                   fingerprint=dict(d.get("fingerprint", {})), step_source=str(d.get("step_source", "probe")))

    def describe(self) -> str:
        m, t = self.model, self.train
        patch = "x".join(str(p) for p in t["patch_size"])
        optimizer = {"adam": "Adam", "adamw": "AdamW"}.get(str(t.get("optimizer", "adam")), str(t.get("optimizer")))
        decay = float(t.get("weight_decay", 0.0))
        lines = [
            f"plan for {self.budget_minutes:g} min on {self.device}: {'2.5' if m.get('slice_context') else m['dims']}D U-Net, depth {m['depth']}, "
            f"{m['filters']} filters; patch {patch}, batch {t['batch_size']}, {t['loss']} loss, label focus "
            f"{t['label_focus']:g}, hard examples {float(t.get('hard_fraction', 0.0)):g}, {optimizer} lr {t['learning_rate']:g}"
            f"{f', weight decay {decay:g}' if decay else ''} ({t['lr_schedule']}); "
            f"{t['epochs']} x {t['steps_per_epoch']} steps at {self.seconds_per_step:.3g} s/step "
            f"({STEP_SOURCES.get(self.step_source, self.step_source)}) -> about {self.estimated_minutes:.0f} min",
        ]
        lines += [f"  - {r}" for r in self.reasons]
        if self.overridden:
            lines.append("  - your options override the plan for: " + ", ".join(self.overridden))
        return "\n".join(lines)


def _yours(reason: str, given: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A reason line as it reads when the user's options replaced (part of) that decision.

    The plan's own choice and its reason stay in the line, after what was given, so a user who
    overrode it still reads what the planner would have done and why.
    """
    yours = {k: given[k] for k in keys if k in given}
    if not yours:
        return reason
    shown = ", ".join(f"{k} {'x'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in yours.items())
    return f"{shown}: your option{'s' if len(yours) > 1 else ''}; the plan's own choice was {reason}"


def _round_down(v: int, m: int) -> int:
    return max(m, (int(v) // m) * m)


def _round_up(v: int, m: int) -> int:
    return max(m, -(-int(v) // m) * m)


def estimate_minutes(seconds_per_step: float, cfg: TrainConfig) -> float:
    """Expected minutes of *cfg*'s schedule: its steps (or its time limit, if shorter) plus overhead."""
    by_steps = seconds_per_step * cfg.total_steps * (1 + OVERHEAD) / 60.0
    return min(by_steps, cfg.time_limit_minutes) if cfg.time_limit_minutes else by_steps


def plan_training(fp: DataFingerprint, *, classes: tuple[str, ...], time_limit_minutes: float | None = None,
                  device: str = "auto", model_overrides: Mapping[str, Any] | None = None,
                  train_overrides: Mapping[str, Any] | None = None, base: TrainConfig | None = None,
                  step_timer: StepTimer | None = None) -> TrainingPlan:
    """Plan a training run (see the module docstring). Overrides are the options the user gave."""
    model_over = dict(model_overrides or {})
    train_over = dict(train_overrides or {})
    base = base or TrainConfig()
    # "cuda" plans for a GPU even where none is present (a plan to run elsewhere; the probe needs one)
    kind = "cuda" if str(device).startswith("cuda") else choose_device(device, "off", None, 2).device.type
    gpu = kind == "cuda"
    budget = float(time_limit_minutes) if time_limit_minutes else DEFAULT_BUDGET_MINUTES.get(kind, 30.0)
    if budget <= 0:
        raise ConfigError(f"time budget must be positive minutes, got {time_limit_minutes}")
    reasons: list[str] = []
    if not time_limit_minutes:
        reasons.append(f"no time limit given: planned for {budget:g} min on this {kind.upper()} (give --time-limit to change it)")

    # 2D or 3D (a 2.5D network reads stacks, as a 3D one does)
    slices = int(model_over.get("slice_context", 0))
    if slices:
        model_over.setdefault("dims", 3)
        reasons.append(f"2.5D: each slice with {slices} neighbour{'s' if slices > 1 else ''} on each side as input "
                       "channels of a 2D U-Net")
    if "dims" in model_over:
        dims = int(model_over["dims"])
    elif not fp.calibrated:
        dims = 2
        reasons.append("2D: the stack has no voxel size (most EM sections are much thicker than a pixel); set it in "
                       "Fiji (Image > Properties...) and save, to let the planner consider 3D")
    elif fp.anisotropy <= ISOTROPIC and fp.longest_annotated_run >= MIN_3D_RUN:
        dims = 3
        reasons.append(f"3D: near-isotropic voxels (anisotropy {fp.anisotropy:.1f} <= {ISOTROPIC:g}) and "
                       f"{fp.longest_annotated_run} consecutive annotated slices")
    else:
        dims = 2
        why = (f"anisotropic voxels (z spacing {fp.anisotropy:.1f}x the pixel size)" if fp.anisotropy > ISOTROPIC
               else f"only {fp.longest_annotated_run} consecutive annotated slices (3D needs {MIN_3D_RUN})")
        reasons.append(f"2D: {why}")

    filters = 32 if gpu else 16
    flat = dims == 2 or slices > 0  # in-plane rules for patch, depth and batch
    slice_depth = 2 * slices + 1
    depth = 5 if flat else 4
    reasons.append(_yours(f"{filters} filters, depth {depth}: " + (
        "a GPU affords the full width" if gpu else
        "on a CPU a 16-filter net takes ~4x less per step than 32, so ~4x more steps fit the budget"),
        model_over, ("filters", "depth")))
    model = {"dims": dims, "depth": depth, "filters": filters}
    model.update(model_over)
    probe_model = ModelConfig(classes=classes, **model)
    mult = probe_model.spatial_multiple

    # patch size from object sizes, bounded by hardware and the annotated region
    p90 = max((c.diameter_p90_px for c in fp.classes), default=0.0)
    cap = 512 if gpu else 256
    limit_y = min(fp.annotated_yx[0], *(s[1] for s in fp.image_shapes))
    limit_x = min(fp.annotated_yx[1], *(s[2] for s in fp.image_shapes))
    if flat:
        # a patch smaller than the receptive field trains every voxel with zero padding in its view,
        # which the large tiles of prediction never show it (thin membranes would otherwise get 128 px)
        rf = measure_config_receptive_field(probe_model)
        field_px = 2 * max(rf.radius[1:]) + 1
        context = math.ceil(4 * p90)
        want = int(min(cap, max(128, context, _round_up(field_px, mult[1]))))
        py, px = _round_down(min(want, limit_y), mult[1]), _round_down(min(want, limit_x), mult[2])
        patch: tuple[int, ...] = (py, px)
        why = (f"4x the 90th-percentile object diameter ({p90:.0f} px) for context" if context >= field_px else
               f"the network's receptive field ({field_px} px; 4x the 90th-percentile object diameter is "
               f"{context} px)")
        reasons.append(_yours(f"patch {py}x{px}: {why}, within 128-{cap} px and the annotated region "
                              f"({limit_y}x{limit_x})", train_over, ("patch_size",)))
        # the voxels per step of 8 (GPU: 16) patches of 256²; of the patch that will be trained, given or planned
        by, bx = (int(v) for v in train_over.get("patch_size", (py, px))[-2:])
        batch = max(2, min(32, round((16 if gpu else 8) * (256 * 256) / (by * bx))))
        if slices:
            # the loss is on each patch's centre slice: a 2D plan's patches and batch, with neighbours
            patch = (slice_depth, py, px)
            reasons.append(f"2.5D patches: {slice_depth} slices in, the centre slice trained; batch {batch} as in 2D")
    else:
        xy = 128 if gpu else 96
        pz = _round_down(min(32 if gpu else MIN_3D_RUN, fp.longest_annotated_run), mult[0])
        patch = (pz, _round_down(min(xy, limit_y), mult[1]), _round_down(min(xy, limit_x), mult[2]))
        reasons.append(_yours(f"patch {'x'.join(map(str, patch))}: 3D patches of {xy} px in-plane over {pz} slices",
                              train_over, ("patch_size",)))
        batch = 4 if gpu else 2
    rare = min((c.foreground_fraction for c in fp.classes), default=1.0)
    train: dict[str, Any] = {
        "patch_size": patch, "batch_size": batch, "loss": "dice_ce", "label_focus": 0.5, "learning_rate": 2e-3,
        "lr_schedule": "cosine", "time_limit_minutes": budget,
    }
    reasons.append(_yours("Dice + cross-entropy, label focus 0.5: half the patches random, so hard background "
                          f"is seen (rarest class {rare:.1%} of annotated voxels); Adam 2e-3, cosine over the budget",
                          train_over, ("loss", "label_focus", "learning_rate", "lr_schedule")))
    overridden = sorted({*model_over, *train_over})
    train.update(train_over)
    if slices and len(train["patch_size"]) == 2:  # an in-plane patch given for a 2.5D network
        train["patch_size"] = (slice_depth, *train["patch_size"])
    probe_cfg = base.replace(**{k: v for k, v in train.items() if k not in ("epochs", "steps_per_epoch")})
    if step_timer is None:
        probe = probe_step_seconds(probe_model, probe_cfg)
        seconds, source = probe.seconds_per_step, probe.source
    else:
        seconds, source = float(step_timer(probe_model, probe_cfg)), "probe"
    how = ("the median step of an earlier run of this network on this machine" if source == "run"
           else "measured on this machine")
    if "steps_per_epoch" not in train_over or "epochs" not in train_over:
        spe = int(train_over.get("steps_per_epoch", 250 if gpu else 100))
        usable = budget * 60.0 * (1 - OVERHEAD)
        total = max(1, int(usable / max(seconds, 1e-6)))
        spe = max(1, min(spe, total))
        epochs = int(train_over.get("epochs", max(1, math.ceil(total / spe))))
        if not train_over.keys() & {"steps_per_epoch", "epochs"}:
            spe = math.ceil(total / epochs)  # epochs x steps = the steps that fit (227: 3 of 76, not 3 of 100)
        train.setdefault("steps_per_epoch", spe)
        train.setdefault("epochs", epochs)
        reasons.append(f"{total} steps fit in {budget:g} min at {seconds:.3g} s/step ({how}): "
                       f"{epochs} epoch{'s' if epochs != 1 else ''} of {spe} steps")
    if "epochs" not in train_over:
        # a few probe steps can be off (another program busy, a cold cache): the run keeps
        # training to the end of the budget at its own measured pace
        train["fill_time_limit"] = True
        reasons.append(f"training fills the {budget:g} min: the epochs follow the run's own measured pace")
    epochs = int(train["epochs"])  # planned above, or given
    if "hard_fraction" not in train_over:
        if epochs >= MIN_HARD_EPOCHS:
            train["hard_fraction"] = HARD_FRACTION
            reasons.append(f"error-driven sampling: {HARD_FRACTION:.0%} of patches at the model's worst errors on the "
                           f"training data, re-mined every {base.hard_every} epochs, so rare hard background is learned")
        else:
            train["hard_fraction"] = 0.0
            reasons.append(f"no error-driven sampling: {epochs} epoch{'s' if epochs != 1 else ''} planned, "
                           f"mining pays from {MIN_HARD_EPOCHS}")
    cfg = base.replace(**train)
    return TrainingPlan(model=model, train={**train, "patch_size": [int(v) for v in train["patch_size"]]},
                        budget_minutes=budget, seconds_per_step=seconds,
                        estimated_minutes=estimate_minutes(seconds, cfg), device=kind, reasons=tuple(reasons),
                        overridden=tuple(overridden), fingerprint=fp.to_dict(), step_source=source)
