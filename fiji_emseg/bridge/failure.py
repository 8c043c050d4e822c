"""Making a failed Fiji command visible.

Fiji's Python-mode runner catches every exception, prints it to the console and carries on; the
outputs come back empty and a headless run exits 0. Script entry code therefore catches errors
itself and calls :func:`report_failure`, which writes the Log, shows ImageJ's error dialog in the
GUI, and in a headless batch run ends the process with a non-zero exit code.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import EmsegError
from .awt import run_on_edt
from .jvm import ensure_jvm, in_fiji, is_headless, jclass

__all__ = ["EXIT_ON_FAILURE_ENV", "describe_error", "report_failure"]

#: Set to "1" to make a headless failure exit the process outside Fiji too (our batch harness does;
#: inside Fiji a headless run always exits, since that is a batch run by definition).
EXIT_ON_FAILURE_ENV = "EMSEG_EXIT_ON_FAILURE"


def describe_error(error: BaseException | str) -> str:
    """One line for the user: an EmsegError's own message; anything else is labelled as a bug."""
    if isinstance(error, str):
        return error
    if isinstance(error, EmsegError):
        return str(error)
    return (f"unexpected {type(error).__name__}: {error} — this is a bug in fiji-emseg; "
            "please report it with the console output")


def report_failure(error: BaseException | str, title: str = "EM segmentation", exit_code: int = 1,
                   exit_headless: bool | None = None) -> str:
    """Report a failed command in the Log (and a dialog in the GUI); headless batch runs exit.

    ``exit_headless`` (default: inside Fiji, or when ``$EMSEG_EXIT_ON_FAILURE`` is "1") makes a
    headless run call ``System.exit(exit_code)`` after logging, because nothing else makes
    ``fiji --headless --run`` exit non-zero. Returns the message (for a status output).
    """
    ensure_jvm()
    message = describe_error(error)
    if isinstance(error, BaseException) and not isinstance(error, EmsegError):
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    ij = jclass("ij.IJ")
    ij.log(f"ERROR: {message}")
    if not is_headless():
        # On the AWT thread: the dialog is modal there, but the script thread does not wait on it.
        run_on_edt(lambda: ij.error(title, message))
        return message
    if exit_headless is None:
        exit_headless = in_fiji() or os.environ.get(EXIT_ON_FAILURE_ENV) == "1"
    if exit_headless:
        print(f"{title}: ERROR: {message}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        jclass("java.lang.System").exit(int(exit_code))
    return message
