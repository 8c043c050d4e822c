"""Library log output for the ``emseg`` command: kept out of the way unless ``--verbose``.

tifffile, onnxruntime's Python layer and torch report through :mod:`logging` and
:mod:`warnings`. Printed as they come, a damaged TIFF put up to 56 tifffile lines in front of
our one-line error. Here they are collected instead: without ``--verbose`` they are counted and
the error line says how many were held back; with ``--verbose`` they go to stderr as they come
(each prefixed ``emseg: log:``), followed by a traceback for unexpected errors.
Our own :class:`~fiji_emseg.errors.EmsegWarning` is meant for the user and is always printed,
as one ``emseg: warning:`` line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

from ..errors import EmsegWarning

__all__ = ["LibraryLog", "captured_library_output"]


class LibraryLog(logging.Handler):
    """Holds library records (quiet mode) or prints them (verbose mode)."""

    def __init__(self, verbose: bool, stream: TextIO | None = None) -> None:
        super().__init__(logging.DEBUG if verbose else logging.WARNING)
        self.verbose = verbose
        self.stream = stream
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{record.name}: {record.getMessage()}"
        except Exception:  # a library's malformed format string must not become our error
            line = f"{record.name}: {record.msg!r}"
        self.records.append(line)
        if self.verbose:
            print(f"emseg: log: {line}", file=self.stream or sys.stderr)

    @property
    def hidden(self) -> int:
        return 0 if self.verbose else len(self.records)


@contextlib.contextmanager
def captured_library_output(verbose: bool) -> Iterator[LibraryLog]:
    """Route every logger and non-emseg warning through one :class:`LibraryLog` for the block."""
    handler = LibraryLog(verbose)
    root = logging.getLogger()
    old_level = root.level
    old_showwarning = warnings.showwarning
    root.addHandler(handler)  # also stops logging's "last resort" printer, which wrote to stderr
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    log = logging.getLogger("py.warnings")

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        if issubclass(category, EmsegWarning):
            print(f"emseg: warning: {message}", file=sys.stderr)
        else:
            log.warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    warnings.showwarning = showwarning
    try:
        yield handler
    finally:
        warnings.showwarning = old_showwarning
        root.removeHandler(handler)
        root.setLevel(old_level)
