"""Progress reporting for long operations, independent of any user interface.

Training and prediction call a :class:`Callback` (or several, via :class:`CallbackList`); the
command line plugs in :class:`TqdmTrainingCallback`, the Fiji layer a callback that drives
ImageJ's status bar, progress bar and Log. ``should_stop`` lets an interface cancel cleanly.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "StepReport",
    "EpochReport",
    "Callback",
    "CallbackList",
    "TqdmTrainingCallback",
    "format_duration",
]


@dataclass(frozen=True)
class StepReport:
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    loss: float
    val_loss: float | None
    val_f1: dict[str, float]
    lr: float
    elapsed_s: float
    eta_s: float
    is_best: bool
    best_epoch: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def val_f1_mean(self) -> float | None:
        return sum(self.val_f1.values()) / len(self.val_f1) if self.val_f1 else None

    def summary(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}", f"loss {self.loss:.4f}"]
        if self.val_loss is not None:
            parts.append(f"val loss {self.val_loss:.4f}")
        if self.val_f1:
            parts.append("val F1 " + " ".join(f"{k} {v:.3f}" for k, v in self.val_f1.items()))
        parts.append(f"lr {self.lr:.2e}")
        parts.append(f"{format_duration(self.elapsed_s)} elapsed, ETA {format_duration(self.eta_s)}")
        if self.is_best:
            parts.append("best")
        return ", ".join(parts)


class Callback:
    """Override what you need; every method is optional."""

    def on_train_begin(self, info: dict[str, Any]) -> None:
        pass

    def on_step(self, report: StepReport) -> None:
        pass

    def on_epoch_end(self, report: EpochReport) -> None:
        pass

    def on_train_end(self, result: Any) -> None:
        pass

    def on_message(self, text: str) -> None:
        pass

    def on_progress(self, done: int, total: int, text: str) -> None:
        """Generic progress for non-training work (prediction: slice i of n)."""

    def should_stop(self) -> bool:
        return False


class CallbackList(Callback):
    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = [c for c in callbacks if c is not None]

    def on_train_begin(self, info: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_train_begin(info)

    def on_step(self, report: StepReport) -> None:
        for c in self.callbacks:
            c.on_step(report)

    def on_epoch_end(self, report: EpochReport) -> None:
        for c in self.callbacks:
            c.on_epoch_end(report)

    def on_train_end(self, result: Any) -> None:
        for c in self.callbacks:
            c.on_train_end(result)

    def on_message(self, text: str) -> None:
        for c in self.callbacks:
            c.on_message(text)

    def on_progress(self, done: int, total: int, text: str) -> None:
        for c in self.callbacks:
            c.on_progress(done, total, text)

    def should_stop(self) -> bool:
        return any(c.should_stop() for c in self.callbacks)


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class TqdmTrainingCallback(Callback):
    """A tqdm bar over all training steps, with one summary line per epoch."""

    def __init__(self, file: TextIO | None = None, disable: bool = False) -> None:
        self.file = file or sys.stderr
        self.disable = disable
        self._bar: Any = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=info["total_steps"], initial=info.get("start_step", 0), unit="step",
                         file=self.file, disable=self.disable, dynamic_ncols=True, desc="training")

    def on_step(self, report: StepReport) -> None:
        if self._bar is not None:
            total = report.epochs * report.steps  # moves when a run fills its time limit
            if self._bar.total != total:
                self._bar.total = total
            self._bar.set_postfix_str(f"epoch {report.epoch}/{report.epochs} loss {report.loss:.4f}", refresh=False)
            self._bar.update(1)

    def on_epoch_end(self, report: EpochReport) -> None:
        if self._bar is not None:
            self._bar.write(report.summary(), file=self.file)

    def on_message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        elif not self.disable:
            print(text, file=self.file)

    def on_train_end(self, result: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
