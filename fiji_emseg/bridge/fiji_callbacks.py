"""Engine callbacks that report training and prediction in ImageJ's status bar, progress bar and Log.

The engine talks to a :class:`~fiji_emseg.engine.callbacks.Callback`; these adapters translate
its reports into what a Fiji user watches (the status line and progress bar at the bottom of the
ImageJ window, one Log line per epoch) and turn ImageJ's cancel gestures (Esc, the Stop window of
:class:`~fiji_emseg.bridge.progress.FijiProgress`) into the engine's ``should_stop``.
"""

from __future__ import annotations

from typing import Any

from ..engine.callbacks import Callback, EpochReport, StepReport
from .progress import FijiProgress, format_duration
from .training_plot import TrainingPlot

__all__ = ["PredictionProgress", "TrainingProgress", "training_status"]


def training_status(title: str, report: StepReport, val_f1: dict[str, float] | None = None) -> str:
    """'Train EM Model: epoch 3/64 step 120/256 loss 0.21 — val F1 mito 0.88 — ETA 12 min 3 s'."""
    text = (f"{title}: epoch {report.epoch}/{report.epochs} step {report.step}/{report.steps} "
            f"loss {report.loss:.2f}")
    if val_f1:
        text += " — val F1 " + " ".join(f"{name} {f1:.2f}" for name, f1 in val_f1.items())
    if report.eta_s > 0:
        text += f" — ETA {format_duration(report.eta_s)}"
    return text


class TrainingProgress(Callback):
    """Status bar per step, progress bar over all steps, one Log line per epoch, the live ``plot``
    (loss and validation F1 per epoch) when given; cancel = stop.

    The ETA is the trainer's own (it knows the steps already done when a run resumes), so the
    wrapped :class:`FijiProgress` should be created with ``show_eta=False``.
    """

    def __init__(self, progress: FijiProgress, title: str = "Train EM Model", plot: TrainingPlot | None = None) -> None:
        self.progress = progress
        self.plot = plot
        self.title = title
        self.last_val_f1: dict[str, float] = {}
        self.epochs_logged = 0

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.progress.on_progress(int(info.get("start_step", 0)), int(info["total_steps"]), f"{self.title}: starting")

    def on_step(self, report: StepReport) -> None:
        done = (report.epoch - 1) * report.steps + report.step
        total = report.epochs * report.steps  # the trainer's current count (it moves when a run fills its time limit)
        self.progress.on_progress(done, total, training_status(self.title, report, self.last_val_f1))

    def on_epoch_end(self, report: EpochReport) -> None:
        self.last_val_f1 = dict(report.val_f1)
        self.epochs_logged += 1
        self.progress.on_message(f"{self.title}: {report.summary()}")
        if self.plot is not None:
            self.plot.add_epoch(report.epoch, report.epochs, report.loss, dict(report.val_f1))

    def on_message(self, text: str) -> None:
        self.progress.on_message(f"{self.title}: {text}")

    def should_stop(self) -> bool:
        return self.progress.cancelled()


class PredictionProgress(Callback):
    """'Predict EM Model: stack.tif slice 3 of 20' in the status bar, the bar over the slices."""

    def __init__(self, progress: FijiProgress, title: str = "Predict EM Model", label: str = "") -> None:
        self.progress = progress
        self.title = title
        self.label = label

    def on_progress(self, done: int, total: int, text: str) -> None:
        prefix = f"{self.title}: {self.label} " if self.label else f"{self.title}: "
        self.progress.on_progress(done, total, prefix + text)

    def on_message(self, text: str) -> None:
        self.progress.on_message(f"{self.title}: {text}")

    def should_stop(self) -> bool:
        return self.progress.cancelled()
