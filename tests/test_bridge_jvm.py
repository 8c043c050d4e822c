"""The JVM singleton: finding ImageJ, starting with options, reusing a running JVM, clean exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bridge_fixtures import RACED_SERVICE, REPO_ROOT, ij1, java_exception  # noqa: F401

from fiji_emseg.bridge import jvm
from fiji_emseg.bridge.imagej2_start import is_start_race
from fiji_emseg.errors import EmsegError

pytestmark = pytest.mark.imagej


def test_running_jvm_is_reused_and_described(ij1) -> None:  # noqa: F811
    again = jvm.ensure_jvm(max_heap="64m", headless=not ij1.headless)  # options ignored: JVM is up
    assert again == ij1
    assert ij1.imagej_version.startswith("1.")
    assert jvm.is_headless() == bool(jvm.jclass("java.awt.GraphicsEnvironment").isHeadless())
    assert jvm.jvm_running()


def test_plain_imagej1_is_not_fiji(ij1) -> None:  # noqa: F811
    assert not jvm.has_imagej2()
    assert not jvm.in_fiji()
    with pytest.raises(EmsegError, match="ImageJ2 is not available.*Fiji"):
        jvm.pyimagej()


def test_ij_jar_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    jar = tmp_path / "ij.jar"
    jar.write_bytes(b"PK")
    monkeypatch.setenv(jvm.IJ_JAR_ENV, str(jar))
    assert jvm.find_ij_jar() == jar
    monkeypatch.setenv(jvm.IJ_JAR_ENV, str(tmp_path / "missing.jar"))
    with pytest.raises(EmsegError, match="EMSEG_IJ_JAR=.*does not name an existing file"):
        jvm.find_ij_jar()


def test_ij_jar_from_a_fiji_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(jvm.IJ_JAR_ENV, raising=False)
    monkeypatch.setattr(jvm, "DEBIAN_IJ_JAR", tmp_path / "no-debian" / "ij.jar")
    fiji = tmp_path / "Fiji.app"
    (fiji / "jars").mkdir(parents=True)
    for version in ("1.53t", "1.54f"):
        (fiji / "jars" / f"ij-{version}.jar").write_bytes(b"PK")
    assert jvm.find_ij_jar(fiji) == fiji / "jars" / "ij-1.54f.jar"
    monkeypatch.setenv(jvm.FIJI_HOME_ENV, str(fiji))
    assert jvm.find_ij_jar() == fiji / "jars" / "ij-1.54f.jar"
    with pytest.raises(EmsegError, match="no jars/ij-\\*.jar"):
        jvm.find_ij_jar(tmp_path)


def test_missing_imagej_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(jvm.IJ_JAR_ENV, raising=False)
    monkeypatch.delenv(jvm.FIJI_HOME_ENV, raising=False)
    monkeypatch.setattr(jvm, "DEBIAN_IJ_JAR", tmp_path / "ij.jar")
    with pytest.raises(EmsegError, match=r"apt-get install libij-java.*EMSEG_IJ_JAR"):
        jvm.find_ij_jar()


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import jpype

    def no_jvm() -> str:
        raise jpype.JVMNotFoundException("none", "", "")

    monkeypatch.setattr(jpype, "getDefaultJVMPath", no_jvm)
    monkeypatch.setattr(jvm.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(EmsegError, match="no Java runtime.*default-jre-headless.*JAVA_HOME"):
        jvm._check_java()


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=180, env=environment, check=False)


def test_fresh_process_starts_headless_with_options_and_exits_cleanly() -> None:
    """Options apply before start; `import imagej` first must not break an offline start; large
    copies followed by exit must not abort the interpreter (JPype's reference queue is stopped)."""
    proc = _python('''
        import json
        import imagej  # adds a Maven endpoint that would make an offline start fail
        import numpy as np
        from fiji_emseg.bridge.jvm import ensure_jvm, jclass, in_fiji
        from fiji_emseg.bridge.imageplus import numpy_to_imageplus, imageplus_to_numpy
        info = ensure_jvm(max_heap="700m")
        a = np.arange(16 * 512 * 512, dtype=np.uint16).reshape(16, 512, 512)
        for _ in range(12):
            assert imageplus_to_numpy(numpy_to_imageplus(a, "x"))[0].tobytes() == a.tobytes()
        print(json.dumps({"started_here": info.started_here, "headless": info.headless, "in_fiji": in_fiji(),
                          "max_mb": jclass("java.lang.Runtime").getRuntime().maxMemory() / 2**20}))
        ''')
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["started_here"] and report["headless"] and not report["in_fiji"]
    assert 500 < report["max_mb"] <= 700


def test_fresh_process_without_imagej_fails_with_the_fix(tmp_path: Path) -> None:
    proc = _python('''
        from fiji_emseg.bridge.jvm import ensure_jvm
        ensure_jvm()
        ''', env={jvm.IJ_JAR_ENV: str(tmp_path / "nope.jar")})
    assert proc.returncode == 1
    assert "EmsegError: EMSEG_IJ_JAR=" in proc.stderr


def test_scijava_start_race_is_told_apart_from_a_broken_fiji(ij1) -> None:  # noqa: F811
    """The race's two symptoms are retried; a broken Fiji's failures and Python errors are not."""
    invalid = "java.lang.IllegalArgumentException"
    null_context = java_exception("org.scijava.NullContextException")
    assert is_start_race(java_exception(invalid, RACED_SERVICE, null_context))  # what CI saw
    assert is_start_race(java_exception(invalid, RACED_SERVICE,
                                        java_exception("java.util.ConcurrentModificationException")))
    # a Fiji with mismatched jars: the service's class cannot even initialise
    assert not is_start_race(java_exception(invalid, RACED_SERVICE,
                                            java_exception("java.lang.ExceptionInInitializerError", "mismatch")))
    assert not is_start_race(java_exception(invalid, "No match: net.imagej.legacy.LegacyService"))
    assert not is_start_race(java_exception("java.lang.IllegalStateException", RACED_SERVICE, null_context))
    assert not is_start_race(java_exception(invalid, RACED_SERVICE))
    assert not is_start_race(ValueError(RACED_SERVICE))
