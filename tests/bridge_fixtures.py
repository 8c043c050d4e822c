"""Shared fixtures for the bridge tests: one real JVM running real ImageJ1 per pytest process.

The JVM starts once (options cannot change afterwards): with a display when ``DISPLAY`` is set
(CI runs ``xvfb-run -a python -m pytest``), headless otherwise. Tests that need windows are
marked ``gui`` and skip without a display; tests that need a truly headless JVM run it in a
subprocess (see ``tests/fiji_harness.py``), so both kinds coexist in one pytest process.

Import what a module needs: ``from bridge_fixtures import ij1, imagej_app, ij_log_capture``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fiji_emseg.bridge.jvm import JvmInfo, ensure_jvm, is_headless, jclass

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where GUI tests put screenshots (gitignored ``runs/``); override with $EMSEG_SCREENSHOT_DIR.
SCREENSHOT_DIR = Path(os.environ.get("EMSEG_SCREENSHOT_DIR", REPO_ROOT / "runs" / "screenshots"))


@pytest.fixture(scope="session")
def ij1() -> JvmInfo:
    """The process's JVM with ImageJ1 (started here, or reused). Fails, not skips, without ImageJ:
    ImageJ is a hard requirement of these tests and the error names the fix."""
    return ensure_jvm(max_heap="3g")


def needs_display() -> Any:
    """Skip marker for tests that need a real (X) display in the JVM."""
    return pytest.mark.skipif(not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
                              reason="needs a display; run under xvfb-run")


@pytest.fixture(scope="session")
def imagej_app(ij1: JvmInfo) -> Any:
    """ImageJ1's main window, shown once for the session (menus, status bar, Log window routing)."""
    if is_headless():
        pytest.skip("the JVM is headless (it was started without a display)")
    from fiji_emseg.bridge.awt import run_on_edt

    imagej = jclass("ij.ImageJ")
    if jclass("ij.IJ").getInstance() is None:
        run_on_edt(lambda: imagej(), wait=True)
    app = jclass("ij.IJ").getInstance()
    assert app is not None
    return app


def drain_edt() -> None:
    """Wait until every window change queued so far has run on the AWT thread."""
    from fiji_emseg.bridge.awt import run_on_edt

    run_on_edt(lambda: None, wait=True)


def wait_for(predicate: Any, timeout_s: float = 5.0, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until true or timeout (window creation is asynchronous in AWT)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


@contextmanager
def ij_log_capture() -> Iterator[list[str]]:
    """Collect the lines ``IJ.log`` writes inside the block, wherever they go.

    With an ImageJ window (or an open Log window) they go to the Log window; otherwise ImageJ1
    prints them to Java's ``System.out``, which is redirected here for the duration.
    """
    ij = jclass("ij.IJ")
    lines: list[str] = []
    if ij.getInstance() is not None or ij.getLog() is not None:
        before = str(ij.getLog() or "")
        try:
            yield lines
        finally:
            after = str(ij.getLog() or "")
            lines.extend(after[len(before):].splitlines() if after.startswith(before) else after.splitlines())
        return
    system = jclass("java.lang.System")
    original = system.out
    buffer = jclass("java.io.ByteArrayOutputStream")()
    system.setOut(jclass("java.io.PrintStream")(buffer, True, "UTF-8"))
    try:
        yield lines
    finally:
        system.setOut(original)
        lines.extend(str(buffer.toString("UTF-8")).splitlines())


def screenshot(name: str) -> Path:
    """Save the whole X screen with ImageMagick's ``import -window root``; returns the PNG path."""
    import subprocess

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    subprocess.run(["import", "-window", "root", str(path)], check=True, timeout=60)
    return path


#: What ``new ImageJ()`` raised in CI when SciJava's start-up race hit (fiji_emseg.bridge.imagej2_start).
RACED_SERVICE = "Invalid service: net.imagej.legacy.display.LegacyImageDisplayService"


def java_exception(name: str, *args: Any) -> Any:
    """A real Java exception object, from the JDK or (``org.scijava.*``) from the shared ImageJ2's
    scijava-common jar through its own class loader; skips when that jar is absent."""
    if not name.startswith("org.scijava."):
        return jclass(name)(*args)
    jars = sorted((REPO_ROOT.parent / "shared" / "imagej2" / "Fiji.app" / "jars").glob("scijava-common-*.jar"))
    if not jars:
        pytest.skip("no ../shared/imagej2 (scijava-common jar) on this machine")
    loader = jclass("java.net.URLClassLoader")([jclass("java.io.File")(str(jars[0])).toURI().toURL()])
    return loader.loadClass(name).getConstructor().newInstance()
