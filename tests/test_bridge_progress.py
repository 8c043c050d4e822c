"""The progress reporter and warning routing, calling real ImageJ1."""

from __future__ import annotations

import time
import warnings

import pytest
from bridge_fixtures import ij1, ij_log_capture, imagej_app, needs_display, wait_for  # noqa: F401

from fiji_emseg.bridge.jvm import jclass
from fiji_emseg.bridge.progress import (
    FijiProgress,
    format_duration,
    ij_log,
    log_warnings,
)
from fiji_emseg.errors import EmsegWarning

pytestmark = pytest.mark.imagej


def test_messages_go_to_the_imagej_log(ij1) -> None:  # noqa: F811
    with ij_log_capture() as lines:
        p = FijiProgress("t")
        p.on_message("epoch 1/3: loss 0.41, val F1 0.83")
        ij_log("second line")
    assert lines[-2:] == ["epoch 1/3: loss 0.41, val F1 0.83", "second line"]


def test_progress_is_throttled_but_first_and_last_get_through(ij1) -> None:  # noqa: F811
    p = FijiProgress("t", min_interval_s=0.1, headless_log_interval_s=None)
    start = time.monotonic()
    for i in range(1, 20001):
        p.on_progress(i, 20000, f"step {i}")
    elapsed = time.monotonic() - start
    assert p.updates_sent <= 2 + int(elapsed / 0.1) + 1  # ≤ 10 per second plus first and last
    assert p.updates_sent >= 2
    assert elapsed < 2.0  # the engine's loop is not slowed down measurably (20k calls)


def test_new_phase_restarts_throttle_and_eta(ij1) -> None:  # noqa: F811
    p = FijiProgress("t", min_interval_s=10.0)
    p.on_progress(1, 100, "train")
    p.on_progress(2, 100, "train")  # throttled
    assert p.updates_sent == 1
    p.on_progress(1, 7, "predict slice 1/7")  # new total: a new phase, shown at once
    assert p.updates_sent == 2


def test_eta_is_appended_from_the_measured_rate(ij1, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    p = FijiProgress("t", min_interval_s=0.0)
    statuses: list[str] = []
    monkeypatch.setattr(p, "_ij", _Recorder(statuses, p._ij))
    p.on_progress(0, 100, "epoch 1/4")
    clock[0] += 30.0
    p.on_progress(25, 100, "epoch 1/4, loss 0.3")
    assert statuses[-1] == "epoch 1/4, loss 0.3 — ETA 1 min 30 s"
    clock[0] += 90.0
    p.on_progress(100, 100, "done")
    assert statuses[-1] == "done"


class _Recorder:
    """Records showStatus text and forwards everything to the real ``IJ``."""

    def __init__(self, statuses: list[str], ij: object) -> None:
        self.statuses, self.ij = statuses, ij

    def showStatus(self, text: str) -> None:
        self.statuses.append(str(text))
        self.ij.showStatus(text)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.ij, name)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 59, 200, 7320)] == ["0 s", "59 s", "3 min 20 s", "2 h 02 min"]


def test_cancel_from_code_and_from_the_escape_key(ij1) -> None:  # noqa: F811
    ij = jclass("ij.IJ")
    p = FijiProgress("t", min_interval_s=0.0)
    assert not p.cancelled()
    p.cancel()
    assert p.cancelled()

    esc = jclass("java.awt.event.KeyEvent").VK_ESCAPE
    ij.setKeyDown(esc)  # what ImageJ does when the user presses Esc
    try:
        q = FijiProgress("t2", min_interval_s=0.0)
        assert not q.cancelled()  # an Esc pressed before the run started is forgotten
        ij.setKeyDown(esc)  # Esc during the run
        assert q.cancelled()
        assert q.cancelled()  # and it stays cancelled
    finally:
        ij.resetEscape()


def test_emseg_warnings_are_logged_every_time_others_pass(ij1) -> None:  # noqa: F811
    with ij_log_capture() as lines, log_warnings():
        for _ in range(2):
            warnings.warn("class 'er' is empty in slice 3", EmsegWarning, stacklevel=1)
        with pytest.warns(UserWarning, match="plain"):
            warnings.warn("plain", UserWarning, stacklevel=1)
    assert lines.count("WARNING: class 'er' is empty in slice 3") == 2
    assert not any("plain" in line for line in lines)


def test_log_warnings_restores_showwarning(ij1) -> None:  # noqa: F811
    before = warnings.showwarning
    with log_warnings():
        assert warnings.showwarning is not before
    assert warnings.showwarning is before


@needs_display()
@pytest.mark.gui
def test_status_bar_progress_bar_and_stop_window(imagej_app) -> None:  # noqa: F811
    imagej = jclass("ij.ImageJ")
    with FijiProgress("Train EM Model", cancel_button=True, min_interval_s=0.0) as p:
        p.on_progress(3, 10, "epoch 3/10 — loss 0.21 — val F1 0.88")
        assert str(imagej.getStatusBarText()).startswith("epoch 3/10 — loss 0.21 — val F1 0.88")
        window = p.cancel_window
        assert window is not None and wait_for(window.isShowing)
        assert not p.cancelled()
        button = window.getComponent(0)
        event = jclass("java.awt.event.ActionEvent")(button, jclass("java.awt.event.ActionEvent").ACTION_PERFORMED,
                                                     "stop")
        button.dispatchEvent(event)  # the user clicks "Stop"
        assert wait_for(p.cancelled, timeout_s=2.0)
    assert not window.isDisplayable() or wait_for(lambda: not window.isDisplayable())
    assert str(imagej.getStatusBarText()) == ""
