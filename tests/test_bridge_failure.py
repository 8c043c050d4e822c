"""Reporting failed commands (the headless exit code is tested through the harness subprocess)."""

from __future__ import annotations

import pytest
from bridge_fixtures import ij1, ij_log_capture, imagej_app, needs_display, wait_for  # noqa: F401

from fiji_emseg.bridge import failure
from fiji_emseg.bridge.failure import describe_error, report_failure
from fiji_emseg.bridge.jvm import jclass
from fiji_emseg.errors import InputDataError

pytestmark = pytest.mark.imagej


def test_describe_error() -> None:
    assert describe_error(InputDataError("stack: 3 channels; split them")) == "stack: 3 channels; split them"
    assert describe_error("plain text") == "plain text"
    bug = describe_error(KeyError("x"))
    assert bug.startswith("unexpected KeyError: 'x'") and "bug in fiji-emseg" in bug


def test_headless_report_without_exit_logs_and_returns(ij1, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(failure, "is_headless", lambda: True)
    with ij_log_capture() as lines:
        message = report_failure(InputDataError("mask: wrong size"), exit_headless=False)
    assert message == "mask: wrong size"
    assert "ERROR: mask: wrong size" in lines


def _error_dialogs(title: str) -> list[object]:
    dialog = jclass("java.awt.Dialog")
    return [w for w in jclass("java.awt.Window").getWindows()
            if isinstance(w, dialog) and w.isShowing() and str(w.getTitle()) == title]


@needs_display()
@pytest.mark.gui
def test_gui_report_shows_an_error_dialog_without_blocking(imagej_app) -> None:  # noqa: F811
    title = "Train EM Model (test)"
    with ij_log_capture() as lines:
        message = report_failure(InputDataError("image: RGB; use Image > Type > 8-bit"), title=title)
    assert message == "image: RGB; use Image > Type > 8-bit"  # returned at once: the dialog does not block
    assert "ERROR: image: RGB; use Image > Type > 8-bit" in lines
    assert wait_for(lambda: len(_error_dialogs(title)) == 1)
    for dialog in _error_dialogs(title):
        dialog.dispose()
    assert wait_for(lambda: not _error_dialogs(title))
