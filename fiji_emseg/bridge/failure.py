"""Making a failed Fiji command visible.

Fiji's Python-mode runner catches every exception, prints it to the console and carries on; the
outputs come back empty and a headless run exits 0. Script entry code therefore catches errors
itself and calls :func:`report_failure`, which on every path

- writes one ``ERROR: …`` line to the Log;
- in the GUI, shows ImageJ's error dialog;
- inside a macro (``run("Train EM Model", …)``), aborts that macro, so a batch macro does not go
  on with the windows the failed step should have made (``IJ.runMacro`` returns ``[aborted]``);
- in a headless ``--run`` batch run, ends the process with a non-zero exit code, because nothing
  else makes ``fiji --headless --run`` exit non-zero.

A command called through the script service by a Python program is not ended: it returns its
``status`` (``error: …``) to the caller.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import EmsegError
from .awt import run_on_edt
from .jvm import ensure_jvm, in_console_run, in_macro, is_headless, jclass

__all__ = ["EXIT_ON_FAILURE_ENV", "describe_error", "report_failure"]

#: Set to "1" to make a headless failure exit the process outside a ``--run`` batch run too (our
#: emulated batch harness does).
EXIT_ON_FAILURE_ENV = "EMSEG_EXIT_ON_FAILURE"


def describe_error(error: BaseException | str) -> str:
    """One line for the user: an EmsegError's own message; anything else is labelled as a bug."""
    if isinstance(error, str):
        return error
    if isinstance(error, EmsegError):
        return str(error)
    return (f"unexpected {type(error).__name__}: {error} — this is a bug in fiji-emseg; "
            "please report it with the console output")


def _console(text: str) -> None:
    """Best effort to the process's stderr: inside Fiji ``sys.stderr`` may be unusable."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.write(text + "\n")
                stream.flush()
                return
        except Exception:  # noqa: BLE001, S112 - try the next stream
            continue


def _error_dialog(title: str, message: str) -> None:
    frame = jclass("ij.IJ").getInstance()
    if frame is None:
        frame = jclass("java.awt.Frame")()
    jclass("ij.gui.MessageDialog")(frame, title, message)


def report_failure(error: BaseException | str, title: str = "EM segmentation", exit_code: int = 1,
                   exit_headless: bool | None = None) -> str:
    """Report a failed command in the Log (a dialog in the GUI, an aborted macro); ``--run`` exits.

    ``exit_headless`` (default: a headless ``--run`` batch run, or ``$EMSEG_EXIT_ON_FAILURE`` is
    "1") makes a headless run end the process with ``exit_code`` after logging. Returns the message
    (for a status output).
    """
    ensure_jvm()
    message = describe_error(error)
    if isinstance(error, BaseException) and not isinstance(error, EmsegError):
        _console("".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip())
    ij = jclass("ij.IJ")
    ij.log(f"ERROR: {message}")
    if not is_headless():
        # On the AWT thread: the dialog is modal there, but the script thread does not wait on it.
        # ImageJ's own MessageDialog (what IJ.error shows), built directly: IJ.error itself stays
        # silent while a macro is being aborted.
        run_on_edt(lambda: _error_dialog(title, message))
    if in_macro():
        jclass("ij.macro.Interpreter").abort()
    if not is_headless():
        return message
    if exit_headless is None:
        exit_headless = in_console_run() or os.environ.get(EXIT_ON_FAILURE_ENV) == "1"
    if exit_headless:
        _console(f"{title}: ERROR: {message}")
        _end_process(int(exit_code))
    return message


def _end_process(exit_code: int) -> None:
    """End a failed batch run with ``exit_code``, without the process's C exit handlers.

    In Python mode CPython hosts the JVM. ``System.exit`` ends in libc's ``exit()``, whose
    handlers tear down native libraries (PyTorch, ONNX Runtime) while Python and Java threads
    still run: on Debian's OpenJDK 17 that crashed in libc (SIGSEGV, exit status -6 instead of
    the 1 asked for) once the engine had been imported. So the Java and Python streams are
    flushed, and the process ends at once with the code asked for. Java's shutdown hooks are
    skipped; a failed batch run has nothing of the user's to save in them.
    """
    system = jclass("java.lang.System")
    for stream in (system.out, system.err):
        stream.flush()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001, S112 - a closed stream has nothing to flush
            continue
    os._exit(exit_code)
