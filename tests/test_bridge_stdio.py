"""``safe_stdio``: a Fiji command's prints never raise, whatever scyjava left in sys.stdout."""

from __future__ import annotations

import io
import sys
import warnings

import pytest

from fiji_emseg.bridge.stdio import FallbackStream, safe_stdio, stream_usable


class NoTargetWriter:
    """What scyjava's ScriptContextWriter does when SciJava gave the script no output writer."""

    def write(self, text: str) -> None:
        None.write(text)  # type: ignore[attr-defined]

    def flush(self) -> None:
        None.flush()  # type: ignore[attr-defined]


def test_a_broken_stream_is_detected_and_a_working_one_is_not() -> None:
    assert not stream_usable(NoTargetWriter())
    assert not stream_usable(None)
    assert stream_usable(io.StringIO())


def test_writes_the_primary_refuses_go_to_the_fallback() -> None:
    console = io.StringIO()
    stream = FallbackStream(NoTargetWriter(), console)
    assert stream.write("hello\n") == 6
    stream.flush()
    assert console.getvalue() == "hello\n"
    FallbackStream(None, None).write("dropped, without an error")


def test_print_flush_warnings_and_tqdm_work_inside_and_streams_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = NoTargetWriter()
    console = io.StringIO()
    monkeypatch.setattr(sys, "stdout", broken)
    monkeypatch.setattr(sys, "__stdout__", console)
    with pytest.raises(AttributeError):
        print("outside a command this fails, as in Fiji")
    with safe_stdio():
        print("package code printing")
        sys.stdout.flush()
        warnings.showwarning("a plain warning", UserWarning, "engine.py", 1)  # what a warning prints, to stderr
        sys.stderr.flush()
        from tqdm import tqdm

        for _ in tqdm(range(2), file=sys.stdout):
            pass
    assert sys.stdout is broken  # restored
    assert "package code printing" in console.getvalue()
