"""A live ImageJ Plot of the training loss and validation F1, redrawn after every epoch.

A biologist watching a long training wants to see whether it still improves: one window with the
loss and the per-class validation F1 against the epoch, next to the status bar and the Stop
window. It is an ordinary ImageJ ``Plot`` (``ij.gui.Plot`` + ``PlotWindow``, APIs that ImageJ
1.53f already has), so it can be saved or its values listed like any plot. Headless there is no
window; the epochs are in the Log there.
"""

from __future__ import annotations

from typing import Any

from .awt import run_on_edt
from .jvm import ensure_jvm, is_headless, jclass

__all__ = ["TrainingPlot"]

#: Line colours: loss first, then one per class (ImageJ colour names).
_COLOURS = ("black", "blue", "red", "#008000", "magenta", "orange", "cyan")


class TrainingPlot:
    """Keeps the curves and redraws one PlotWindow; does nothing headless."""

    def __init__(self, title: str) -> None:
        ensure_jvm()
        self.title = title
        self.enabled = not is_headless()
        self.epochs: list[float] = []
        self.loss: list[float] = []
        self.f1: dict[str, list[float]] = {}
        self.window: Any = None

    def add_epoch(self, epoch: int, epochs: int, loss: float, val_f1: dict[str, float]) -> None:
        """Record one epoch and redraw (on the AWT thread, without waiting for it).

        Drawing from the training thread instead hung the real ImageJ2 GUI (seen in
        tests/test_imagej2_gui.py); on the event thread it works there and in ImageJ 1.53t.
        """
        self.epochs.append(float(epoch))
        self.loss.append(float(loss))
        for name, value in val_f1.items():
            self.f1.setdefault(name, []).append(float(value))
        if self.enabled:
            plot = self.build(epochs)
            run_on_edt(lambda: self._draw(plot))

    def build(self, epochs: int) -> Any:
        """The ImageJ Plot of the curves so far (also usable headless, e.g. to save it)."""
        from jpype import JArray, JDouble

        plot_class = jclass("ij.gui.Plot")
        plot = plot_class(self.title, "epoch", "loss (black) / validation F1")
        top = max([1.0, *self.loss])
        plot.setLimits(1.0, float(max(2, epochs)), 0.0, top * 1.05)
        x = JArray(JDouble)(self.epochs)
        plot.setColor(_COLOURS[0])
        plot.addPoints(x, JArray(JDouble)(self.loss), plot_class.CONNECTED_CIRCLES)
        legend = ["loss"]
        for k, (name, values) in enumerate(self.f1.items(), start=1):
            plot.setColor(_COLOURS[k % len(_COLOURS)])
            plot.addPoints(JArray(JDouble)(self.epochs[-len(values):]), JArray(JDouble)(values),
                           plot_class.CONNECTED_CIRCLES)
            legend.append(f"val F1 {name}")
        plot.setColor("black")
        plot.addLegend("\n".join(legend))
        return plot

    def _draw(self, plot: Any) -> None:
        if self.window is not None and bool(self.window.isShowing()):
            self.window.drawPlot(plot)
        else:
            self.window = plot.show()
