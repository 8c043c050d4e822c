"""Usable ``sys.stdout``/``sys.stderr`` for the duration of a Fiji command.

Inside Fiji's Python mode, scyjava replaces ``sys.stdout`` with a writer that forwards to the
running script's ScriptContext writer, and SciJava leaves that writer ``None`` for script-service,
macro ``run(…)`` and ``--run`` calls: any ``print()``, ``sys.stdout.flush()``, progress bar or
warning that reaches stdout then raises ``AttributeError`` and the command dies half-way. A
command therefore runs inside :func:`safe_stdio`, which wraps both streams so that a write the
original stream refuses goes to the process's own console stream instead (``sys.__stdout__``,
the terminal Fiji was started from), or is dropped when there is none. Nothing in the package
has to know whether it runs in Fiji.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["FallbackStream", "safe_stdio", "stream_usable"]


def stream_usable(stream: Any) -> bool:
    """Whether ``stream`` accepts a write and a flush (scyjava's writer without a context does not)."""
    if stream is None:
        return False
    try:
        stream.write("")
        stream.flush()
    except Exception:  # noqa: BLE001 - any failure means "not usable": AttributeError, ValueError, OSError…
        return False
    return True


class FallbackStream(io.TextIOBase):
    """A text stream that writes to ``primary`` and, where that fails, to ``fallback`` (or nowhere).

    Thread-safe enough for its job: each call tries the primary first, so other threads whose
    ScriptContext does have a writer (or none at all) keep their own routing.
    """

    def __init__(self, primary: Any, fallback: TextIO | None) -> None:
        super().__init__()
        self.primary = primary
        self.fallback = fallback

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:  # type: ignore[override]
        try:
            if self.primary is None:
                raise AttributeError("no stream")
            self.primary.write(text)
        except Exception:  # noqa: BLE001 - the primary refused: use the console, never fail the caller
            if self.fallback is not None:
                try:
                    self.fallback.write(text)
                except Exception:  # noqa: BLE001, S110 - nowhere left to write to: drop the text
                    pass
        return len(text)

    def flush(self) -> None:
        for stream in (self.primary, self.fallback):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:  # noqa: BLE001, S110 - flushing a dead stream is not an error
                pass

    def isatty(self) -> bool:
        return False


def _console(stream: Any, current: Any) -> TextIO | None:
    """The interpreter's original stream, unless it is the same broken one."""
    if stream is None or stream is current or not stream_usable(stream):
        return None
    return stream  # type: ignore[no-any-return]


@contextmanager
def safe_stdio() -> Iterator[None]:
    """Run the block with ``sys.stdout``/``sys.stderr`` that never raise; restore them afterwards.

    Streams that already work are wrapped too (they may break mid-run when another thread's
    script context changes), at the cost of one ``try`` per write.
    """
    saved_out, saved_err = sys.stdout, sys.stderr
    sys.stdout = FallbackStream(saved_out, _console(sys.__stdout__, saved_out))  # type: ignore[assignment]
    sys.stderr = FallbackStream(saved_err, _console(sys.__stderr__, saved_err))  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved_out, saved_err
