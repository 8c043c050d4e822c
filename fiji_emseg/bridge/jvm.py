"""The one JVM of the process: find it inside Fiji, or start one with ImageJ1 outside it.

Inside Fiji's Python mode, pyimagej has already started the JVM (with Fiji's classpath, heap and
headless flag); we reuse it and touch nothing. Everywhere else (tests, command line) we start
JPype through scyjava with ``ij.jar`` on the classpath. JVM options can only be set before the
start, so every caller goes through :func:`ensure_jvm` and the first call decides.

``imagej`` (pyimagej) is never imported here unless ImageJ2 is really on the classpath: importing
it registers a Maven endpoint that makes a later offline JVM start fail.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import EmsegError

__all__ = [
    "JvmInfo",
    "ensure_jvm",
    "fiji_home",
    "find_ij_jar",
    "has_imagej2",
    "in_console_run",
    "in_fiji",
    "in_macro",
    "is_headless",
    "jclass",
    "jvm_running",
    "pyimagej",
]

_log = logging.getLogger(__name__)

#: Env var naming an ij.jar to use (checked first).
IJ_JAR_ENV = "EMSEG_IJ_JAR"
#: Env var naming a Fiji.app folder whose ``jars/ij-*.jar`` can be used.
FIJI_HOME_ENV = "FIJI_HOME"
#: Where Debian's ``libij-java`` installs ImageJ1.
DEBIAN_IJ_JAR = Path("/usr/share/java/ij.jar")

_INSTALL_HINT = (
    f"install ImageJ (Debian/Ubuntu: apt-get install libij-java), set {IJ_JAR_ENV}=/path/to/ij.jar, "
    f"or set {FIJI_HOME_ENV}=/path/to/Fiji.app"
)

# The JVM singleton state. A JVM cannot be restarted, so this only ever goes from None to set.
_lock = threading.Lock()
_started_here: bool | None = None  # None: not known yet (no JVM, or not checked)


@dataclass(frozen=True)
class JvmInfo:
    """What :func:`ensure_jvm` found or started."""

    started_here: bool
    headless: bool
    imagej_version: str


def jvm_running() -> bool:
    """Whether a JVM is already up in this process (ours, or the one pyimagej started in Fiji)."""
    import jpype

    return bool(jpype.isJVMStarted())


def find_ij_jar(fiji: str | os.PathLike[str] | None = None) -> Path:
    """Locate ImageJ1's jar: ``$EMSEG_IJ_JAR``, then Debian's, then a Fiji.app's ``jars/ij-*.jar``."""
    env = os.environ.get(IJ_JAR_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        raise EmsegError(f"{IJ_JAR_ENV}={env} does not name an existing file; point it at ImageJ's ij.jar")
    if DEBIAN_IJ_JAR.is_file():
        return DEBIAN_IJ_JAR
    home = fiji if fiji is not None else os.environ.get(FIJI_HOME_ENV)
    if home:
        jars = sorted(glob.glob(str(Path(home).expanduser() / "jars" / "ij-*.jar")))
        if jars:
            return Path(jars[-1])
        raise EmsegError(f"no jars/ij-*.jar in the Fiji folder {home}; check {FIJI_HOME_ENV} or --fiji")
    raise EmsegError(f"ImageJ (ij.jar) was not found: {_INSTALL_HINT}")


def _display_available() -> bool:
    """Whether a GUI could open, judged before the JVM exists (X11/Wayland on Linux)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # macOS and Windows always have a window server for a desktop user


def _default_heap() -> str:
    """Half the physical memory: ImageJ holds a copy of every image we hand it, numpy the other."""
    try:
        import psutil

        mb = int(psutil.virtual_memory().total / 2**20 / 2)
    except Exception:  # noqa: BLE001 - psutil missing or unreadable: fall back to 2 GB
        mb = 2048
    return f"{max(mb, 512)}m"


def _check_java() -> None:
    """Fail with a fix rather than letting scyjava try to download a JDK (offline machines hang)."""
    import jpype

    try:
        jpype.getDefaultJVMPath()
        return
    except Exception:  # noqa: BLE001 - JVMNotFoundException and friends: look further below
        _log.debug("JPype found no default JVM", exc_info=True)
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        return
    raise EmsegError(
        "no Java runtime was found: install Java 11 or newer (Debian/Ubuntu: apt-get install "
        "default-jre-headless) or set JAVA_HOME")


def _ij_version() -> str:
    try:
        return str(jclass("ij.IJ").getVersion())
    except Exception as exc:  # JVM up but without ImageJ1 (someone else's JVM)
        raise EmsegError(f"the running JVM has no ImageJ1 (ij.IJ) on its classpath: {_INSTALL_HINT}") from exc


def ensure_jvm(max_heap: str | None = None, headless: bool | None = None,
               extra_classpath: Sequence[str | os.PathLike[str]] = (),
               fiji: str | os.PathLike[str] | None = None) -> JvmInfo:
    """Return the running JVM's description, starting one with ImageJ1 first if there is none.

    ``max_heap`` (e.g. ``"8g"``; default: half the RAM) and ``headless`` (default: headless when
    there is no display) only apply when this call starts the JVM; a JVM already running (Fiji's)
    is reused as it is. ``fiji`` is a Fiji.app folder to take ``ij.jar`` from.
    """
    global _started_here
    with _lock:
        if jvm_running():
            if _started_here is None:
                _started_here = False
                _log.debug("reusing a JVM started by someone else (Fiji/pyimagej)")
            elif max_heap is not None or headless is not None:
                _log.debug("JVM already running; ignoring max_heap=%s headless=%s", max_heap, headless)
            return JvmInfo(bool(_started_here), is_headless(), _ij_version())

        jar = find_ij_jar(fiji)
        _check_java()
        import jpype
        import scyjava

        # Destroying the JVM at exit waits for AWT threads and can hang the interpreter.
        jpype.config.destroy_jvm = False
        if scyjava.config.get_fetch_java() == "always":
            # scyjava's default would download a JDK even when one is installed; "never" trips
            # a pyimagej 1.8 bug, "auto" uses the system Java and only downloads when there is none.
            scyjava.config.set_java_constraints(fetch="auto")
        if scyjava.config.endpoints:
            # Maven endpoints (e.g. imglyb, added by `import imagej`) cannot resolve offline and
            # are useless without ImageJ2; our JVM is plain ImageJ1.
            _log.debug("dropping scyjava Maven endpoints %s", list(scyjava.config.endpoints))
            scyjava.config.endpoints.clear()
        if headless is None:
            headless = not _display_available()
        scyjava.config.add_classpath(str(jar), *(str(p) for p in extra_classpath))
        scyjava.config.add_option(f"-Xmx{max_heap or _default_heap()}")
        scyjava.config.add_option(f"-Djava.awt.headless={'true' if headless else 'false'}")
        try:
            scyjava.start_jvm()
        except Exception as exc:
            if not jpype.isJVMStarted():
                raise EmsegError(
                    f"the Java virtual machine did not start ({type(exc).__name__}: {exc}); check that Java 11+ "
                    "is installed (apt-get install default-jre-headless) or set JAVA_HOME") from exc
            # The JVM is up; a scyjava start-up callback failed. `import imagej` registers imglyb's,
            # which needs ImageJ2 classes that a plain ImageJ1 JVM does not have.
            _log.warning("ignoring a failed scyjava JVM start-up callback (%s: %s)", type(exc).__name__, exc)
        _started_here = True
        # Runs before scyjava's own exit hook (atexit is last-in, first-out).
        atexit.register(_quiet_shutdown)
        return JvmInfo(True, is_headless(), _ij_version())


def _quiet_shutdown(drain_timeout_s: float = 2.0) -> None:
    """Stop Java threads from calling into Python before Python finalizes (only for our own JVM).

    With ``destroy_jvm = False`` the JVM outlives the interpreter's shutdown. A Java thread that
    then needs the GIL — JPype's reference queue releasing a buffer or proxy freed by the Java GC,
    or the AWT thread running a Python ``Runnable`` still queued — is ``pthread_exit``-ed by
    CPython inside JVM frames: the process aborts ("FATAL: exception not rethrown", exit code 134)
    or segfaults in ``JPypeProxy.hostInvoke`` on the AWT thread. Measured here in about half the
    runs after large copies or with queued window updates; none in 30+ runs with this hook.
    So: let queued AWT work finish (bounded wait), then stop the reference queue.
    """
    try:
        import scyjava

        if not is_headless() and scyjava.is_awt_initialized():
            done = threading.Event()
            from .awt import run_on_edt

            run_on_edt(done.set)
            done.wait(drain_timeout_s)
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        _log.debug("could not drain the AWT event queue", exc_info=True)
    try:
        jclass("org.jpype.ref.JPypeReferenceQueue").getInstance().stop()
    except Exception:  # noqa: BLE001 - JVM gone, or a JPype without this class: nothing to stop
        _log.debug("could not stop JPype's reference queue", exc_info=True)


def jclass(name: str) -> Any:
    """A Java class by its full name; the JVM must be up (call :func:`ensure_jvm` first)."""
    import jpype

    if not jpype.isJVMStarted():
        raise RuntimeError(f"jclass({name!r}) called before ensure_jvm()")
    return jpype.JClass(name)


def is_headless() -> bool:
    """Whether windows cannot be shown: AWT's answer once the JVM runs, the environment's before."""
    if jvm_running():
        return bool(jclass("java.awt.GraphicsEnvironment").isHeadless())
    return not _display_available()


def has_imagej2() -> bool:
    """Whether ImageJ2 (``net.imagej.ImageJ``) is on the running JVM's classpath."""
    if not jvm_running():
        return False
    try:
        jclass("net.imagej.ImageJ")
        return True
    except Exception:  # noqa: BLE001 - JPype raises TypeError or a Java exception for a missing class
        return False


def in_fiji() -> bool:
    """Whether we run inside Fiji (or another ImageJ2 application) rather than our own JVM."""
    return jvm_running() and not _started_here and has_imagej2()


#: The SciJava class that runs ``--run script args`` from the command line (a start-up operation).
_RUN_ARGUMENT = "org.scijava.run.console.RunArgument"


def in_console_run() -> bool:
    """Whether a ``--run`` command-line operation of ImageJ2 is executing in this JVM.

    SciJava runs ``fiji --headless --run script.py 'args'`` as a start-up operation of its
    ``RunArgument``, whose thread waits for the script to end; no API says so, but that frame on
    a live thread's stack does. It is what tells a batch run (which must end with a non-zero exit
    code on failure) from a script-service call made by a Python program (which must get its
    ``status`` back, not lose its process).
    """
    if not has_imagej2():
        return False
    threads = jclass("java.lang.Thread").getAllStackTraces()
    for stack in threads.values():
        for frame in stack:
            if str(frame.getClassName()).startswith(_RUN_ARGUMENT):
                return True
    return False


def in_macro() -> bool:
    """Whether an ImageJ macro is running (a command called by ``run("…")``)."""
    if not jvm_running():
        return False
    return jclass("ij.macro.Interpreter").getInstance() is not None


def fiji_home() -> Path | None:
    """The Fiji.app folder of the running Fiji (``imagej.dir``/``fiji.dir``/``plugins.dir``), else $FIJI_HOME."""
    if jvm_running():
        system = jclass("java.lang.System")
        for prop in ("imagej.dir", "fiji.dir", "ij.dir"):
            value = system.getProperty(prop)
            if value:
                return Path(str(value))
        plugins = system.getProperty("plugins.dir")  # set by pyimagej when started from a Fiji.app
        if plugins:
            return Path(str(plugins)).parent
    env = os.environ.get(FIJI_HOME_ENV)
    return Path(env) if env else None


def pyimagej() -> ModuleType:
    """The ``imagej`` module, imported only when ImageJ2 is really present (see module docstring)."""
    if not has_imagej2():
        raise EmsegError("ImageJ2 is not available in this JVM; this feature needs Fiji (run it from Fiji's "
                         "Python mode) — plain ImageJ1 is enough for everything else")
    import imagej

    return imagej
