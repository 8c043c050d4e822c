"""Progress, messages, warnings and cancellation between the engine and ImageJ.

The engine calls a duck-typed reporter (``on_message``, ``on_progress``, ``cancelled``); this
module's :class:`FijiProgress` sends those to ImageJ1's Log window (``IJ.log``), status bar
(``IJ.showStatus``) and progress bar (``IJ.showProgress``), which Fiji routes to its own UI and
to the console when headless. Updates are throttled so a tight training loop pays only a clock
read per call. Cancelling uses ImageJ's own convention (the Esc key, ``IJ.escapePressed``),
an optional small "Stop" window, or :meth:`FijiProgress.cancel` from code.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import EmsegWarning
from .awt import run_on_edt
from .jvm import ensure_jvm, is_headless, jclass

__all__ = ["FijiProgress", "format_duration", "ij_log", "log_warnings"]


def ij_log(text: str) -> None:
    """Append a line to ImageJ's Log window (stdout when headless)."""
    ensure_jvm()
    jclass("ij.IJ").log(str(text))


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min': short enough for the status bar."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class FijiProgress:
    """Engine progress callbacks implemented with ImageJ1's Log, status bar and progress bar.

    ``min_interval_s`` caps status/progress-bar updates (default 10 per second); the first and the
    last (``done >= total``) update of a phase always go through. With ``show_eta`` the status text
    gets an ETA computed from the rate since the phase began (a phase restarts when ``total``
    changes or ``done`` goes back). Headless, the status text also goes to the log every
    ``headless_log_interval_s`` so batch logs show progress. ``cancel_button`` opens a small window
    whose button (or close box) requests cancellation; there is none when headless.
    Use as a context manager (or call :meth:`close`) to clear the bar and close that window.
    """

    def __init__(self, title: str = "EM segmentation", min_interval_s: float = 0.1, show_eta: bool = True,
                 cancel_button: bool = False, headless_log_interval_s: float | None = 10.0) -> None:
        ensure_jvm()
        self.title = title
        self.min_interval_s = float(min_interval_s)
        self.show_eta = show_eta
        self.headless = is_headless()
        self.headless_log_interval_s = headless_log_interval_s if self.headless else None
        self.updates_sent = 0  # how many status/progress updates reached ImageJ (for tests and tuning)
        self._ij = jclass("ij.IJ")
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._last_update = float("-inf")
        self._last_check = float("-inf")
        self._last_log = time.monotonic()
        self._phase_total: int | None = None
        self._phase_start = (0.0, 0)  # (time, done) when the phase began
        self._last_done = 0
        self._latch: Any = None
        self._window: Any = None
        self._ij.resetEscape()  # an Esc pressed before this run must not cancel it
        if cancel_button and not self.headless:
            self._open_cancel_window()

    # -- the callback interface the engine uses ---------------------------------------------------

    def on_message(self, text: str) -> None:
        """A line for the Log window (never throttled: messages are few and matter)."""
        self._ij.log(str(text))

    def on_progress(self, done: int, total: int, text: str = "") -> None:
        """``done`` of ``total`` units finished; ``text`` describes the state (epoch, loss, slice…)."""
        now = time.monotonic()
        with self._lock:
            if total != self._phase_total or done < self._last_done:
                self._phase_total, self._phase_start = total, (now, done)
                first = True
            else:
                first = False
            self._last_done = done
            final = total > 0 and done >= total
            if not (first or final or now - self._last_update >= self.min_interval_s):
                return
            self._last_update = now
            self.updates_sent += 1
            status = self._with_eta(text, done, total, now)
            log_now = (self.headless_log_interval_s is not None and (final or now - self._last_log
                                                                     >= self.headless_log_interval_s))
            if log_now:
                self._last_log = now
        self._ij.showStatus(status)
        self._ij.showProgress(min(1.0, done / total) if total > 0 else 1.0)
        if log_now and status:
            self._ij.log(status)

    def cancelled(self) -> bool:
        """Whether the user asked to stop (Esc in ImageJ, the Stop window, or :meth:`cancel`)."""
        if self._cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._last_check < self.min_interval_s:
            return False
        self._last_check = now
        if bool(self._ij.escapePressed()) or (self._latch is not None and self._latch.getCount() == 0):
            self._cancel.set()
        return self._cancel.is_set()

    # -- control --------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Request cancellation from code (e.g. another thread or a test)."""
        self._cancel.set()

    def close(self) -> None:
        """Hide the progress bar, clear the status bar and close the Stop window."""
        self._ij.showProgress(1.0)
        self._ij.showStatus("")
        window, self._window = self._window, None
        if window is not None:
            run_on_edt(window.dispose)

    def __enter__(self) -> FijiProgress:  # noqa: PYI034 - Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------

    def _with_eta(self, text: str, done: int, total: int, now: float) -> str:
        t0, done0 = self._phase_start
        if not self.show_eta or total <= 0 or done >= total or done <= done0 or now - t0 < 1.0:
            return text
        remaining = (total - done) * (now - t0) / (done - done0)
        return f"{text} — ETA {format_duration(remaining)}" if text else f"ETA {format_duration(remaining)}"

    def _open_cancel_window(self) -> None:
        """A small window whose button counts down a Java latch: pure Java listeners, so no
        Python runs on the AWT thread when the user clicks."""
        self._latch = jclass("java.util.concurrent.CountDownLatch")(1)
        handler = jclass("java.beans.EventHandler")
        action = handler.create(jclass("java.awt.event.ActionListener"), self._latch, "countDown")
        closing = handler.create(jclass("java.awt.event.WindowListener"), self._latch, "countDown", None,
                                 "windowClosing")
        holder: list[Any] = []

        def build() -> None:
            frame = jclass("java.awt.Frame")(f"{self.title} — stop")
            frame.setLayout(jclass("java.awt.FlowLayout")())
            button = jclass("java.awt.Button")("Stop (keeps the best model so far)")
            button.addActionListener(action)
            frame.add(button)
            frame.addWindowListener(closing)
            frame.pack()
            frame.setVisible(True)
            holder.append(frame)

        run_on_edt(build, wait=True)
        self._window = holder[0]

    @property
    def cancel_window(self) -> Any:
        """The Stop window (a ``java.awt.Frame``), or None."""
        return self._window


@contextmanager
def log_warnings() -> Iterator[None]:
    """Route :class:`EmsegWarning`s raised inside the block to ImageJ's Log, each one every time.

    Other warnings keep their usual route. The previous warning filters and ``showwarning`` are
    restored on exit (``warnings.catch_warnings``; process-wide, like all of ``warnings``).
    """
    ensure_jvm()
    log = jclass("ij.IJ").log
    with warnings.catch_warnings():
        warnings.simplefilter("always", EmsegWarning)
        previous = warnings.showwarning

        def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
            if issubclass(category, EmsegWarning):
                log(f"WARNING: {message}")
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        yield
